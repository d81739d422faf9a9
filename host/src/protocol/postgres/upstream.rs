//! The gateway's own connection to an upstream PostgreSQL: TLS, startup,
//! authentication (SCRAM-SHA-256, md5, cleartext) with credentials from the
//! config. The client never sees them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::codec::{self, error_fields, take_message, Message, Reader};
use super::stream::BoxStream;
use crate::config::Connection;

/// Why the upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("cannot reach upstream {addr}: {reason}")]
    Connect {
        /// host:port
        addr: String,
        /// Cause.
        reason: String,
    },
    /// TLS negotiation failed.
    #[error("TLS to upstream failed: {0}")]
    Tls(String),
    /// The upstream password could not be read.
    #[error("upstream credentials unavailable: {0}")]
    Secret(String),
    /// The upstream refused us.
    #[error("upstream refused the gateway's login: {message}")]
    Refused {
        /// SQLSTATE.
        code: String,
        /// Its message.
        message: String,
    },
    /// Unsupported authentication method or protocol violation.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// I/O error after connecting.
    #[error("upstream connection lost: {0}")]
    Io(#[from] std::io::Error),
}

/// An authenticated upstream connection, ready for queries.
pub struct Upstream {
    /// The stream.
    pub stream: BoxStream,
    /// ParameterStatus values it reported.
    pub params: Vec<(String, String)>,
    /// BackendKeyData (pid, secret).
    pub key: (i32, i32),
    /// Transaction status of the first ReadyForQuery.
    pub tx_status: u8,
    /// Bytes read past ReadyForQuery (normally empty).
    pub leftover: BytesMut,
    /// NoticeResponse frames the server sent during login (a truncated
    /// application_name, a deprecated setting of the role): the relay hands
    /// them to the client first thing, masked like any other notice.
    pub notices: BytesMut,
}

async fn read_message(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<Message, UpstreamError> {
    loop {
        if let Some(m) = take_message(buf).map_err(|e| UpstreamError::Protocol(e.to_string()))? {
            return Ok(m);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Protocol("upstream closed the connection".into()));
        }
    }
}

fn refused(m: &Message) -> UpstreamError {
    let f = error_fields(&m.body);
    let get = |c: u8| f.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone()).unwrap_or_default();
    UpstreamError::Refused { code: get(b'C'), message: get(b'M') }
}

