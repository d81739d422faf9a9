//! Who is connecting: credentials to principals, and grants to connections.
//!
//! A client's password is its credential: a Wardgate service-account key
//! (`wg_...`, stored only as its SHA-256, see [`keys`]) or an OIDC bearer
//! token (a JWT from a configured issuer, see [`oidc`]). Access is denied by
//! default: a principal reaches a connection only through a grant, and a
//! refusal never says which other connections exist. Every protocol adapter
//! calls this one module.

pub mod jwt;
pub mod keys;
pub mod login;
pub mod oidc;

use crate::config::{Config, Grant};
use crate::pipeline::types::{Identity, Principal, PrincipalKind};
pub use keys::{generate_key, key_hash};

/// Why a credential was refused. Messages never contain the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Empty, truncated or not a known credential format.
    #[error("malformed credential: expected a Wardgate key (wg_...) or an OIDC token")]
    Malformed,
    /// A JWT, but no OpenID Provider is configured.
    #[error("OIDC tokens are not accepted: no issuer is configured on this gateway")]
    OidcNotConfigured,
    /// No service account has this key.
    #[error("unknown key")]
    UnknownKey,
    /// The key has expired.
    #[error("key of service account {0} has expired")]
    Expired(String),
    /// The key was revoked.
    #[error("key of service account {0} has been revoked")]
    Revoked(String),
    /// The service-account store cannot be read (fails closed).
    #[error("service-account keys cannot be checked right now")]
    KeyStore,
    /// The OIDC token was refused, or its issuer could not be reached.
    #[error(transparent)]
    Oidc(#[from] oidc::OidcError),
    /// The principal has no grant to the connection.
    #[error("{subject} has no access to connection \"{connection}\"")]
    NoGrant {
        /// Principal.
        subject: String,
        /// Connection asked for.
        connection: String,
    },
}

impl AuthError {
    /// A short stable label for metrics and recordings.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::OidcNotConfigured => "oidc-not-configured",
            AuthError::UnknownKey => "unknown-key",
            AuthError::Expired(_) => "key-expired",
            AuthError::Revoked(_) => "key-revoked",
            AuthError::KeyStore => "key-store-unavailable",
            AuthError::Oidc(oidc::OidcError::Unavailable { .. }) => "idp-unavailable",
            AuthError::Oidc(oidc::OidcError::Token(t)) => t.kind(),
            AuthError::NoGrant { .. } => "no-grant",
        }
    }
}

/// What kind of credential was presented (for recordings; never the value).
pub fn credential_kind(credential: &str) -> &'static str {
    if credential.starts_with("wg_") {
        "wardgate-key"
    } else if jwt::looks_like_jwt(credential) {
        "oidc-token"
    } else {
        "unrecognized"
    }
}

/// Checks credentials and grants.
#[derive(Debug, Default)]
pub struct Authenticator {
    keys: keys::KeyRing,
    issuers: Vec<oidc::OidcIssuer>,
    grants: Vec<Grant>,
}

impl Authenticator {
    /// From the configuration: its accounts, the state store's, its issuers and grants.
    pub fn from_config(cfg: &Config) -> Self {
        Authenticator {
            keys: keys::KeyRing::new(&cfg.service_accounts, Some(keys::AccountStore::in_dir(&cfg.state_dir))),
            issuers: cfg.oidc.iter().cloned().map(oidc::OidcIssuer::new).collect(),
            grants: cfg.grants.clone(),
        }
    }

