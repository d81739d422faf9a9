//! Plugin manifests: `NAME.toml` beside `NAME.wasm`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::config::diag::{at_span, parse, TomlError};

/// Resource limits of one plugin instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory ceiling per instance, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: Spanned<u32>,
    /// Wall-clock deadline per call, milliseconds.
    #[serde(default = "default_timeout")]
    pub call_timeout_ms: Spanned<u32>,
}

fn default_memory() -> Spanned<u32> {
    Spanned::new(0..0, 64)
}
fn default_timeout() -> Spanned<u32> {
    Spanned::new(0..0, 250)
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_mib: default_memory(), call_timeout_ms: default_timeout() }
    }
}

/// Capabilities the operator grants. Everything is denied unless listed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Where `write-output` lines go: `stdout`, `stderr` or `file:PATH`.
    pub output: Option<Spanned<String>>,
    /// URLs `http-post` may reach (exact, or a prefix ending in `*`).
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
}

/// Where a plugin's `write-output` lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// Standard output of the gateway.
    Stdout,
    /// Standard error of the gateway.
    Stderr,
    /// A file (relative paths resolve against the state directory).
    File(std::path::PathBuf),
}

/// What the author of a guard promises about its verdicts (`[guard]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardOptions {
    /// `request` (the default): every request is asked about. `structure`: the
    /// verdict is a function of the session, the plugin's config and the
    /// request's parsed structure alone, never of its text or the values of its
    /// constants, so the host may reuse an `allow` for requests of the same structure.
    pub verdicts: Option<Spanned<String>>,
}

/// What the author of a masker promises about its text masking (`[masker]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskerOptions {
    /// `call` (the default): every text is masked by a call. `pure`:
    /// `mask-text`'s result is a function of the session, the plugin's config
    /// and the text alone (no clock, no randomness, no state kept between
    /// calls), so the host may reuse it for an equal text in the session.
    pub text: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "star")]
    connections: Vec<String>,
    #[serde(default = "all_protocols")]
    protocols: Vec<Spanned<String>>,
    #[serde(default = "default_order")]
    order: i32,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    guard: GuardOptions,
    #[serde(default)]
    masker: MaskerOptions,
    #[serde(default)]
    config: toml::Table,
}

fn star() -> Vec<String> {
    vec!["*".into()]
}
fn all_protocols() -> Vec<Spanned<String>> {
    ["postgres", "ssh", "http"].iter().map(|p| Spanned::new(0..0, p.to_string())).collect()
}
fn default_order() -> i32 {
    100
}
fn yes() -> bool {
    true
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Plugin name (must match the file stem).
    pub name: String,
    /// Plugin version (semver).
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// Connections it applies to; `*` = all.
    pub connections: Vec<String>,
    /// Protocols it applies to.
    pub protocols: Vec<String>,
    /// Lower runs first.
    pub order: i32,
    /// Disabled plugins are loaded and checked but never called.
    pub enabled: bool,
    /// The roles it is used for (`guard`, `masker`, `recorder`); empty = every role it exports.
    pub roles: Vec<String>,
    /// Memory ceiling, bytes.
    pub memory_bytes: usize,
    /// Deadline per call.
    pub call_timeout: std::time::Duration,
    /// Granted output, if any.
    pub output: Option<OutputTarget>,
    /// URLs granted to `http-post` (exact, or a prefix ending in `*`).
    pub http: Vec<String>,
    /// `[guard] verdicts = "structure"`: the guard's `allow` holds for every
    /// request of the same parsed structure in a session (see [`GuardOptions`]).
    pub verdicts_by_structure: bool,
    /// `[masker] text = "pure"`: the masker's `mask-text` result may be
    /// reused for an equal text in a session (see [`MaskerOptions`]).
    pub text_pure: bool,
    /// `[config]` as JSON.
    pub config_json: String,
    /// `[config]` values for `config-get` (strings raw, others JSON).
    pub config_values: BTreeMap<String, String>,
    /// SHA-256 of the manifest text: an unchanged manifest is not reloaded.
    pub digest: String,
}

impl Manifest {
    /// Does this plugin apply to `connection` over `protocol`?
    pub fn applies_to(&self, connection: &str, protocol: &str) -> bool {
        self.serves(protocol) && self.connections.iter().any(|c| c == "*" || c == connection)
    }

    /// Enabled for `protocol`, on whichever connections.
    pub fn serves(&self, protocol: &str) -> bool {
        self.enabled && self.protocols.iter().any(|p| p == protocol)
    }

    /// Named for every connection (`"*"`): gateway-wide logs go only to these.
    pub fn applies_to_all_connections(&self) -> bool {
        self.enabled && self.connections.iter().any(|c| c == "*")
    }

    /// Whether `url` is granted to `http-post`. A prefix grant must end at a
    /// path boundary of the URL it grants (`https://h/a/*` covers `https://h/a/b`).
    pub fn http_granted(&self, url: &str) -> bool {
        http_granted(&self.http, url)
    }

