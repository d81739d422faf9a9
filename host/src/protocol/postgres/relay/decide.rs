//! What the guards, the host's own policy and the connection's row cap make
//! of one request; the decision is on record before anything goes upstream.

use super::*;

/// Guards decide; the decision is recorded. `definitions`: what the
/// prepared statements the request runs by name stand for, as `PREPARE`
/// statements (see [`super::names`]); they go in front of its text where an
/// approver sees it, in its approval's fingerprint and in the recording.
pub(super) fn decide(
    ctx: &Ctx<'_>,
    mut request: SqlRequest,
    host_violation: Option<String>,
    id: u64,
    unmaskable_copy: bool,
    definitions: &str,
) -> Decided {
    with_catalog(ctx, &mut request);
    let mut pipeline = ctx.pipeline.lock();
    // The plugin set is pinned here, at the start of the request: its text is
    // masked, judged and its results masked by the same set.
    pipeline.refresh();
    let masks = pipeline.masks();
    // Recordings hold masked data only: statement literals can carry PII
    // too, and credentials are redacted whatever the plugins.
    let shown = (!definitions.is_empty()).then(|| format!("{definitions}{}", request.text));
    let shown_text = shown.as_deref().unwrap_or(&request.text);
    let redacted = crate::sql::credentials::redact(shown_text);
    let text = redacted.as_deref().unwrap_or(shown_text);
    let recorded_text: String = if masks {
        pipeline.mask_text(text).unwrap_or_else(|e| format!("[statement not recorded: {e}]"))
    } else {
        text.to_string()
    };
    let phase = if request.phase == SqlPhase::Parse { "parse" } else { "query" };
    let started = std::time::Instant::now();
    // The host's own policy comes first and does not depend on plugins.
    let (result, decision, verdicts, request) = if let Some(reason) = &host_violation {
        let hint = Some("these settings are pinned so the gateway reads SQL exactly as PostgreSQL does");
        (Err(error_bytes("42501", &format!("Wardgate: {reason}"), hint)), "deny", Vec::new(), request)
    } else {
        let wrapped = Request::Sql(request);
        let Decision { outcome, verdicts } = pipeline.check(&wrapped, |r| match r {
            Request::Sql(s) => {
                let mut rewritten = crate::sql::analyze(&s.text, s.phase, &s.statement_name);
                with_catalog(ctx, &mut rewritten);
                Request::Sql(rewritten)
            }
            other => other,
        });
        let Request::Sql(request) = wrapped else { unreachable!("wrapped as SQL above") };
        let result = match &outcome {
            Outcome::Allow(_) if unmaskable_copy => Err(error_bytes(
                "42501",
                "Wardgate: binary COPY output cannot be masked here: its columns can only be looked up at a Sync \
                 boundary",
                Some("send the COPY as a simple query or as the first statement after Sync, or use FORMAT text or csv"),
            )),
            Outcome::Allow(Some(Request::Sql(rewritten))) if rewritten.text != request.text => {
                Ok(Some(rewritten.text.clone()))
            }
            Outcome::Allow(None | Some(Request::Sql(_))) => Ok(None),
            Outcome::Allow(Some(_)) => Err(error_bytes(
                "42501",
                "Wardgate: a guard rewrote this SQL request into another protocol's request",
                None,
            )),
            Outcome::Deny { plugin, reason } => Err(deny_bytes(plugin, reason)),
            Outcome::Review { plugin, review } => match &ctx.approvals_off {
                Some(connection) => Err(hold::approvals_off(plugin, &review.reason, connection)),
                // Not an error yet: the caller holds it (see `Decided::Review`).
                None => Ok(None),
            },
        };
        // The connection's row cap goes into what is allowed to run (a text
        // whose analysis, nested statements included, shows no write needs
        // no second parse).
        let by_guard = matches!(result, Ok(Some(_)));
        let mut inserted = Inserted::default();
        let result = match (result, ctx.max_rows_written) {
            (Ok(None), Some(_)) if !crate::sql::rowcap::may_write(&request.statements) => Ok(None),
            (Ok(rewritten), Some(max)) if matches!(outcome, Outcome::Allow(_)) => {
                match cap_rows(ctx, rewritten.as_deref().unwrap_or(&request.text), max) {
                    Ok(Some((capped, by_cap))) => {
                        if !by_guard {
                            inserted = by_cap;
                        }
                        Ok(Some(capped))
                    }
                    Ok(None) => Ok(rewritten),
                    Err(refused) => Err(refused),
                }
            }
            (result, _) => result,
        };
        let decision = match &outcome {
            Outcome::Review { .. } => "review",
            _ if result.is_err() => "deny",
            _ => "allow",
        };
        let review = match outcome {
            Outcome::Review { plugin, review } if result.is_ok() => Some((plugin, review)),
            _ => None,
        };
        (result.map(|text| (Forward { text, by_guard, inserted }, review)), decision, verdicts, request)
    };
    drop(pipeline);
    ctx.catalog.get().judged();
    if result.is_err() {
        ctx.stats.requests_denied.fetch_add(1, Ordering::Relaxed);
    }
    ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
    ctx.recorder.emit(
        "request",
        RequestEvent {
            decision,
            host_policy: host_violation.as_deref(),
            parse_error: request.parse_error.as_deref(),
            phase,
            policy_micros: started.elapsed().as_micros() as u64,
            request_id: id,
            statement: &recorded_text,
            statements: Statements(&request.statements),
            verdicts: &verdicts,
        },
    );
    // The request is on record before it can reach the upstream: fail closed.
    if let Err(e) = ctx.recorder.commit() {
        tracing::error!("refusing a request: {e}");
        return Decided::Refuse(error_bytes(
            "53100",
            &format!("Wardgate: {e}; requests are refused until it can be"),
            Some("the gateway's operator must free space in (or repair) its state directory"),
        ));
    }
    match result {
        Err(bytes) => Decided::Refuse(bytes),
        Ok((_, Some((plugin, review)))) => {
            let text = shown.unwrap_or(request.text);
            Decided::Review(ReviewAsk { plugin, review, text, masked: recorded_text, request_id: id })
        }
        Ok((forward, None)) => Decided::Run(forward),
    }
}