    /// Turn a credential into an identity.
    pub async fn authenticate(&self, credential: &str) -> Result<Identity, AuthError> {
        let credential = credential.trim_end_matches('\0');
        if credential.starts_with("wg_") {
            return self.authenticate_key(credential);
        }
        if !jwt::looks_like_jwt(credential) {
            return Err(AuthError::Malformed);
        }
        if self.issuers.is_empty() {
            return Err(AuthError::OidcNotConfigured);
        }
        // Pick the issuer by the (not yet trusted) `iss`; its keys then decide.
        let jws = jwt::parse(credential).map_err(oidc::OidcError::from)?;
        let iss =
            jws.claims.get("iss").and_then(|v| v.as_str()).ok_or(oidc::OidcError::from(jwt::JwtError::Claim("iss")))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer() == iss)
            .ok_or_else(|| oidc::OidcError::from(jwt::JwtError::Issuer(iss.chars().take(200).collect())))?;
        Ok(issuer.authenticate(credential).await?)
    }

    fn authenticate_key(&self, credential: &str) -> Result<Identity, AuthError> {
        if !keys::is_key_shaped(credential) {
            return Err(AuthError::Malformed);
        }
        let acct =
            self.keys.lookup(&key_hash(credential)).map_err(|_| AuthError::KeyStore)?.ok_or(AuthError::UnknownKey)?;
        if acct.revoked {
            return Err(AuthError::Revoked(acct.name.clone()));
        }
        if acct.expires_at_ms.is_some_and(|t| crate::util::now_ms() >= t) {
            return Err(AuthError::Expired(acct.name.clone()));
        }
        let principal = Principal {
            subject: format!("sa:{}", acct.name),
            name: acct.name.clone(),
            email: None,
            groups: acct.groups.clone(),
            kind: match acct.kind.as_str() {
                "agent" => PrincipalKind::Agent,
                "human" => PrincipalKind::Human,
                _ => PrincipalKind::ServiceAccount,
            },
            issuer: "wardgate".into(),
        };
        let on_behalf_of = acct
            .on_behalf_of
            .iter()
            .map(|h| Principal {
                subject: h.clone(),
                name: h.clone(),
                email: h.contains('@').then(|| h.clone()),
                groups: vec![],
                kind: PrincipalKind::Human,
                issuer: "wardgate".into(),
            })
            .collect();
        Ok(Identity { principal, on_behalf_of })
    }

    /// May `identity` use `connection`? The first matching grant (in file order) decides the role.
    pub fn authorize(&self, identity: &Identity, connection: &str) -> Result<&Grant, AuthError> {
        let p = &identity.principal;
        self.grants
            .iter()
            .find(|g| g.connection == connection && g.matches(p))
            .ok_or_else(|| AuthError::NoGrant { subject: p.subject.clone(), connection: connection.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::ServiceAccount;

    fn auth_with(acct: ServiceAccount) -> Authenticator {
        Authenticator {
            grants: vec![Grant { connection: "app".into(), groups: vec!["agents".into()], ..Default::default() }],
            keys: keys::KeyRing::new(&[acct], None),
            issuers: vec![],
        }
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    fn account(hash: String) -> ServiceAccount {
        ServiceAccount {
            name: "bot".into(),
            kind: "agent".into(),
            groups: vec!["agents".into()],
            key_sha256: hash,
            on_behalf_of: Some("alice@example.com".into()),
            expires_at_ms: None,
            revoked: false,
        }
    }

    #[test]
    fn a_valid_key_becomes_an_agent_acting_for_its_sponsor() {
        let (key, hash) = generate_key();
        let a = auth_with(account(hash));
        let id = now(a.authenticate(&key)).unwrap();
        assert_eq!(id.principal.subject, "sa:bot");
        assert_eq!(id.principal.kind, PrincipalKind::Agent);
        assert_eq!(id.on_behalf_of[0].name, "alice@example.com");
        assert!(a.authorize(&id, "app").is_ok());
        assert_eq!(
            a.authorize(&id, "billing").unwrap_err().to_string(),
            "sa:bot has no access to connection \"billing\""
        );
    }

    #[test]
    fn revoked_expired_unknown_and_malformed_keys_are_refused_without_echoing_them() {
        let (key, hash) = generate_key();
        let mut acct = account(hash.clone());
        acct.revoked = true;
        let e = now(auth_with(acct).authenticate(&key)).unwrap_err();
        assert_eq!(e, AuthError::Revoked("bot".into()));
        let mut acct = account(hash);
        acct.expires_at_ms = Some(1);
        assert_eq!(now(auth_with(acct.clone()).authenticate(&key)).unwrap_err(), AuthError::Expired("bot".into()));
        let (other, _) = generate_key();
        let e = now(auth_with(acct).authenticate(&other)).unwrap_err();
        assert_eq!(e, AuthError::UnknownKey);
        assert!(!e.to_string().contains(&other));
        assert_eq!(now(Authenticator::default().authenticate("hunter2")).unwrap_err(), AuthError::Malformed);
        assert_eq!(now(Authenticator::default().authenticate("wg_short")).unwrap_err(), AuthError::Malformed);
        assert_eq!(
            now(Authenticator::default().authenticate("eyJa.eyJb.c")).unwrap_err(),
            AuthError::OidcNotConfigured
        );
    }
}