    /// Whether the operator lets it act as `role` (`guard`, `masker`, `recorder`).
    pub fn plays(&self, role: &str) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| r == role)
    }

    /// Read and validate `path`; `expected_name` is the `.wasm` file's stem.
    pub fn load(path: &Path, expected_name: &str) -> Result<Manifest, TomlError> {
        let src = std::fs::read_to_string(path).map_err(|e| TomlError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read manifest: {e}"),
            fix: Some(format!("every plugin needs a manifest: create {} beside the .wasm", path.display())),
        })?;
        Self::parse(path, &src, expected_name)
    }

    /// Validate manifest text.
    pub fn parse(path: &Path, src: &str, expected_name: &str) -> Result<Manifest, TomlError> {
        let raw: RawManifest = parse(path, src)?;
        let err = |span: std::ops::Range<usize>, key: &str, msg: String, fix: &str| {
            at_span(path, src, Some(span), key, msg, Some(fix))
        };
        if raw.name.get_ref() != expected_name {
            return Err(err(
                raw.name.span(),
                "name",
                format!("manifest says \"{}\" but the file is {expected_name}.wasm", raw.name.get_ref()),
                "make `name` equal the .wasm file's name (without .wasm)",
            ));
        }
        if !valid_version(raw.version.get_ref()) {
            return Err(err(
                raw.version.span(),
                "version",
                format!("\"{}\" is not a version like 1.2.3", raw.version.get_ref()),
                "use semantic versioning: MAJOR.MINOR.PATCH",
            ));
        }
        for p in &raw.protocols {
            if !["postgres", "ssh", "http"].contains(&p.get_ref().as_str()) {
                return Err(err(
                    p.span(),
                    "protocols",
                    format!("unknown protocol \"{}\"", p.get_ref()),
                    "use postgres, ssh or http",
                ));
            }
        }
        for r in &raw.roles {
            if !["guard", "masker", "recorder"].contains(&r.get_ref().as_str()) {
                return Err(err(
                    r.span(),
                    "roles",
                    format!("unknown role \"{}\"", r.get_ref()),
                    "use guard, masker or recorder",
                ));
            }
        }
        let mem = *raw.limits.memory_mib.get_ref();
        if !(1..=4096).contains(&mem) {
            return Err(err(
                raw.limits.memory_mib.span(),
                "limits.memory_mib",
                format!("{mem} is out of range"),
                "use 1..=4096",
            ));
        }
        let timeout = *raw.limits.call_timeout_ms.get_ref();
        if !(1..=60_000).contains(&timeout) {
            return Err(err(
                raw.limits.call_timeout_ms.span(),
                "limits.call_timeout_ms",
                format!("{timeout} is out of range"),
                "use 1..=60000 (milliseconds)",
            ));
        }
        let output = match &raw.capabilities.output {
            None => None,
            Some(o) => Some(match o.get_ref().as_str() {
                "stdout" => OutputTarget::Stdout,
                "stderr" => OutputTarget::Stderr,
                s if s.starts_with("file:") && s.len() > 5 => OutputTarget::File(s[5..].into()),
                s => {
                    return Err(err(
                        o.span(),
                        "capabilities.output",
                        format!("\"{s}\" is not an output"),
                        "use \"stdout\", \"stderr\" or \"file:/path/to/file\"",
                    ))
                }
            }),
        };
        for u in &raw.capabilities.http {
            if let Err(why) = http_grant_ok(u.get_ref()) {
                return Err(err(
                    u.span(),
                    "capabilities.http",
                    format!("\"{}\" {why}", u.get_ref()),
                    "grant https://HOST/PATH (or http:// to 127.0.0.1, ::1 or localhost), optionally ending in *",
                ));
            }
        }
        // An author's promise: the default word (false), the promising one (true), or an error.
        let promise =
            |value: &Option<Spanned<String>>, key: &str, [off, on]: [&str; 2], what: &str, fix: &str| match value {
                None => Ok(false),
                Some(v) if v.get_ref() == off => Ok(false),
                Some(v) if v.get_ref() == on => Ok(true),
                Some(v) => Err(err(v.span(), key, format!("\"{}\" is not {what}", v.get_ref()), fix)),
            };
        let verdicts_by_structure = promise(
            &raw.guard.verdicts,
            "guard.verdicts",
            ["request", "structure"],
            "a verdict scope",
            "use \"request\" (every request is asked about; the default) or \"structure\" (the verdict never depends on the request's text or constant values)",
        )?;
        let text_pure = promise(
            &raw.masker.text,
            "masker.text",
            ["call", "pure"],
            "a text-masking promise",
            "use \"call\" (every text is masked by a call; the default) or \"pure\" (the masked text depends only on the session, the config and the text)",
        )?;
        let config_json = serde_json::to_string(&raw.config).unwrap_or_else(|_| "{}".into());
        let config_values = raw
            .config
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => serde_json::to_string(other).unwrap_or_default(),
                };
                (k.clone(), s)
            })
            .collect();
        Ok(Manifest {
            name: raw.name.into_inner(),
            version: raw.version.into_inner(),
            description: raw.description,
            connections: raw.connections,
            protocols: raw.protocols.into_iter().map(Spanned::into_inner).collect(),
            order: raw.order,
            enabled: raw.enabled,
            roles: raw.roles.into_iter().map(Spanned::into_inner).collect(),
            memory_bytes: mem as usize * 1024 * 1024,
            call_timeout: std::time::Duration::from_millis(timeout as u64),
            output,
            http: raw.capabilities.http.into_iter().map(Spanned::into_inner).collect(),
            verdicts_by_structure,
            text_pure,
            config_json,
            config_values,
            digest: {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(src.as_bytes()))
            },
        })
    }
}