/// Connect and log in. `params` are the client's startup parameters we pass on.
pub async fn connect(conn: &Connection, params: &[(String, String)]) -> Result<Upstream, UpstreamError> {
    let addr = format!("{}:{}", conn.host, conn.port);
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((conn.host.as_str(), conn.port)))
        .await
        .map_err(|_| UpstreamError::Connect { addr: addr.clone(), reason: "timed out after 10 s".into() })?
        .map_err(|e| UpstreamError::Connect { addr: addr.clone(), reason: e.to_string() })?;
    let _ = tcp.set_nodelay(true);
    let mut stream: BoxStream =
        match crate::tls::upstream_config(&conn.tls).map_err(|e| UpstreamError::Tls(e.to_string()))? {
            None => Box::new(tcp),
            Some(cfg) => {
                let mut tcp = tcp;
                super::stream::send(&mut tcp, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
                let mut b = [0u8; 1];
                tcp.read_exact(&mut b).await?;
                if b[0] != b'S' {
                    return Err(UpstreamError::Tls(format!("{addr} does not accept TLS (sslmode={:?})", conn.tls)));
                }
                let name = crate::tls::server_name(&conn.host).map_err(|e| UpstreamError::Tls(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Box::new(tls)
            }
        };
    let password = conn.password.read().map_err(UpstreamError::Secret)?;

    // StartupMessage
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(196_608);
    for (k, v) in [("user", conn.user.as_str()), ("database", conn.database.as_str())] {
        codec::put_cstr(&mut out, k);
        codec::put_cstr(&mut out, v);
    }
    for (k, v) in params {
        codec::put_cstr(&mut out, k);
        codec::put_cstr(&mut out, v);
    }
    out.put_u8(0);
    let len = out.len() as i32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    super::stream::send(&mut stream, &out).await?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut server_params = vec![];
    let mut key = (0, 0);
    let mut notices = BytesMut::new();
    loop {
        let m = read_message(&mut stream, &mut buf).await?;
        match m.tag {
            b'R' => {
                let mut r = Reader::new(&m.body, m.tag);
                let code = r.i32().map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let need = || {
                    password.clone().ok_or_else(|| {
                        UpstreamError::Secret(
                            "upstream asks for a password but none is configured (set password_env or password_file)"
                                .into(),
                        )
                    })
                };
                let mut reply = BytesMut::new();
                match code {
                    0 => continue,
                    3 => {
                        let at = codec::begin(&mut reply, b'p');
                        codec::put_cstr(&mut reply, &need()?);
                        codec::finish(&mut reply, at);
                    }
                    5 => {
                        let salt = r.bytes(4).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                        let h = postgres_protocol::authentication::md5_hash(
                            conn.user.as_bytes(),
                            need()?.as_bytes(),
                            [salt[0], salt[1], salt[2], salt[3]],
                        );
                        let at = codec::begin(&mut reply, b'p');
                        codec::put_cstr(&mut reply, &h);
                        codec::finish(&mut reply, at);
                    }
                    10 => {
                        let mut mechs = vec![];
                        while let Ok(s) = r.cstr() {
                            if s.is_empty() {
                                break;
                            }
                            mechs.push(s.to_string());
                        }
                        if !mechs.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(UpstreamError::Protocol(format!("no supported SASL mechanism in {mechs:?}")));
                        }
                        let s = ScramSha256::new(need()?.as_bytes(), ChannelBinding::unsupported());
                        let at = codec::begin(&mut reply, b'p');
                        codec::put_cstr(&mut reply, "SCRAM-SHA-256");
                        reply.put_i32(s.message().len() as i32);
                        reply.put_slice(s.message());
                        codec::finish(&mut reply, at);
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| UpstreamError::Protocol("SASL continue without start".into()))?;
                        s.update(r.rest()).map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                        let at = codec::begin(&mut reply, b'p');
                        reply.put_slice(s.message());
                        codec::finish(&mut reply, at);
                    }
                    12 => {
                        let s =
                            scram.as_mut().ok_or_else(|| UpstreamError::Protocol("SASL final without start".into()))?;
                        s.finish(r.rest())
                            .map_err(|e| UpstreamError::Protocol(format!("SCRAM server signature invalid: {e}")))?;
                        continue;
                    }
                    other => return Err(UpstreamError::Protocol(format!("unsupported authentication method {other}"))),
                }
                super::stream::send(&mut stream, &reply).await?;
                // A cleartext password (method 3) was in there: wipe it.
                zeroize::Zeroize::zeroize(&mut reply[..]);
            }
            b'S' => {
                let mut r = Reader::new(&m.body, m.tag);
                if let (Ok(k), Ok(v)) = (r.cstr(), r.cstr()) {
                    server_params.push((k.to_string(), v.to_string()));
                }
            }
            b'K' => {
                let mut r = Reader::new(&m.body, m.tag);
                key = (r.i32().unwrap_or(0), r.i32().unwrap_or(0));
            }
            b'Z' => {
                return Ok(Upstream {
                    stream,
                    params: server_params,
                    key,
                    tx_status: m.body.first().copied().unwrap_or(b'I'),
                    leftover: buf,
                    notices,
                });
            }
            b'E' => return Err(refused(&m)),
            b'N' => codec::put_message(&mut notices, b'N', &m.body),
            b'v' => {}
            other => {
                return Err(UpstreamError::Protocol(format!("unexpected message '{}' during login", other as char)))
            }
        }
    }
}

/// A table known to the upstream's catalog.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `schema.table`.
    pub name: String,
    /// Column names in attnum order (dropped columns as empty strings).
    pub columns: Vec<String>,
    /// Which of those columns are declared NOT NULL (same order).
    pub not_null: Vec<bool>,
    /// For each of those columns that alone is the key of a valid, unique,
    /// non-partial index, on a table without inheritance children (a
    /// partitioned table's unique index holds across its partitions), that
    /// index's OID: `col = constant` matches one row at most (same order).
    pub unique_index: Vec<Option<u32>>,
}

impl TableInfo {
    /// Is `table` (as a statement names it: `t` or `schema.t`) this table?
    pub fn named(&self, table: &str) -> bool {
        match self.name.strip_suffix(table) {
            Some("") => true,
            Some(schema) => !table.contains('.') && schema.ends_with('.'),
            None => false,
        }
    }

    /// Is `column` declared NOT NULL here?
    pub fn is_not_null(&self, column: &str) -> bool {
        self.columns.iter().zip(&self.not_null).any(|(name, nn)| *nn && name == column)
    }

    /// The unique index whose sole key is `column` here, if any (see
    /// [`TableInfo::unique_index`]).
    pub fn unique_index(&self, column: &str) -> Option<u32> {
        self.columns.iter().zip(&self.unique_index).find_map(|(name, index)| index.filter(|_| name == column))
    }
}

/// Is `column` NOT NULL in any table that `table` (as a statement names it)
/// may mean? (`WHERE col IS NOT NULL` then keeps every row of at least one.)
pub fn not_null_in_any(catalog: &HashMap<u32, TableInfo>, table: &str, column: &str) -> bool {
    catalog.values().any(|t| t.named(table) && t.is_not_null(column))
}

/// `(table OID, unique index OID)` of every table that `table` may mean, when
/// `column` alone is a unique key in each of them; empty otherwise (see
/// [`crate::sql::rowcap::UniqueKeys`]).
pub fn unique_in_every(catalog: &HashMap<u32, TableInfo>, table: &str, column: &str) -> Vec<(u32, u32)> {
    let keys: Option<Vec<(u32, u32)>> = catalog
        .iter()
        .filter(|(_, t)| t.named(table))
        .map(|(oid, t)| t.unique_index(column).map(|index| (*oid, index)))
        .collect();
    keys.unwrap_or_default()
}

