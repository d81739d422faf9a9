//! The session's catalog, read again on the session's own connection after
//! the session changed columns.
//!
//! The catalog read when the session began goes stale once the session runs
//! a statement that may add, rename or drop columns (DDL, or code the
//! gateway cannot see into): its stars are no longer resolved (they are
//! refused wherever a policy would need their columns), and the tables it
//! created and their NOT NULL columns are unknown. So when the next request
//! that would consult the catalog (see [`consults`]) arrives at a quiet
//! moment — at a Sync boundary, every earlier request answered, no COPY
//! under way, in no failed transaction — the gateway reads the catalog
//! again first, on the session's connection (so it sees the session's
//! temporary tables and its open transaction's DDL). That request waits for
//! the read; nothing else does.
//!
//! The read leaves the session as it was: it runs in a transaction of its
//! own (`BEGIN … ROLLBACK`), or inside the client's under a savepoint rolled
//! back and released by a second batch that runs even when the first
//! failed; in the extended protocol, under statement and portal names of its
//! own, so the client's unnamed statement and portal live on. A read inside
//! the client's transaction sees what a later `ROLLBACK [TO SAVEPOINT]` may
//! undo (a dropped table comes back with its columns), so it serves the
//! request it was made for and no other — and in that request, not the
//! stars after a transaction statement: the next request that consults the
//! catalog reads it again. A read that fails (the client's
//! `statement_timeout`, its cancel request) keeps the stale catalog, and the
//! stars refused, until the session runs another statement that may change
//! columns.
//!
//! Upstream messages answer the read while it is in flight (the client side
//! sends nothing else meanwhile): rows are gathered, its own notices
//! dropped; notifications, parameter changes and FATAL errors go on as ever.

use std::sync::atomic::AtomicBool;

use tokio::sync::oneshot;

use super::*;
use crate::pipeline::types::ColumnUsage;
use crate::protocol::postgres::upstream::text_row;

/// Rows of a catalog read, as text.
type Rows = Vec<Vec<Option<String>>>;

/// The session's catalog, and its read in flight.
pub(super) struct SessionCatalog<'a> {
    current: Mutex<Arc<Catalog>>,
    views: &'a ViewCache,
    connection: &'a str,
    /// A read is in flight: upstream messages answer it (see [`SessionCatalog::answer`]).
    reading: AtomicBool,
    read: Mutex<Option<Read>>,
    /// In the read's statement names: no client's name can be one of them.
    nonce: u64,
}

/// A catalog read in flight.
struct Read {
    rows: Rows,
    error: Option<String>,
    /// ReadyForQuery messages still to come (one per batch sent).
    readies: u8,
    done: oneshot::Sender<Result<Rows, String>>,
}

impl<'a> SessionCatalog<'a> {
    /// The catalog read at the session's start, read again (with `views`'
    /// query trees for `connection`) when it goes stale.
    pub(super) fn new(catalog: Catalog, views: &'a ViewCache, connection: &'a str) -> Self {
        SessionCatalog {
            current: Mutex::new(Arc::new(catalog)),
            views,
            connection,
            reading: AtomicBool::new(false),
            read: Mutex::new(None),
            nonce: rand::random(),
        }
    }

    /// The catalog as last read.
    pub(super) fn get(&self) -> Arc<Catalog> {
        self.current.lock().clone()
    }

    /// A read is in flight: every upstream message goes to [`SessionCatalog::answer`].
    pub(super) fn reading(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }

    /// Take an upstream message that answers the read in flight; what is
    /// not the read's own (notifications, parameter changes, a FATAL error)
    /// is given back to be relayed as ever. The read's last ReadyForQuery
    /// sets the session's transaction status (which it leaves as it was).
    pub(super) fn answer(&self, shared: &Mutex<Shared>, m: Message) -> Result<Option<Message>, SessionError> {
        let mut slot = self.read.lock();
        let Some(read) = slot.as_mut() else {
            self.reading.store(false, Ordering::Relaxed);
            return Ok(Some(m));
        };
        match m.tag {
            b'D' => read.rows.push(text_row(&m.body).map_err(SessionError::Protocol)?),
            b'E' => {
                let fields = error_fields(&m.body);
                if codec::is_fatal(&fields) {
                    return Ok(Some(m));
                }
                let get = |c| codec::field(&fields, c);
                read.error.get_or_insert_with(|| format!("{} ({})", get(b'M'), get(b'C')));
            }
            b'Z' => {
                read.readies = read.readies.saturating_sub(1);
                if read.readies == 0 {
                    let read = slot.take().expect("checked above");
                    shared.lock().tx_status = m.body.first().copied().unwrap_or(b'I');
                    self.reading.store(false, Ordering::Relaxed);
                    let _ = read.done.send(match read.error {
                        Some(e) => Err(e),
                        None => Ok(read.rows),
                    });
                }
            }
            b'A' | b'S' => return Ok(Some(m)),
            // RowDescription, CommandComplete, its own notices.
            _ => {}
        }
        Ok(None)
    }
}