fn valid_version(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(src: &str) -> Result<Manifest, TomlError> {
        Manifest::parse(Path::new("plugins/x.toml"), src, "x")
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse_str("name = \"x\"\nversion = \"1.0.0\"\n").unwrap();
        assert_eq!(m.memory_bytes, 64 << 20);
        assert!(m.applies_to("anything", "postgres"));
        assert_eq!(m.config_json, "{}");
    }

    #[test]
    fn name_mismatch_names_key_and_fix() {
        let e = parse_str("name = \"y\"\nversion = \"1.0.0\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (1, "name"));
        assert!(e.to_string().contains("x.wasm"));
    }

    #[test]
    fn limits_out_of_range_point_at_the_line() {
        let e = parse_str("name = \"x\"\nversion = \"1.0.0\"\n[limits]\nmemory_mib = 0\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "limits.memory_mib"));
    }

    #[test]
    fn guard_verdict_scope_is_checked() {
        assert!(!parse_str("name = \"x\"\nversion = \"1.0.0\"\n").unwrap().verdicts_by_structure);
        let m = parse_str("name = \"x\"\nversion = \"1.0.0\"\n[guard]\nverdicts = \"structure\"\n").unwrap();
        assert!(m.verdicts_by_structure);
        let e = parse_str("name = \"x\"\nversion = \"1.0.0\"\n[guard]\nverdicts = \"text\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "guard.verdicts"));
        assert!(!parse_str("name = \"x\"\nversion = \"1.0.0\"\n").unwrap().text_pure);
        assert!(parse_str("name = \"x\"\nversion = \"1.0.0\"\n[masker]\ntext = \"pure\"\n").unwrap().text_pure);
        let e = parse_str("name = \"x\"\nversion = \"1.0.0\"\n\n[masker]\ntext = \"cached\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (5, "masker.text"));
    }

    #[test]
    fn bad_output_capability_is_refused() {
        let e = parse_str("name = \"x\"\nversion = \"1.0.0\"\n[capabilities]\noutput = \"tcp:1.2.3.4\"\n").unwrap_err();
        assert_eq!(e.key, "capabilities.output");
    }

    #[test]
    fn config_values_are_strings_or_json() {
        let m = parse_str("name = \"x\"\nversion = \"1.0.0\"\n[config]\nmode = \"a\"\nn = 3\nl = [\"p\"]\n").unwrap();
        assert_eq!(m.config_values["mode"], "a");
        assert_eq!(m.config_values["n"], "3");
        assert_eq!(m.config_values["l"], "[\"p\"]");
    }
}

/// A URL may be granted (or posted to) when it is https, or http to loopback,
/// with a host, no credentials and no fragment.
pub fn http_grant_ok(url: &str) -> Result<(), &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("is not a URL")?;
    let authority = rest.split(['/', '?', '*']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("has no host");
    }
    if authority.contains('@') || url.contains('#') {
        return Err("must not hold credentials or a fragment");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    match scheme {
        "https" => Ok(()),
        "http" if ["127.0.0.1", "::1", "localhost"].contains(&host) => Ok(()),
        "http" => Err("is plain http to a host that is not loopback"),
        _ => Err("is not an http(s) URL"),
    }
}

/// Whether `url` is covered by one of `grants` (exact, or a prefix ending in `*`).
pub fn http_granted(grants: &[String], url: &str) -> bool {
    http_grant_ok(url).is_ok()
        && grants.iter().any(|g| match g.strip_suffix('*') {
            Some(prefix) => url.starts_with(prefix),
            None => g == url,
        })
}

#[cfg(test)]
mod http_tests {
    use super::*;

    #[test]
    fn http_grants_are_exact_or_prefixes_and_plain_http_is_loopback_only() {
        let g = vec!["https://siem.example.com/ingest/*".to_string(), "http://127.0.0.1:9/hook".to_string()];
        assert!(http_granted(&g, "https://siem.example.com/ingest/a"));
        assert!(http_granted(&g, "http://127.0.0.1:9/hook"));
        assert!(!http_granted(&g, "http://127.0.0.1:9/hook2"));
        assert!(!http_granted(&g, "https://siem.example.com.evil.org/ingest/a"));
        assert!(!http_granted(&g, "https://siem.example.com/other"));
        assert!(!http_granted(&g, "https://siem.example.com/ingest/a#x"));
        assert!(http_grant_ok("http://10.0.0.1/x").is_err());
        assert!(http_grant_ok("http://[::1]:8080/x").is_ok());
        assert!(http_grant_ok("https://user:pw@h/x").is_err());
        assert!(http_grant_ok("ftp://h/x").is_err());
    }
}
