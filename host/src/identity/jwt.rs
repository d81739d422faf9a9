//! Compact JWS parsing and registered-claim checks (RFC 7515, RFC 7519).
//!
//! Pure functions, no I/O: [`super::oidc`] fetches keys and calls these.
//! Nothing here ever formats the token itself into an error.

use base64::Engine as _;
use serde_json::{Map, Value};

/// Largest token accepted (a PostgreSQL password message carries it).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. Messages name the problem, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not on the issuer's allow-list (always true of `none` and HS*).
    #[error("token algorithm \"{0}\" is not accepted")]
    Algorithm(String),
    /// A `crit` header names extensions this verifier does not implement.
    #[error("token has critical header extensions Wardgate does not implement")]
    Critical,
    /// No key of the issuer has the token's `kid` (even after refreshing the JWKS).
    #[error("token signed with unknown key id \"{0}\"")]
    UnknownKey(String),
    /// The signature does not verify with the issuer's key.
    #[error("token signature is invalid")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("token issuer \"{0}\" is not configured")]
    Issuer(String),
    /// `aud` names none of the accepted audiences.
    #[error("token audience {0} is not accepted here")]
    Audience(String),
    /// `exp` is in the past (beyond the allowed clock skew).
    #[error("token expired {0} s ago")]
    Expired(u64),
    /// `nbf` (or `iat`) is in the future (beyond the allowed clock skew).
    #[error("token is not valid for another {0} s")]
    NotYetValid(u64),
    /// A required claim is absent or has the wrong type.
    #[error("token lacks a valid \"{0}\" claim")]
    Claim(&'static str),
}

impl JwtError {
    /// A short stable label for metrics and recordings.
    pub fn kind(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "token-malformed",
            JwtError::Algorithm(_) => "token-algorithm",
            JwtError::Critical => "token-critical-header",
            JwtError::UnknownKey(_) => "token-unknown-key",
            JwtError::BadSignature => "token-bad-signature",
            JwtError::Issuer(_) => "token-issuer",
            JwtError::Audience(_) => "token-audience",
            JwtError::Expired(_) => "token-expired",
            JwtError::NotYetValid(_) => "token-not-yet-valid",
            JwtError::Claim(_) => "token-claim",
        }
    }
}

/// The parts of a compact JWS, decoded but not yet verified.
#[derive(Debug)]
pub struct Jws<'a> {
    /// `alg` header.
    pub alg: String,
    /// `kid` header.
    pub kid: Option<String>,
    /// `typ` header.
    pub typ: Option<String>,
    /// `BASE64URL(header) . BASE64URL(payload)`, the signed bytes.
    pub signing_input: &'a [u8],
    /// Decoded signature.
    pub signature: Vec<u8>,
    /// Decoded claims (unverified until the signature is checked).
    pub claims: Map<String, Value>,
}

/// Does this credential look like a JWT (three dot-separated parts, JSON header)?
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|&b| b == b'.').count() == 2
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed("bad base64url"))
}

fn json_object(bytes: &[u8], what: &'static str) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(what)),
    }
}

/// Split and decode a compact JWS. Checks shape only.
pub fn parse(token: &str) -> Result<Jws<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(JwtError::Malformed("empty header or payload"));
    }
    let header = json_object(&b64(h)?, "header is not a JSON object")?;
    let claims = json_object(&b64(p)?, "payload is not a JSON object")?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed("no alg header"))?.to_string();
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let text = |k: &str| header.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(Jws {
        alg,
        kid: text("kid"),
        typ: text("typ"),
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature: b64(s)?,
        claims,
    })
}

/// What the registered claims must satisfy.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    /// Exact `iss`.
    pub issuer: &'a str,
    /// At least one must appear in `aud`.
    pub audiences: &'a [String],
    /// Allowed clock skew, seconds.
    pub leeway_secs: u64,
    /// Current time, seconds since the epoch.
    pub now_secs: u64,
}

fn number(claims: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(key) {
        None => Ok(None),
        Some(v) => {
            v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| Some(f as u64)).ok_or(JwtError::Claim(key))
        }
    }
}

