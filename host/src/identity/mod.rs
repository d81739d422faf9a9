//! Who is connecting: credentials to principals, and grants to connections.
//!
//! A client's password is its credential. Today that is a Wardgate
//! service-account key (`wg_...`, stored only as its SHA-256); OIDC tokens
//! (JWTs) plug into [`Authenticator::authenticate`] next to it. Access is
//! denied by default: a principal reaches a connection only through a grant,
//! and a refusal never says which other connections exist.

use std::collections::HashMap;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config::{Config, Grant, ServiceAccount};
use crate::pipeline::types::{Identity, Principal, PrincipalKind};

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
    /// The principal has no grant to the connection.
    #[error("{subject} has no access to connection \"{connection}\"")]
    NoGrant {
        /// Principal.
        subject: String,
        /// Connection asked for.
        connection: String,
    },
}

/// Generate a new service-account key and its stored hash.
pub fn generate_key() -> (String, String) {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let key = format!("wg_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b));
    let hash = key_hash(&key);
    (key, hash)
}

/// SHA-256 of a key, hex.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Checks credentials and grants.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    accounts: HashMap<String, ServiceAccount>,
    grants: Vec<Grant>,
}

impl Authenticator {
    /// From the configuration.
    pub fn from_config(cfg: &Config) -> Self {
        Authenticator {
            accounts: cfg.service_accounts.iter().map(|s| (s.key_sha256.clone(), s.clone())).collect(),
            grants: cfg.grants.clone(),
        }
    }

    /// Turn a credential into an identity.
    pub fn authenticate(&self, credential: &str) -> Result<Identity, AuthError> {
        let credential = credential.trim_end_matches('\0');
        if let Some(body) = credential.strip_prefix("wg_") {
            if body.len() < 32 || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(AuthError::Malformed);
            }
            let hash = key_hash(credential);
            let acct = self.accounts.get(&hash).ok_or(AuthError::UnknownKey)?;
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
                kind: if acct.kind == "agent" { PrincipalKind::Agent } else { PrincipalKind::ServiceAccount },
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
            return Ok(Identity { principal, on_behalf_of });
        }
        if credential.starts_with("eyJ") && credential.matches('.').count() == 2 {
            return Err(AuthError::OidcNotConfigured);
        }
        Err(AuthError::Malformed)
    }

    /// May `identity` use `connection`?
    pub fn authorize(&self, identity: &Identity, connection: &str) -> Result<(), AuthError> {
        let p = &identity.principal;
        let granted = self.grants.iter().any(|g| {
            g.connection == connection
                && (g.principals.iter().any(|s| s == &p.subject || s == &p.name)
                    || g.groups.iter().any(|gr| p.groups.contains(gr)))
        });
        if granted {
            Ok(())
        } else {
            Err(AuthError::NoGrant { subject: p.subject.clone(), connection: connection.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_with(acct: ServiceAccount) -> Authenticator {
        Authenticator {
            grants: vec![Grant { connection: "app".into(), principals: vec![], groups: vec!["agents".into()] }],
            accounts: [(acct.key_sha256.clone(), acct)].into_iter().collect(),
        }
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
        let id = a.authenticate(&key).unwrap();
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
        let e = auth_with(acct).authenticate(&key).unwrap_err();
        assert_eq!(e, AuthError::Revoked("bot".into()));
        let mut acct = account(hash);
        acct.expires_at_ms = Some(1);
        assert_eq!(auth_with(acct.clone()).authenticate(&key).unwrap_err(), AuthError::Expired("bot".into()));
        let (other, _) = generate_key();
        let e = auth_with(acct).authenticate(&other).unwrap_err();
        assert_eq!(e, AuthError::UnknownKey);
        assert!(!e.to_string().contains(&other));
        assert_eq!(Authenticator::default().authenticate("hunter2").unwrap_err(), AuthError::Malformed);
        assert_eq!(Authenticator::default().authenticate("wg_short").unwrap_err(), AuthError::Malformed);
        assert_eq!(Authenticator::default().authenticate("eyJa.eyJb.c").unwrap_err(), AuthError::OidcNotConfigured);
    }
}
