//! The gateway's own connection to an upstream PostgreSQL: TLS, startup,
//! authentication (SCRAM-SHA-256, md5, cleartext) with credentials from the
//! config. The client never sees them.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::codec::{self, error_fields, take_message, Message, ProtocolError, Reader};
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

/// A text-format DataRow's values (not UTF-8: replaced characters).
pub fn text_row(body: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    let mut r = Reader::new(body, b'D');
    let n = r.i16()?;
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = r.i32()?;
        row.push(if len < 0 { None } else { Some(String::from_utf8_lossy(r.bytes(len as usize)?).into_owned()) });
    }
    Ok(row)
}

/// Run one simple query on a fresh upstream connection (before the relay starts)
/// and return its text rows.
pub async fn simple_query(up: &mut Upstream, sql: &str) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
    let mut out = BytesMut::new();
    codec::put_query(&mut out, sql);
    super::stream::send(&mut up.stream, &out).await?;
    let mut buf = std::mem::take(&mut up.leftover);
    let mut rows = vec![];
    let mut err = None;
    loop {
        let m = read_message(&mut up.stream, &mut buf).await?;
        match m.tag {
            b'D' => rows.push(text_row(&m.body).map_err(|e| UpstreamError::Protocol(e.to_string()))?),
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
