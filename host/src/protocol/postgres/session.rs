//! One client's life: SSL negotiation, startup, authentication with a bearer
//! credential (the password), grant check, upstream login, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::cancel::UpstreamKey;
use super::codec::{self, fatal_bytes, take_startup, ProtocolError, Reader};
use super::listener::PgContext;
use super::stream::BoxStream;
use super::upstream;
use crate::pipeline::types::{Identity, Protocol, Session};
use crate::pipeline::SessionPipeline;
use crate::record::SessionRecorder;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// Startup parameters passed on to the upstream. Anything else (notably
/// `options`, which can set `role` or `session_authorization`) is dropped.
/// `client_encoding` is not among them: the gateway always speaks UTF8 upstream
/// (its parser and maskers read UTF-8) and pins `standard_conforming_strings`.
const PASSTHROUGH: [&str; 5] = ["application_name", "datestyle", "timezone", "extra_float_digits", "intervalstyle"];

/// Client encodings the gateway accepts: UTF-8, or SQL_ASCII (raw bytes, which
/// a terminal in the C locale asks for; UTF-8 output is valid for it).
/// Names are compared as PostgreSQL does (asyncpg sends `'utf-8'`, quotes included).
fn client_encoding_ok(enc: &str) -> bool {
    crate::sql::is_utf8_encoding(enc) || crate::sql::clean_encoding_name(enc) == "sqlascii"
}

/// How a session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Malformed bytes from the client.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The client was refused (already told why).
    #[error("refused: {0}")]
    Refused(String),
    /// Client went away during startup.
    #[error("client disconnected during startup")]
    Gone,
}