/// The text to run under a row cap: `Ok(None)` when it runs as it is.
pub(super) fn cap_rows(ctx: &Ctx<'_>, text: &str, max: u64) -> Result<Option<(String, Inserted)>, Bytes> {
    use crate::sql::rowcap::{cap_writes, Capped};
    // A key is unique only if it is in every table the name may mean (the
    // statement's check confirms it of the table the name resolves to).
    let catalog = ctx.catalog.get();
    let unique_key = |table: &str, column: &str| catalog.unique_in_every(table, column);
    match cap_writes(text, max, &unique_key) {
        Capped::Unchanged => Ok(None),
        Capped::Rewritten(capped, inserted) => Ok(Some((capped, inserted))),
        Capped::Refused(why, hint) => Err(error_bytes("42501", &format!("Wardgate: {why}"), Some(hint))),
    }
}

/// What the session's catalog adds to a request's analysis.
fn with_catalog(ctx: &Ctx<'_>, request: &mut SqlRequest) {
    let catalog = ctx.catalog.get();
    // `WHERE id IS NOT NULL` keeps every row when `id` is NOT NULL: no WHERE.
    // Any table of that name (in any schema, for an unqualified one) counts.
    crate::sql::apply_not_null(request, |table, column| catalog.not_null_in_any(table, column));
    // A statement that may change columns makes the read stale for the stars
    // of the statements after it (`ALTER …; SELECT DISTINCT * …`), not for
    // its own: `CREATE TABLE … AS SELECT * FROM t` reads t as it is. So does
    // a transaction statement after a read made inside the transaction
    // (`ROLLBACK TO SAVEPOINT s; SELECT DISTINCT * …` may see a table the
    // read saw dropped). A statement's nested entries (the query of a CREATE
    // TABLE AS, a data-modifying CTE) follow it with its text: one statement.
    let undoable = catalog.read_in_transaction();
    let mut changes = false;
    for statement in request.statements.chunk_by_mut(|a, b| a.text == b.text) {
        if changes {
            catalog.columns_changed();
        }
        crate::sql::columns::expand_stars(statement, |table| catalog.columns_of(table));
        changes |=
            statement.iter().any(|s| may_change_columns(s.kind) || (undoable && s.kind == StatementKind::Transaction));
    }
    if changes {
        catalog.columns_changed();
    }
    if catalog.has_view_sources() {
        crate::sql::columns::add_view_sources(&mut request.statements, |table, column| {
            catalog.sources_of(table, column)
        });
    }
}

/// Statements that may add, rename or drop a table's columns, or run code
/// the gateway cannot see into.
pub(super) fn may_change_columns(kind: StatementKind) -> bool {
    use StatementKind as K;
    matches!(kind, K::Create | K::Alter | K::Drop | K::DoBlock | K::Call | K::Other)
}
