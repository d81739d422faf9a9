//! `wardgate login`: a human signs in at the OpenID Provider from a terminal.
//!
//! Authorization code + PKCE (S256) with a loopback redirect (RFC 8252): the
//! command listens on `127.0.0.1`, prints (and, if it can, opens) the
//! provider's sign-in URL, checks `state`, exchanges the code with the PKCE
//! verifier, verifies the ID token (signature, issuer, audience, nonce) with
//! `openidconnect`, and stores the tokens in a 0600 file for `wardgate token`.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, RedirectUrl, RefreshToken, Scope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};

use super::oidc::{http_client, HttpClient};

/// Login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Discovery, token exchange or ID-token verification failed.
    #[error("{0}")]
    Provider(String),
    /// The provider redirected back with an error (user denied, bad client...).
    #[error("the provider refused the sign-in: {0}")]
    Denied(String),
    /// No callback arrived in time.
    #[error("no sign-in completed within {0} s")]
    Timeout(u64),
    /// Local I/O (listener, token file).
    #[error("{0}")]
    Io(String),
    /// Nothing stored for this issuer.
    #[error("not logged in{0}: run `wardgate login --issuer URL` first")]
    NotLoggedIn(String),
}

fn provider(e: impl std::fmt::Display) -> LoginError {
    LoginError::Provider(e.to_string())
}

/// How to sign in.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Issuer URL.
    pub issuer: String,
    /// OAuth client registered for the CLI (a public native client).
    pub client_id: String,
    /// Secret, for providers that only offer confidential clients.
    pub client_secret: Option<String>,
    /// Loopback port for the redirect (0: any free port).
    pub port: u16,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
    /// RFC 8707 resource (the gateway's audience), if the provider needs it.
    pub resource: Option<String>,
    /// Try to open a browser.
    pub open_browser: bool,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Tokens kept for one issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLogin {
    /// Issuer URL.
    pub issuer: String,
    /// Client used.
    pub client_id: String,
    /// Who signed in (`sub`).
    pub subject: String,
    /// Display name.
    pub name: String,
    /// Access token.
    pub access_token: String,
    /// ID token.
    pub id_token: Option<String>,
    /// Refresh token.
    pub refresh_token: Option<String>,
    /// Access token expiry, ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// RFC 8707 resource asked for.
    #[serde(default)]
    pub resource: Option<String>,
}

impl StoredLogin {
    /// The credential to present to the gateway: the access token when it is
    /// a JWT the gateway can verify, else the ID token.
    pub fn credential(&self) -> &str {
        if super::jwt::looks_like_jwt(&self.access_token) {
            &self.access_token
        } else {
            self.id_token.as_deref().unwrap_or(&self.access_token)
        }
    }
}

/// Where logins are kept: `$WARDGATE_TOKEN_FILE`, else `~/.config/wardgate/tokens.json`.
pub fn default_token_file() -> PathBuf {
    if let Some(p) = std::env::var_os("WARDGATE_TOKEN_FILE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("wardgate").join("tokens.json")
}

fn load_all(file: &Path) -> Result<BTreeMap<String, StoredLogin>, LoginError> {
    match std::fs::read(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(LoginError::Io(format!("cannot read {}: {e}", file.display()))),
        Ok(b) => serde_json::from_slice(&b).map_err(|e| LoginError::Io(format!("{} is corrupt: {e}", file.display()))),
    }
}

fn save(file: &Path, login: &StoredLogin) -> Result<(), LoginError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let io = |e: std::io::Error| LoginError::Io(format!("cannot write {}: {e}", file.display()));
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    }
    let mut all = load_all(file)?;
    all.insert(login.issuer.clone(), login.clone());
    let tmp = file.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec_pretty(&all).map_err(|e| LoginError::Io(e.to_string()))?).map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)
}

/// A client built from discovery: auth URL known, token and userinfo URLs maybe.
type DiscoveredClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

fn client(issuer: &str, client_id: &str, secret: Option<&str>) -> Result<(DiscoveredClient, HttpClient), LoginError> {
    if !super::oidc::secure_url(issuer) {
        return Err(LoginError::Provider(format!("issuer {issuer} is neither https nor loopback")));
    }
    let http = http_client();
    let url = IssuerUrl::new(issuer.to_string()).map_err(provider)?;
    let meta =
        CoreProviderMetadata::discover(&url, &http).map_err(|e| provider(format!("discovery at {issuer}: {e}")))?;
    let c = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(client_id.to_string()),
        secret.map(|s| ClientSecret::new(s.to_string())),
    );
    Ok((c, http))
}

