//! OIDC bearer tokens: discovery, a cached JWKS, signature and claim checks,
//! and the mapping from claims to a [`Principal`].
//!
//! Discovery and key types come from the `openidconnect` crate; keys are
//! fetched lazily, cached, refreshed when older than `jwks_max_age`, and
//! refreshed early (at most once per `jwks_min_refresh`) when a token names
//! an unknown `kid` or fails to verify with the cached key, so a rotation at
//! the provider is picked up without letting token spray hammer it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata};
use openidconnect::{HttpRequest, HttpResponse, IssuerUrl, JsonWebKey as _, JsonWebKeyUse as _};
use serde_json::{Map, Value};

use super::jwt::{self, ClaimRules, JwtError};
use crate::config::OidcIssuerConfig;
use crate::pipeline::types::{Identity, Principal, PrincipalKind};

/// A token could not be checked or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The token itself is wrong.
    #[error(transparent)]
    Token(#[from] JwtError),
    /// The provider's keys could not be fetched (fails closed).
    #[error("identity provider {issuer} is unreachable: {reason}")]
    Unavailable {
        /// Issuer URL.
        issuer: String,
        /// What failed.
        reason: String,
    },
}

/// Error of the blocking HTTP client handed to `openidconnect`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// The blocking HTTP client handed to `openidconnect`: ureq with bounded
/// time (5 s) and body size (1 MiB), no redirects.
pub struct HttpClient(ureq::Agent);

/// An [`HttpClient`].
pub fn http_client() -> HttpClient {
    HttpClient(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into(),
    )
}

impl openidconnect::SyncHttpClient for HttpClient {
    type Error = HttpError;

    fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let mut resp = self.0.run(req).map_err(|e| HttpError(e.to_string()))?;
        let mut out = openidconnect::http::Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec().map_err(|e| HttpError(e.to_string()))?;
        out.body(body).map_err(|e| HttpError(e.to_string()))
    }
}

struct KeySet {
    keys: CoreJsonWebKeySet,
    fetched: Instant,
    generation: u64,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    jwks_uri: Option<String>,
}

/// One configured OpenID Provider.
pub struct OidcIssuer {
    cfg: OidcIssuerConfig,
    /// Allowed algorithms, by their JOSE name.
    algs: Vec<(String, CoreJwsSigningAlgorithm)>,
    keys: ArcSwapOption<KeySet>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl std::fmt::Debug for OidcIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcIssuer").field("issuer", &self.cfg.issuer).finish_non_exhaustive()
    }
}

/// Parse a JOSE algorithm name into `openidconnect`'s enum.
pub fn parse_alg(name: &str) -> Option<CoreJwsSigningAlgorithm> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

const TOKEN_TYPES: [&str; 4] = ["jwt", "at+jwt", "application/jwt", "application/at+jwt"];

impl OidcIssuer {
    /// For a validated configuration (algorithms already vetted).
    pub fn new(cfg: OidcIssuerConfig) -> Self {
        let algs = cfg.algorithms.iter().filter_map(|a| parse_alg(a).map(|p| (a.clone(), p))).collect();
        OidcIssuer { cfg, algs, keys: ArcSwapOption::empty(), refresh: Default::default() }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// Verify `token` and map it to an identity.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, OidcError> {
        let claims = self.verify(token).await?;
        Ok(self.identity(&claims))
    }

