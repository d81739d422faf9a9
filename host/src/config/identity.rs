//! The identity half of the config: OIDC issuers, grants and upstream roles.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{at_span, TomlError};
use crate::pipeline::types::{Principal, PrincipalKind};

/// Algorithms accepted when an issuer lists none: asymmetric only.
pub const DEFAULT_ALGORITHMS: [&str; 9] =
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    issuer: Spanned<String>,
    audiences: Spanned<Vec<String>>,
    algorithms: Option<Spanned<Vec<String>>>,
    #[serde(default = "groups")]
    groups_claim: String,
    leeway_secs: Option<u64>,
    jwks_min_refresh_secs: Option<u64>,
    jwks_max_age_secs: Option<u64>,
    #[serde(default = "agent")]
    machine_kind: Spanned<String>,
    #[serde(default)]
    clients: BTreeMap<String, Spanned<String>>,
}

fn groups() -> String {
    "groups".into()
}
fn agent() -> Spanned<String> {
    Spanned::new(0..0, "agent".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    connection: Spanned<String>,
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    kinds: Vec<Spanned<String>>,
    issuer: Option<String>,
    role: Option<Spanned<String>>,
}

/// One trusted OpenID Provider.
#[derive(Debug, Clone)]
pub struct OidcIssuerConfig {
    /// Exact `iss` value; discovery at `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values (the gateway's resource identifier, or the login client's id).
    pub audiences: Vec<String>,
    /// Allowed signature algorithms (never `none` or HS*).
    pub algorithms: Vec<String>,
    /// Claim holding groups; dots walk into objects (`realm_access.roles`).
    pub groups_claim: String,
    /// Allowed clock skew for `exp`, `nbf`, `iat`.
    pub leeway: Duration,
    /// Earliest re-fetch of the JWKS after the previous one, for unknown `kid`s.
    pub jwks_min_refresh: Duration,
    /// Keys older than this are re-fetched before use.
    pub jwks_max_age: Duration,
    /// Kind of client-credentials principals (`sub` = client).
    pub machine_kind: PrincipalKind,
    /// Machine clients by id (`client_id`/`azp`), with their kind: their
    /// tokens are machines even when `sub` is not the client id (Keycloak
    /// service accounts, for one).
    pub clients: BTreeMap<String, PrincipalKind>,
}

/// Who may reach a connection, and as which upstream role.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Connection name.
    pub connection: String,
    /// Principal subjects: `sa:NAME` for keys, the token's `sub` (a client id
    /// for machines, the actor's `sub` for delegated tokens). Never names:
    /// some providers let users change `preferred_username`.
    pub principals: Vec<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// If not empty: only these principal kinds.
    pub kinds: Vec<PrincipalKind>,
    /// If set: only principals vouched for by this issuer (`wardgate` for keys).
    pub issuer: Option<String>,
    /// Upstream role (`[connections.NAME.roles.ROLE]`); the connection's own user if unset.
    pub role: Option<String>,
}

impl Grant {
    /// Does this grant cover `p` (connection aside)?
    pub fn matches(&self, p: &Principal) -> bool {
        let who = self.principals.contains(&p.subject) || self.groups.iter().any(|g| p.groups.contains(g));
        who && (self.kinds.is_empty() || self.kinds.contains(&p.kind))
            && self.issuer.as_ref().is_none_or(|i| *i == p.issuer)
    }
}

/// Parse a principal kind name.
pub fn principal_kind(s: &str) -> Option<PrincipalKind> {
    match s {
        "human" => Some(PrincipalKind::Human),
        "agent" => Some(PrincipalKind::Agent),
        "service-account" => Some(PrincipalKind::ServiceAccount),
        _ => None,
    }
}

pub(super) struct Ctx<'a> {
    pub path: &'a Path,
    pub src: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, span: std::ops::Range<usize>, key: &str, msg: String, fix: &str) -> TomlError {
        at_span(self.path, self.src, Some(span), key, msg, Some(fix))
    }
}