/// Run the whole sign-in; `announce` receives the URL to open. Stores the result in `file`.
pub fn login(opts: &LoginOptions, file: &Path, announce: impl Fn(&str)) -> Result<StoredLogin, LoginError> {
    let listener = TcpListener::bind(("127.0.0.1", opts.port))
        .map_err(|e| LoginError::Io(format!("cannot listen on 127.0.0.1:{}: {e}", opts.port)))?;
    let port = listener.local_addr().map_err(|e| LoginError::Io(e.to_string()))?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let (client, http) = client(&opts.issuer, &opts.client_id, opts.client_secret.as_deref())?;
    let client = client.set_redirect_uri(RedirectUrl::new(redirect).map_err(provider)?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .set_pkce_challenge(challenge);
    for s in &opts.scopes {
        req = req.add_scope(Scope::new(s.clone()));
    }
    if let Some(r) = &opts.resource {
        req = req.add_extra_param("resource", r.clone());
    }
    let (url, csrf, nonce) = req.url();
    announce(url.as_str());
    if opts.open_browser {
        let _ = std::process::Command::new("xdg-open")
            .arg(url.as_str())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let code = wait_for_code(&listener, csrf.secret(), opts.timeout)?;
    let mut exchange =
        client.exchange_code(AuthorizationCode::new(code)).map_err(provider)?.set_pkce_verifier(verifier);
    if let Some(r) = &opts.resource {
        exchange = exchange.add_extra_param("resource", r.clone());
    }
    let token = exchange.request(&http).map_err(|e| provider(format!("token exchange: {}", describe(&e))))?;
    let id_token = token.id_token().ok_or_else(|| provider("the provider returned no ID token"))?;
    let claims =
        id_token.claims(&client.id_token_verifier(), &nonce).map_err(|e| provider(format!("ID token: {e}")))?;
    let name = claims
        .preferred_username()
        .map(|u| u.to_string())
        .or_else(|| claims.email().map(|e| e.to_string()))
        .unwrap_or_else(|| claims.subject().to_string());
    let login = StoredLogin {
        issuer: opts.issuer.clone(),
        client_id: opts.client_id.clone(),
        subject: claims.subject().to_string(),
        name,
        access_token: token.access_token().secret().clone(),
        id_token: Some(id_token.to_string()),
        refresh_token: token.refresh_token().map(|r| r.secret().clone()),
        expires_at_ms: token.expires_in().map(|d| crate::util::now_ms() + d.as_millis() as u64),
        resource: opts.resource.clone(),
    };
    save(file, &login)?;
    Ok(login)
}

fn describe<E: std::error::Error>(e: &E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Serve the loopback redirect until a callback with the right `state` arrives.
fn wait_for_code(listener: &TcpListener, state: &str, timeout: Duration) -> Result<String, LoginError> {
    listener.set_nonblocking(true).map_err(|e| LoginError::Io(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    loop {
        let (mut conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(LoginError::Timeout(timeout.as_secs()));
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(LoginError::Io(e.to_string())),
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = vec![0u8; 8192];
        let mut n = 0;
        while n < buf.len() {
            match conn.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let target = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            continue;
        };
        let params: BTreeMap<String, String> =
            openidconnect::url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let reply = |conn: &mut std::net::TcpStream, status: &str, text: &str| {
            let body = format!("<!doctype html><title>Wardgate</title><p>{text}</p>");
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        };
        if params.get("state").map(String::as_str) != Some(state) {
            reply(&mut conn, "400 Bad Request", "This sign-in response does not belong to the waiting command.");
            continue;
        }
        if let Some(err) = params.get("error") {
            reply(&mut conn, "400 Bad Request", "Sign-in failed; see the terminal.");
            let desc = params.get("error_description").map(|d| format!(" ({d})")).unwrap_or_default();
            return Err(LoginError::Denied(format!("{err}{desc}")));
        }
        match params.get("code") {
            Some(code) => {
                reply(&mut conn, "200 OK", "Signed in to Wardgate. You can close this tab and return to the terminal.");
                return Ok(code.clone());
            }
            None => reply(&mut conn, "400 Bad Request", "The callback carried no code."),
        }
    }
}

/// The stored login for `issuer` (or the only/first one), refreshed if its
/// access token expires within a minute and a refresh token is at hand.
pub fn current(file: &Path, issuer: Option<&str>) -> Result<StoredLogin, LoginError> {
    let all = load_all(file)?;
    let found = match issuer {
        Some(i) => all.get(i.trim_end_matches('/')).or_else(|| all.get(i)).cloned(),
        None => all.values().next().cloned(),
    };
    let mut login =
        found.ok_or_else(|| LoginError::NotLoggedIn(issuer.map(|i| format!(" at {i}")).unwrap_or_default()))?;
    let fresh = login.expires_at_ms.is_none_or(|t| t > crate::util::now_ms() + 60_000);
    if fresh {
        return Ok(login);
    }
    let Some(rt) = login.refresh_token.clone() else {
        return Err(LoginError::NotLoggedIn(format!(" (the token for {} expired)", login.issuer)));
    };
    let (client, http) = client(&login.issuer, &login.client_id, None)?;
    let rt = RefreshToken::new(rt);
    let mut req = client.exchange_refresh_token(&rt).map_err(provider)?;
    if let Some(r) = &login.resource {
        req = req.add_extra_param("resource", r.clone());
    }
    let token = req.request(&http).map_err(|e| provider(format!("refresh: {}", describe(&e))))?;
    login.access_token = token.access_token().secret().clone();
    if let Some(r) = token.refresh_token() {
        login.refresh_token = Some(r.secret().clone());
    }
    if let Some(id) = token.id_token() {
        login.id_token = Some(id.to_string());
    }
    login.expires_at_ms = token.expires_in().map(|d| crate::util::now_ms() + d.as_millis() as u64);
    save(file, &login)?;
    Ok(login)
}

/// An OAuth client-credentials access token (RFC 6749 §4.4) for a machine
/// client, from the provider's discovered token endpoint.
pub fn client_credentials(
    issuer: &str,
    client_id: &str,
    secret: &str,
    scopes: &[String],
) -> Result<String, LoginError> {
    let (client, http) = client(issuer, client_id, Some(secret))?;
    let mut req = client.exchange_client_credentials().map_err(provider)?;
    for s in scopes {
        req = req.add_scope(Scope::new(s.clone()));
    }
    let token = req.request(&http).map_err(|e| provider(format!("client credentials: {}", describe(&e))))?;
    Ok(token.access_token().secret().clone())
}