async fn read_startup(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<Bytes, SessionError> {
    loop {
        if let Some(p) = take_startup(buf)? {
            return Ok(p);
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(buf))
            .await
            .map_err(|_| SessionError::Refused("startup timed out".into()))??;
        if n == 0 {
            return Err(SessionError::Gone);
        }
    }
}

async fn refuse(stream: &mut BoxStream, code: &str, message: &str, hint: Option<&str>) -> SessionError {
    let _ = super::stream::send(stream, &fatal_bytes(code, message, hint)).await;
    super::stream::close(stream).await;
    SessionError::Refused(message.to_string())
}

/// The upstream could not serve this session (`error`, on record as
/// `upstream.failed`): refuse the client with `code`, `message` and `hint`.
async fn upstream_failed(
    recorder: &SessionRecorder,
    stream: &mut BoxStream,
    connection: &str,
    error: &str,
    (code, message, hint): (&str, &str, Option<&str>),
) -> SessionError {
    recorder.emit("upstream.failed", json!({"connection": connection, "error": error}));
    tracing::warn!(connection, "upstream failed: {error}");
    refuse(stream, code, message, hint).await
}

/// Run one client connection to its end.
pub async fn run(sock: TcpStream, peer: SocketAddr, id: String, ctx: Arc<PgContext>) -> Result<(), SessionError> {
    let mut stream: BoxStream = Box::new(sock);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut tls = false;
    // Negotiation: SSLRequest / GSSENCRequest / CancelRequest / StartupMessage.
    let startup = loop {
        let packet = read_startup(&mut stream, &mut buf).await?;
        let mut r = Reader::new(&packet, b'0');
        let code = r.i32()?;
        match code {
            SSL_REQUEST if !tls => {
                if !buf.is_empty() {
                    // Bytes sent before the TLS handshake could be injected by a
                    // man in the middle (CVE-2021-23214): refuse.
                    return Err(SessionError::Refused("data received after SSLRequest before TLS".into()));
                }
                match &ctx.tls {
                    Some(cfg) => {
                        super::stream::send(&mut stream, b"S").await?;
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                        let t = tokio::time::timeout(Duration::from_secs(15), acceptor.accept(stream))
                            .await
                            .map_err(|_| SessionError::Tls("handshake timed out".into()))?
                            .map_err(|e| SessionError::Tls(e.to_string()))?;
                        stream = Box::new(t);
                        tls = true;
                    }
                    None => super::stream::send(&mut stream, b"N").await?,
                }
            }
            GSSENC_REQUEST => super::stream::send(&mut stream, b"N").await?,
            CANCEL_REQUEST => {
                let (pid, secret) = (r.i32()?, r.i32()?);
                forward_cancel(&ctx, pid, secret).await;
                // libpq 17 sends cancels through TLS and waits for close_notify.
                super::stream::close(&mut stream).await;
                return Ok(());
            }
            v if v >> 16 == 3 => break (v, packet),
            v => {
                let msg = format!("unsupported frontend protocol {}.{}: Wardgate speaks 3.0", v >> 16, v & 0xffff);
                return Err(refuse(&mut stream, "0A000", &msg, None).await);
            }
        }
    };
    let (version, packet) = startup;
    let mut r = Reader::new(&packet, b'0');
    r.i32()?;
    let mut params: Vec<(String, String)> = Vec::new();
    let mut unknown_pq: Vec<String> = Vec::new();
    loop {
        let k = r.cstr()?;
        if k.is_empty() {
            break;
        }
        let v = r.cstr()?;
        if k.starts_with("_pq_.") {
            unknown_pq.push(k.to_string());
        } else {
            params.push((k.to_string(), v.to_string()));
        }
    }
    if version & 0xffff != 0 || !unknown_pq.is_empty() {
        // NegotiateProtocolVersion: we speak 3.0 and none of the _pq_ options.
        let mut out = BytesMut::new();
        let at = codec::begin(&mut out, b'v');
        out.put_i32(196_608);
        out.put_i32(unknown_pq.len() as i32);
        for o in &unknown_pq {
            codec::put_cstr(&mut out, o);
        }
        codec::finish(&mut out, at);
        super::stream::send(&mut stream, &out).await?;
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user").unwrap_or_default();
    let connection_name = get("database").unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(
            refuse(&mut stream, "0A000", "replication connections are not supported through Wardgate", None).await
        );
    }
    if !tls && !ctx.listener.allow_plaintext {
        return Err(refuse(
            &mut stream,
            "28000",
            "Wardgate requires TLS: your credential is a bearer token",
            Some("connect with sslmode=require (or verify-full with the gateway's CA)"),
        )
        .await);
    }
    let recorder = ctx.recorder.session_on(&id, &connection_name);

    // Authentication: the password is the credential.
    let mut out = BytesMut::new();
    let at = codec::begin(&mut out, b'R');
    out.put_i32(3);
    codec::finish(&mut out, at);
    super::stream::send(&mut stream, &out).await?;
    let credential = loop {
        if let Some(total) = codec::frame_len(&buf)? {
            if buf[0] != b'p' {
                return Err(refuse(&mut stream, "08P01", "expected a password message", None).await);
            }
            let cred = zeroize::Zeroizing::new(Reader::new(&buf[5..total], b'p').cstr().unwrap_or("").to_string());
            // The credential's wire copy is wiped as soon as it is parsed; the
            // parsed copy is wiped when dropped (right after authentication).
            zeroize::Zeroize::zeroize(&mut buf[..total]);
            bytes::Buf::advance(&mut buf, total);
            break cred;
        }
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read_buf(&mut buf))
            .await
            .map_err(|_| SessionError::Refused("authentication timed out".into()))??;
        if n == 0 {
            return Err(SessionError::Gone);
        }
    };
    let credential_kind = crate::identity::credential_kind(&credential);
    let authorized = match ctx.auth.authenticate(&credential).await {
        Ok(id) => ctx.auth.authorize(&id, &connection_name).map(|g| (id, g.role.clone())),
        Err(e) => Err(e),
    };
    drop(credential);
    let (identity, role): (Identity, Option<String>) = match authorized {
        Ok(x) => x,
        Err(e) => {
            ctx.stats.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            recorder.emit(
                "auth.failed",
                json!({"client_addr": peer.to_string(), "connection": connection_name, "user": user,
                       "credential": credential_kind, "error": e.kind(), "reason": e.to_string(), "tls": tls}),
            );
            tracing::warn!(connection = %connection_name, credential = credential_kind, error = e.kind(), "authentication refused: {e}");
            let code = if matches!(e, crate::identity::AuthError::NoGrant { .. }) { "28000" } else { "28P01" };
            return Err(refuse(&mut stream, code, &format!("Wardgate: {e}"), None).await);
        }
    };
    let Some(conn) = ctx.config.connections.get(&connection_name).and_then(|c| c.as_role(role.as_deref())) else {
        // Granted but not configured cannot happen (config validation); refuse the same way.
        return Err(refuse(&mut stream, "28000", "Wardgate: no access to this connection", None).await);
    };

    if let Some(enc) = get("client_encoding").filter(|e| !client_encoding_ok(e)) {
        let msg = format!("Wardgate: client_encoding {enc} is not supported; the gateway speaks UTF8");
        return Err(refuse(&mut stream, "22023", &msg, Some("set PGCLIENTENCODING=UTF8")).await);
    }
    let mut pass: Vec<(String, String)> =
        params.iter().filter(|(k, _)| PASSTHROUGH.contains(&k.to_ascii_lowercase().as_str())).cloned().collect();
    // The pinned settings travel in the startup packet: that makes them the
    // session's reset values (RESET ALL, DISCARD ALL), over any role or
    // database default.
    pass.extend(crate::sql::PINNED_VALUES.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut up = match upstream::connect(&conn, &pass).await {
        Ok(u) => u,
        Err(e) => {
            let message = format!("Wardgate: upstream for \"{}\" is unavailable: {e}", conn.name);
            let error = e.to_string();
            return Err(upstream_failed(&recorder, &mut stream, &conn.name, &error, ("08006", &message, None)).await);
        }
    };

    if let Some(problem) = up.params.iter().find_map(|(k, v)| unsafe_parameter(k, v)) {
        let message = format!("Wardgate: upstream \"{}\": {problem}", conn.name);
        let hint = Some("set standard_conforming_strings = on and use UTF8 for this role and database");
        return Err(upstream_failed(&recorder, &mut stream, &conn.name, &problem, ("XX000", &message, hint)).await);
    }
    let session = Session {
        id: id.clone(),
        connection: conn.name.clone(),
        protocol: Protocol::Postgres,
        identity,
        client_addr: peer.to_string(),
        started_at_ms: crate::util::now_ms(),
    };
    let pipeline = SessionPipeline::new(ctx.registry.clone(), session.clone(), conn.plugins.clone());
    // Loaded whatever the plugins are now: a masker added while the session
    // is open needs it as much as one present at its start.
    // Without it column rules would silently stop masking: fail closed.
    let catalog = match super::catalog::Catalog::load(&mut up, &ctx.views, &conn.name).await {
        Ok(c) => c,
        Err(e) => {
            let message = format!(
                "Wardgate: cannot read the catalog of upstream \"{}\" ({e}); without it column rules cannot apply, \
                 so the session is refused",
                conn.name
            );
            let hint = Some("the connection's upstream role must be able to read pg_class, pg_attribute and pg_index");
            let error = format!("catalog read: {e}");
            return Err(upstream_failed(&recorder, &mut stream, &conn.name, &error, ("58000", &message, hint)).await);
        }
    };

    let registration =
        ctx.cancels.register(UpstreamKey { host: conn.host.clone(), port: conn.port, pid: up.key.0, secret: up.key.1 });
    let mut out = BytesMut::new();
    let at = codec::begin(&mut out, b'R');
    out.put_i32(0);
    codec::finish(&mut out, at);
    for (k, v) in &up.params {
        let at = codec::begin(&mut out, b'S');
        codec::put_cstr(&mut out, k);
        codec::put_cstr(&mut out, v);
        codec::finish(&mut out, at);
    }
    let at = codec::begin(&mut out, b'K');
    out.put_i32(registration.client.0);
    out.put_i32(registration.client.1);
    codec::finish(&mut out, at);
    codec::put_message(&mut out, b'Z', &[up.tx_status]);
    super::stream::send(&mut stream, &out).await?;

    let p = &session.identity.principal;
    recorder.emit(
        "session.start",
        json!({
            "principal": principal_json(p),
            "on_behalf_of": session.identity.on_behalf_of.iter().map(principal_json).collect::<Vec<_>>(),
            "connection": conn.name,
            "upstream_role": role,
            "upstream_user": conn.user,
            "credential": credential_kind,
            "client_addr": peer.to_string(),
            "tls": tls,
            "application_name": get("application_name"),
        }),
    );
    tracing::info!(principal = %p.subject, connection = %conn.name, "session authorized");
    let result = super::relay::run(
        stream,
        buf,
        up,
        pipeline,
        (catalog, &ctx.views),
        &recorder,
        ctx.config.record_rows as usize,
        ctx.stats.clone(),
        super::hold::ReviewCtx {
            approvals: ctx.approvals.clone(),
            settings: conn.approvals.clone(),
            identity: session.identity.clone(),
            connection: conn.name.clone(),
            session_id: id.clone(),
            cancelled: registration.cancelled.clone(),
        },
        conn.max_rows_written,
    )
    .await;
    recorder.emit(
        "session.end",
        json!({"reason": match &result { Ok(()) => "client closed".to_string(), Err(e) => e.to_string() }}),
    );
    drop(registration);
    result
}

fn principal_json(p: &crate::pipeline::types::Principal) -> serde_json::Value {
    serde_json::to_value(crate::approvals::model::PrincipalView::from(p)).unwrap_or_default()
}

/// A server parameter that would make PostgreSQL read SQL differently from
/// the gateway's parser (or send bytes the maskers cannot read).
pub fn unsafe_parameter(key: &str, value: &str) -> Option<String> {
    if key.eq_ignore_ascii_case("standard_conforming_strings") && !value.eq_ignore_ascii_case("on") {
        return Some(format!("the server reports standard_conforming_strings = {value}; Wardgate requires on"));
    }
    if key.eq_ignore_ascii_case("client_encoding") && !crate::sql::is_utf8_encoding(value) {
        return Some(format!("the server reports client_encoding = {value}; Wardgate requires UTF8"));
    }
    None
}

async fn forward_cancel(ctx: &PgContext, pid: i32, secret: i32) {
    let Some(key) = ctx.cancels.lookup(pid, secret) else {
        tracing::warn!("cancel request with an unknown key ignored");
        return;
    };
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((key.host.as_str(), key.port))).await
    else {
        tracing::warn!("cancel: upstream unreachable");
        return;
    };
    let mut out = BytesMut::new();
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(key.pid);
    out.put_i32(key.secret);
    let _ = super::stream::send(&mut s, &out).await;
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
    tracing::info!("cancel request forwarded");
}