pub(super) fn oidc(cx: &Ctx<'_>, raw: Vec<RawOidc>) -> Result<Vec<OidcIssuerConfig>, TomlError> {
    let mut out: Vec<OidcIssuerConfig> = Vec::new();
    for (i, o) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("oidc[{i}].{k}");
        let issuer = o.issuer.get_ref().clone();
        if !crate::identity::oidc::secure_url(&issuer) {
            return Err(cx.err(
                o.issuer.span(),
                &key("issuer"),
                format!("issuer \"{issuer}\" is neither https nor a loopback http URL"),
                "use the provider's https issuer URL (http only for 127.0.0.1 in tests)",
            ));
        }
        if out.iter().any(|x| x.issuer == issuer) {
            return Err(cx.err(o.issuer.span(), &key("issuer"), "issuer listed twice".into(), "keep one entry"));
        }
        if o.audiences.get_ref().is_empty() {
            return Err(cx.err(
                o.audiences.span(),
                &key("audiences"),
                "no audience: any token of this issuer, for any application, would be accepted".into(),
                "list this gateway's resource identifier, e.g. audiences = [\"urn:wardgate\"]",
            ));
        }
        let algorithms: Vec<String> = match &o.algorithms {
            None => DEFAULT_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
            Some(a) => {
                for alg in a.get_ref() {
                    let symmetric = alg.to_ascii_uppercase().starts_with("HS") || alg.eq_ignore_ascii_case("none");
                    if symmetric || crate::identity::oidc::parse_alg(alg).is_none() {
                        return Err(cx.err(
                            a.span(),
                            &key("algorithms"),
                            format!("\"{alg}\" is not an accepted signature algorithm"),
                            "use asymmetric algorithms only: RS256, PS256, ES256, ES384, EdDSA, ...",
                        ));
                    }
                }
                a.get_ref().clone()
            }
        };
        let kind_of = |s: &Spanned<String>, k: &str| {
            principal_kind(s.get_ref()).filter(|k| *k != PrincipalKind::Human).ok_or_else(|| {
                cx.err(
                    s.span(),
                    &key(k),
                    format!("unknown machine kind \"{}\"", s.get_ref()),
                    "use agent or service-account",
                )
            })
        };
        let machine_kind = kind_of(&o.machine_kind, "machine_kind")?;
        let mut clients = BTreeMap::new();
        for (id, k) in &o.clients {
            clients.insert(id.clone(), kind_of(k, &format!("clients.{id}"))?);
        }
        out.push(OidcIssuerConfig {
            issuer,
            audiences: o.audiences.into_inner(),
            algorithms,
            groups_claim: o.groups_claim,
            leeway: Duration::from_secs(o.leeway_secs.unwrap_or(30).min(300)),
            jwks_min_refresh: Duration::from_secs(o.jwks_min_refresh_secs.unwrap_or(10)),
            jwks_max_age: Duration::from_secs(o.jwks_max_age_secs.unwrap_or(600)),
            machine_kind,
            clients,
        });
    }
    Ok(out)
}

pub(super) fn grants(
    cx: &Ctx<'_>,
    raw: Vec<RawGrant>,
    roles_of: impl Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<Grant>, TomlError> {
    let mut out = Vec::new();
    for (i, g) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("grants[{i}].{k}");
        let Some(roles) = roles_of(g.connection.get_ref()) else {
            return Err(cx.err(
                g.connection.span(),
                &key("connection"),
                format!("no connection named \"{}\"", g.connection.get_ref()),
                "grant access to a connection defined under [connections.NAME]",
            ));
        };
        if g.principals.is_empty() && g.groups.is_empty() {
            return Err(cx.err(
                g.connection.span(),
                &key("principals"),
                "grant names no principals and no groups, so it grants nothing".into(),
                "add principals = [\"sa:NAME\"] or groups = [\"GROUP\"]",
            ));
        }
        if let Some(r) = &g.role {
            if !roles.contains(r.get_ref()) {
                return Err(cx.err(
                    r.span(),
                    &key("role"),
                    format!("connection \"{}\" has no role \"{}\"", g.connection.get_ref(), r.get_ref()),
                    "define it under [connections.NAME.roles.ROLE] with user and password_env/password_file",
                ));
            }
        }
        let mut kinds = Vec::new();
        for k in &g.kinds {
            kinds.push(principal_kind(k.get_ref()).ok_or_else(|| {
                cx.err(
                    k.span(),
                    &key("kinds"),
                    format!("unknown kind \"{}\"", k.get_ref()),
                    "use human, agent or service-account",
                )
            })?);
        }
        out.push(Grant {
            connection: g.connection.into_inner(),
            principals: g.principals,
            groups: g.groups,
            kinds,
            issuer: g.issuer,
            role: g.role.map(Spanned::into_inner),
        });
    }
    Ok(out)
}