    /// Verify signature and registered claims; returns the claims.
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, OidcError> {
        let jws = jwt::parse(token)?;
        let alg = self
            .algs
            .iter()
            .find(|(name, _)| *name == jws.alg)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| JwtError::Algorithm(jws.alg.chars().take(20).collect()))?;
        if let Some(t) = &jws.typ {
            if !TOKEN_TYPES.contains(&t.to_ascii_lowercase().as_str()) {
                return Err(JwtError::Malformed("typ is not a JWT access or ID token").into());
            }
        }
        let mut set = match self.keys.load_full() {
            Some(s) if s.fetched.elapsed() < self.cfg.jwks_max_age => s,
            stale => match self.refresh(stale.as_ref().map(|s| s.generation)).await {
                Ok(Some(s)) => s,
                Ok(None) => stale.ok_or_else(|| self.unavailable("no keys fetched yet"))?,
                Err(e) => match stale {
                    // Keep serving with the last good keys while the provider is briefly down.
                    Some(s) => {
                        tracing::warn!(issuer = %self.cfg.issuer, "JWKS refresh failed, using cached keys: {e}");
                        s
                    }
                    None => return Err(e),
                },
            },
        };
        if let Err(first) = verify_signature(&set.keys, &jws, &alg) {
            match self.refresh(Some(set.generation)).await {
                Ok(Some(fresh)) => set = fresh,
                Ok(None) => return Err(first.into()),
                Err(e) => {
                    tracing::warn!(issuer = %self.cfg.issuer, "JWKS refresh failed: {e}");
                    return Err(first.into());
                }
            }
            verify_signature(&set.keys, &jws, &alg)?;
        }
        jwt::check_claims(
            &jws.claims,
            &ClaimRules {
                issuer: &self.cfg.issuer,
                audiences: &self.cfg.audiences,
                leeway_secs: self.cfg.leeway.as_secs(),
                now_secs: crate::util::now_ms() / 1000,
            },
        )?;
        Ok(jws.claims)
    }

    fn unavailable(&self, reason: impl Into<String>) -> OidcError {
        OidcError::Unavailable { issuer: self.cfg.issuer.clone(), reason: reason.into() }
    }

    /// Fetch the JWKS unless another task already refreshed past `seen`, or
    /// the last attempt was under `jwks_min_refresh` ago. `Ok(None)`: nothing new.
    async fn refresh(&self, seen: Option<u64>) -> Result<Option<Arc<KeySet>>, OidcError> {
        let mut st = self.refresh.lock().await;
        if let Some(cur) = self.keys.load_full() {
            if Some(cur.generation) != seen {
                return Ok(Some(cur));
            }
        }
        if st.last_attempt.is_some_and(|t| t.elapsed() < self.cfg.jwks_min_refresh) {
            return Ok(None);
        }
        st.last_attempt = Some(Instant::now());
        let issuer = self.cfg.issuer.clone();
        let known_uri = st.jwks_uri.clone();
        let fetched = tokio::task::spawn_blocking(move || fetch_keys(&issuer, known_uri))
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        let (uri, keys) = fetched.map_err(|e| self.unavailable(e))?;
        st.jwks_uri = Some(uri);
        let generation = seen.map_or(1, |g| g + 1);
        let set = Arc::new(KeySet { keys, fetched: Instant::now(), generation });
        tracing::info!(issuer = %self.cfg.issuer, keys = set.keys.keys().len(), generation, "JWKS fetched");
        self.keys.store(Some(set.clone()));
        Ok(Some(set))
    }

    /// Claims to identity: kind, groups, and the RFC 8693 `act` chain.
    pub fn identity(&self, c: &Map<String, Value>) -> Identity {
        let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        let sub = s("sub").unwrap_or_default();
        let client_id = s("client_id").or_else(|| s("azp"));
        let groups = claim_path(c, &self.cfg.groups_claim).map(string_list).unwrap_or_default();
        let machine_kind = |id: &str| self.cfg.clients.get(id).copied().unwrap_or(self.cfg.machine_kind);
        let principal = |subject: String, name: String, email: Option<String>, groups, kind| Principal {
            subject,
            name,
            email,
            groups,
            kind,
            issuer: self.cfg.issuer.clone(),
        };
        let subject_principal = |kind| {
            let name = s("preferred_username").or_else(|| s("email")).unwrap_or_else(|| sub.clone());
            principal(sub.clone(), name, s("email"), Vec::new(), kind)
        };
        let Some(Value::Object(act)) = c.get("act") else {
            // Client-credentials token (RFC 9068: sub is the client) or a user's token.
            let kind = match &client_id {
                Some(id) if *id == sub || self.cfg.clients.contains_key(id) => machine_kind(id),
                _ => PrincipalKind::Human,
            };
            let mut p = subject_principal(kind);
            if kind != PrincipalKind::Human {
                p.name = client_id.clone().unwrap_or(sub.clone());
            }
            p.groups = groups;
            return Identity { principal: p, on_behalf_of: Vec::new() };
        };
        // Delegated: the outermost actor is connected; nested actors acted before it;
        // the token's subject is who they all act for.
        let actor = |a: &Map<String, Value>| {
            let sub = a.get("sub").and_then(Value::as_str).unwrap_or("unknown").to_string();
            let id = a.get("client_id").and_then(Value::as_str).unwrap_or(&sub).to_string();
            principal(sub, id.clone(), None, Vec::new(), machine_kind(&id))
        };
        let mut me = actor(act);
        me.groups = groups;
        let mut chain = Vec::new();
        let mut next = act.get("act");
        while let Some(Value::Object(a)) = next {
            if chain.len() >= 8 {
                break;
            }
            chain.push(actor(a));
            next = a.get("act");
        }
        let human = client_id.as_deref() != Some(sub.as_str());
        chain.push(subject_principal(if human { PrincipalKind::Human } else { machine_kind(&sub) }));
        Identity { principal: me, on_behalf_of: chain }
    }
}

/// Follow a dotted path (`realm_access.roles`) into the claims.
fn claim_path<'a>(c: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = c.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(v)
}