/// Before a Query or Parse `m` at a Sync boundary: read the catalog again
/// if it is stale, the request consults it, and the moment is quiet (see
/// the module's documentation). `out` holds what is not sent yet.
pub(super) async fn before_request(
    ctx: &Ctx<'_>,
    m: &Message,
    upstream: &mut WriteHalf<BoxStream>,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let catalog = ctx.catalog.get();
    if !catalog.wants_reread() {
        return Ok(());
    }
    let mut r = Reader::new(&m.body, m.tag);
    let (phase, name) = match m.tag {
        b'P' => (SqlPhase::Parse, r.cstr().unwrap_or("")),
        _ => (SqlPhase::SimpleQuery, ""),
    };
    // (A malformed message is the client side's to refuse.)
    let Ok(text) = r.cstr() else { return Ok(()) };
    if !consults(&catalog, &crate::sql::analyze(text, phase, name)) {
        return Ok(());
    }
    let (done, answer) = oneshot::channel();
    let in_transaction = {
        let s = ctx.shared.lock();
        let in_transaction = match s.tx_status {
            b'I' => false,
            b'T' => true,
            _ => return Ok(()),
        };
        if !s.expect.is_empty() || s.copy_in != CopyIn::Idle {
            return Ok(());
        }
        let batches = Catalog::reread_sql(ctx.catalog.views, ctx.catalog.connection, in_transaction);
        for (i, statements) in batches.iter().enumerate() {
            put_batch(out, &format!("wardgate:catalog:{:016x}:{i}", ctx.catalog.nonce), statements);
        }
        let readies = batches.len() as u8;
        *ctx.catalog.read.lock() = Some(Read { rows: Vec::new(), error: None, readies, done });
        ctx.catalog.reading.store(true, Ordering::Relaxed);
        in_transaction
    };
    let started = std::time::Instant::now();
    stream::send(upstream, out).await?;
    out.clear();
    let read = answer.await.unwrap_or_else(|_| Err("the session ended".into())).and_then(|rows| {
        Catalog::from_rows(rows, ctx.catalog.views, ctx.catalog.connection)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "a view's query tree left out of the read was dropped meanwhile".to_string())
    });
    let micros = started.elapsed().as_micros() as u64;
    match read {
        Ok(fresh) => {
            ctx.recorder.emit("catalog.read", json!({"micros": micros, "tables": fresh.table_count()}));
            if in_transaction {
                fresh.for_one_request();
            }
            *ctx.catalog.current.lock() = Arc::new(fresh);
        }
        Err(e) => {
            tracing::warn!("reading the catalog again failed: {e}; stars stay unresolved");
            ctx.recorder.emit("catalog.read", json!({"micros": micros, "error": e}));
            catalog.reread_failed();
        }
    }
    Ok(())
}

/// One batch of the read, in the extended protocol under names of the
/// gateway's own (`batch` and a number; unguessable, so no client's): a
/// simple Query would drop the client's unnamed statement and portal, which
/// it may still use. Each statement is parsed, bound and
/// run, then closed; what a failed batch left (a failure skips to its Sync)
/// is closed first.
fn put_batch(out: &mut BytesMut, batch: &str, statements: &[String]) {
    let name = |i: usize| format!("{batch}:{i}");
    for i in 0..statements.len() {
        codec::put_close(out, b'P', &name(i));
        codec::put_close(out, b'S', &name(i));
    }
    for (i, sql) in statements.iter().enumerate() {
        let name = name(i);
        codec::put_parse(out, &name, sql, codec::NO_PARAM_TYPES);
        codec::put_bind_text(out, &name, &name);
        codec::put_execute(out, &name);
        codec::put_close(out, b'P', &name);
        codec::put_close(out, b'S', &name);
    }
    codec::put_sync(out);
}

/// Would the request consult what a stale catalog cannot tell? A star that
/// is not plain output (its columns come from the catalog), a table the
/// read does not know, named by a statement that does not itself change
/// columns, or a DELETE or UPDATE whose WHERE null-tests columns (it keeps
/// every row if they are NOT NULL). (A write pinned to a unique key the
/// read no longer tells right is caught where it runs: see
/// [`crate::sql::rowcap`].)
fn consults(catalog: &Catalog, request: &SqlRequest) -> bool {
    use StatementKind as K;
    let statements = &request.statements;
    let named = statements.iter().any(|s| {
        s.columns.iter().any(|c| c.column == "*" && c.usage != ColumnUsage::Output)
            || (!may_change_columns(s.kind) && s.tables_read.iter().chain(&s.tables_written).any(|t| !catalog.knows(t)))
    });
    let writes_where = || statements.iter().any(|s| s.has_where && matches!(s.kind, K::Delete | K::Update));
    named || (writes_where() && !crate::sql::null_reliance(&request.text).is_empty())
}