/// Run one simple query on a fresh upstream connection (before the relay starts)
/// and return its text rows.
pub async fn simple_query(up: &mut Upstream, sql: &str) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
    let mut out = BytesMut::new();
    let at = codec::begin(&mut out, b'Q');
    codec::put_cstr(&mut out, sql);
    codec::finish(&mut out, at);
    super::stream::send(&mut up.stream, &out).await?;
    let mut buf = std::mem::take(&mut up.leftover);
    let mut rows = vec![];
    let mut err = None;
    loop {
        let m = read_message(&mut up.stream, &mut buf).await?;
        match m.tag {
            b'D' => {
                let mut r = Reader::new(&m.body, m.tag);
                let n = r.i16().map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let mut row = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n {
                    let len = r.i32().map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                    if len < 0 {
                        row.push(None);
                    } else {
                        let b = r.bytes(len as usize).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                        row.push(Some(String::from_utf8_lossy(b).into_owned()));
                    }
                }
                rows.push(row);
            }
            b'E' => err = Some(refused(&m)),
            b'Z' => {
                up.tx_status = m.body.first().copied().unwrap_or(b'I');
                up.leftover = buf;
                return match err {
                    Some(e) => Err(e),
                    None => Ok(rows),
                };
            }
            _ => {}
        }
    }
}

/// Column names as the catalog read sends them: each hex-encoded UTF-8 (a
/// name may hold any character, commas included), comma-separated, in attnum
/// order; a dropped column is empty. `None` if one is not hex of UTF-8.
fn column_names(list: &str) -> Option<Vec<String>> {
    list.split(',').map(|h| hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok())).collect()
}

/// Load user tables (oid -> name, columns, their NOT NULL and unique-key
/// flags), for column-aware masking, for WHEREs that only null-test NOT NULL
/// columns and for row caps (a write pinned to one row by a unique key).
pub async fn load_catalog(up: &mut Upstream) -> Result<HashMap<u32, TableInfo>, UpstreamError> {
    let rows = simple_query(
        up,
        // The role's own search_path could list a schema before pg_catalog,
        // whose look-alike tables would then answer: pinned for this read.
        "BEGIN; SET LOCAL search_path = pg_catalog, pg_temp; \
         SELECT c.oid::text, n.nspname || '.' || c.relname, \
         coalesce((SELECT string_agg(CASE WHEN a.attisdropped THEN '' \
                   ELSE encode(convert_to(a.attname::text, 'UTF8'), 'hex') END, ',' ORDER BY a.attnum) \
                   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), ''), \
         coalesce((SELECT string_agg(CASE WHEN a.attnotnull AND NOT a.attisdropped THEN 't' ELSE 'f' END, '' \
                   ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), ''), \
         coalesce((SELECT string_agg(CASE WHEN NOT a.attisdropped AND (c.relkind = 'p' OR NOT c.relhassubclass) \
                   THEN coalesce((SELECT i.indexrelid::text FROM pg_index i WHERE i.indrelid = c.oid \
                   AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 AND i.indpred IS NULL \
                   AND i.indexprs IS NULL AND i.indkey[0] = a.attnum ORDER BY i.indexrelid LIMIT 1), '') \
                   ELSE '' END, ',' ORDER BY a.attnum) \
                   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), '') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r','v','m','p','f') AND n.nspname NOT IN ('pg_catalog','information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' LIMIT 20000; COMMIT",
    )
    .await?;
    let mut map = HashMap::new();
    for r in rows {
        if let (Some(Some(oid)), Some(Some(name)), Some(cols)) = (r.first(), r.get(1), r.get(2)) {
            if let Ok(oid) = oid.parse::<u32>() {
                let columns = column_names(cols.as_deref().unwrap_or("")).ok_or_else(|| {
                    UpstreamError::Protocol(format!("the catalog read gave table {name} malformed column names"))
                })?;
                let flags = r.get(3).and_then(|f| f.as_deref()).unwrap_or("");
                let not_null = flags.bytes().map(|b| b == b't').collect();
                let indexes = r.get(4).and_then(|f| f.as_deref()).unwrap_or("");
                let unique_index = indexes.split(',').map(|i| i.parse().ok()).collect();
                map.insert(oid, TableInfo { name: name.clone(), columns, not_null, unique_index });
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::column_names;

    #[test]
    fn column_names_keep_commas_and_dropped_columns() {
        // "id", dropped, "a,b", "ssn"
        let list = format!("{},,{},{}", hex::encode("id"), hex::encode("a,b"), hex::encode("ssn"));
        assert_eq!(column_names(&list).unwrap(), ["id", "", "a,b", "ssn"]);
        assert_eq!(column_names("").unwrap(), [""]);
        assert!(column_names("zz").is_none());
        assert!(column_names(&hex::encode([0xff, 0xfe])).is_none());
    }
}