/// Check `iss`, `aud`, `exp`, `nbf`, `iat` and `sub` of verified claims.
pub fn check_claims(claims: &Map<String, Value>, rules: &ClaimRules<'_>) -> Result<(), JwtError> {
    let iss = claims.get("iss").and_then(Value::as_str).ok_or(JwtError::Claim("iss"))?;
    if iss != rules.issuer {
        return Err(JwtError::Issuer(iss.chars().take(200).collect()));
    }
    let aud: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(JwtError::Claim("aud")),
    };
    if !aud.iter().any(|a| rules.audiences.iter().any(|ok| ok == a)) {
        let shown: Vec<String> =
            aud.iter().take(5).map(|a| format!("\"{}\"", a.chars().take(100).collect::<String>())).collect();
        return Err(JwtError::Audience(shown.join(", ")));
    }
    let exp = number(claims, "exp")?.ok_or(JwtError::Claim("exp"))?;
    if rules.now_secs >= exp.saturating_add(rules.leeway_secs) {
        return Err(JwtError::Expired(rules.now_secs - exp));
    }
    for key in ["nbf", "iat"] {
        if let Some(t) = number(claims, key)? {
            if t > rules.now_secs.saturating_add(rules.leeway_secs) {
                return Err(JwtError::NotYetValid(t - rules.now_secs));
            }
        }
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(JwtError::Claim("sub")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn rules(now: u64) -> (Vec<String>, u64) {
        (vec!["urn:gateway".to_string()], now)
    }

    fn claims(extra: Value) -> Map<String, Value> {
        let mut base = json!({"iss": "https://idp", "aud": "urn:gateway", "sub": "a", "exp": 2000, "iat": 1000});
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        base.as_object().unwrap().clone()
    }

    #[test]
    fn parses_a_compact_jws_and_rejects_bad_shapes() {
        let t = format!("{}.{}.{}", enc(&json!({"alg": "ES256", "kid": "k1"})), enc(&json!({"sub": "x"})), "c2ln");
        let j = parse(&t).unwrap();
        assert_eq!((j.alg.as_str(), j.kid.as_deref()), ("ES256", Some("k1")));
        assert_eq!(j.signature, b"sig");
        assert!(t.starts_with(std::str::from_utf8(j.signing_input).unwrap()));
        assert!(looks_like_jwt(&t));
        for bad in ["", "a.b", "a.b.c.d", "eyJ.eyJ.x", &t[..t.len() / 2], &format!("{}..x", enc(&json!({"alg": "x"})))]
        {
            assert!(matches!(parse(bad), Err(JwtError::Malformed(_))), "{bad}");
        }
        let crit = format!("{}.{}.", enc(&json!({"alg": "ES256", "crit": ["b64"]})), enc(&json!({})));
        assert_eq!(parse(&crit).unwrap_err(), JwtError::Critical);
        let arr = format!("{}.{}.", enc(&json!(["alg"])), enc(&json!({})));
        assert!(matches!(parse(&arr), Err(JwtError::Malformed(_))));
        assert!(matches!(parse(&"a".repeat(20_000)), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn registered_claims_are_enforced_with_leeway() {
        let (aud, now) = rules(1500);
        let r = ClaimRules { issuer: "https://idp", audiences: &aud, leeway_secs: 30, now_secs: now };
        assert_eq!(check_claims(&claims(json!({})), &r), Ok(()));
        assert_eq!(check_claims(&claims(json!({"aud": ["x", "urn:gateway"]})), &r), Ok(()));
        assert_eq!(
            check_claims(&claims(json!({"iss": "https://evil"})), &r),
            Err(JwtError::Issuer("https://evil".into()))
        );
        assert!(matches!(check_claims(&claims(json!({"aud": "other"})), &r), Err(JwtError::Audience(_))));
        assert_eq!(check_claims(&claims(json!({"aud": 5})), &r), Err(JwtError::Claim("aud")));
        assert_eq!(check_claims(&claims(json!({"exp": 1400})), &r), Err(JwtError::Expired(100)));
        assert_eq!(check_claims(&claims(json!({"exp": 1480})), &r), Ok(()), "within leeway");
        assert_eq!(check_claims(&claims(json!({"nbf": 1600})), &r), Err(JwtError::NotYetValid(100)));
        assert_eq!(check_claims(&claims(json!({"iat": 1600})), &r), Err(JwtError::NotYetValid(100)));
        assert_eq!(check_claims(&claims(json!({"nbf": 1520})), &r), Ok(()), "within leeway");
        assert_eq!(check_claims(&claims(json!({"exp": "soon"})), &r), Err(JwtError::Claim("exp")));
        assert_eq!(check_claims(&claims(json!({"sub": ""})), &r), Err(JwtError::Claim("sub")));
        let mut no_exp = claims(json!({}));
        no_exp.remove("exp");
        assert_eq!(check_claims(&no_exp, &r), Err(JwtError::Claim("exp")));
    }
}