/// A claim as a list of strings: a JSON array, or a space-separated string (like `scope`).
fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn verify_signature(
    set: &CoreJsonWebKeySet,
    jws: &jwt::Jws<'_>,
    alg: &CoreJwsSigningAlgorithm,
) -> Result<(), JwtError> {
    let candidates: Vec<&CoreJsonWebKey> = set
        .keys()
        .iter()
        .filter(|k| match (&jws.kid, k.key_id()) {
            (Some(want), Some(have)) => want.as_str() == have.as_str(),
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter(|k| !matches!(k.key_use(), Some(u) if !u.allows_signature()))
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::UnknownKey(jws.kid.clone().unwrap_or_default().chars().take(80).collect()));
    }
    if candidates.iter().any(|k| k.verify_signature(alg, jws.signing_input, &jws.signature).is_ok()) {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

/// Discovery (once) and the JWKS, blocking.
fn fetch_keys(issuer: &str, known_uri: Option<String>) -> Result<(String, CoreJsonWebKeySet), String> {
    let client = http_client();
    let uri = match known_uri {
        Some(u) => u,
        None => {
            let url = IssuerUrl::new(issuer.to_string()).map_err(|e| format!("bad issuer URL: {e}"))?;
            let meta = CoreProviderMetadata::discover(&url, &client).map_err(|e| format!("discovery failed: {e}"))?;
            meta.jwks_uri().url().to_string()
        }
    };
    if !secure_url(&uri) {
        return Err(format!("jwks_uri {uri} is neither https nor loopback"));
    }
    let jwks_url = openidconnect::JsonWebKeySetUrl::new(uri.clone()).map_err(|e| e.to_string())?;
    let keys = CoreJsonWebKeySet::fetch(&jwks_url, &client).map_err(|e| format!("JWKS fetch failed: {e}"))?;
    Ok((uri, keys))
}

/// `https://…`, or `http://` to a loopback host.
pub fn secure_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| &h[1..]).unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer() -> OidcIssuer {
        OidcIssuer::new(OidcIssuerConfig {
            issuer: "https://idp".into(),
            audiences: vec!["urn:gateway".into()],
            algorithms: vec!["ES256".into()],
            groups_claim: "realm.groups".into(),
            leeway: Duration::from_secs(30),
            jwks_min_refresh: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(600),
            machine_kind: PrincipalKind::Agent,
            clients: [("ci".to_string(), PrincipalKind::ServiceAccount)].into_iter().collect(),
        })
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn client_credentials_tokens_are_machines_and_user_tokens_are_humans() {
        let i = issuer();
        let id = i.identity(&map(json!({"sub": "bot-1", "client_id": "bot-1", "realm": {"groups": ["agents"]}})));
        assert_eq!((id.principal.kind, id.principal.name.as_str()), (PrincipalKind::Agent, "bot-1"));
        assert_eq!(id.principal.groups, ["agents"]);
        let id = i.identity(&map(json!({"sub": "ci", "client_id": "ci"})));
        assert_eq!(id.principal.kind, PrincipalKind::ServiceAccount);
        // A listed machine client whose sub is a service-account user id (Keycloak).
        let id = i.identity(&map(json!({"sub": "5f0c-uuid", "azp": "ci", "preferred_username": "service-account-ci"})));
        assert_eq!((id.principal.kind, id.principal.name.as_str()), (PrincipalKind::ServiceAccount, "ci"));
        let id = i.identity(&map(
            json!({"sub": "u1", "azp": "cli", "preferred_username": "alice", "email": "a@x", "realm": {"groups": "a b"}}),
        ));
        assert_eq!(id.principal.kind, PrincipalKind::Human);
        assert_eq!((id.principal.name.as_str(), id.principal.email.as_deref()), ("alice", Some("a@x")));
        assert_eq!(id.principal.groups, ["a", "b"]);
        assert!(id.on_behalf_of.is_empty());
    }

    #[test]
    fn an_act_claim_makes_the_actor_the_principal_acting_for_the_subject() {
        let i = issuer();
        let id = i.identity(&map(json!({
            "sub": "u1", "preferred_username": "alice", "client_id": "agent-2",
            "act": {"sub": "agent-2", "act": {"sub": "agent-1"}}, "realm": {"groups": ["agents"]}
        })));
        assert_eq!((id.principal.subject.as_str(), id.principal.kind), ("agent-2", PrincipalKind::Agent));
        assert_eq!(id.principal.groups, ["agents"]);
        let chain: Vec<_> = id.on_behalf_of.iter().map(|p| (p.name.as_str(), p.kind)).collect();
        assert_eq!(chain, [("agent-1", PrincipalKind::Agent), ("alice", PrincipalKind::Human)]);
    }

    #[test]
    fn only_https_or_loopback_urls_are_trusted() {
        for ok in ["https://idp.example/jwks", "http://127.0.0.1:9090/jwks", "http://[::1]:1/x", "http://localhost/x"] {
            assert!(secure_url(ok), "{ok}");
        }
        for bad in
            ["http://idp.example/jwks", "http://127.0.0.1.evil.com/x", "http://user@evil/x", "ftp://x", "file:///x"]
        {
            assert!(!secure_url(bad), "{bad}");
        }
    }

    #[test]
    fn algorithm_names_parse_and_none_is_not_a_signature_algorithm_we_list() {
        assert!(parse_alg("ES256").is_some());
        assert!(parse_alg("EdDSA").is_some());
        assert!(parse_alg("bogus").is_none());
    }
}
