//! The approvals half of the config: the gateway-wide `[approvals]` table,
//! per-connection `[connections.NAME.approvals]`, and the state store.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diag::TomlError;
use super::identity::{principal_kind, Ctx};
use super::SecretSource;
use crate::pipeline::types::PrincipalKind;

/// How a client waits for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// The query waits until approved, denied or expired.
    Wait,
    /// The query fails at once with the approval id; the same statement runs once approved.
    Defer,
    /// No approvals: a review verdict is refused.
    Off,
}

impl HoldMode {
    /// Config word.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldMode::Wait => "wait",
            HoldMode::Defer => "defer",
            HoldMode::Off => "off",
        }
    }
}

/// A connection's approval settings.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    /// wait | defer | off.
    pub mode: HoldMode,
    /// Longest a request may stay pending (a plugin may ask for less).
    pub timeout: Duration,
    /// Approvals needed.
    pub quorum: u64,
    /// Groups that may approve when the plugin names none.
    pub approver_groups: Vec<String>,
    /// 0: an approval runs the statement once; else as often as asked within this time.
    pub use_window: Duration,
    /// The requester must give a justification (`/* justification: … */` in the statement).
    pub require_justification: bool,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            mode: HoldMode::Off,
            timeout: Duration::from_secs(300),
            quorum: 1,
            approver_groups: Vec::new(),
            use_window: Duration::ZERO,
            require_justification: false,
        }
    }
}

/// Message format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Slack incoming-webhook body (`text` + `blocks`).
    Slack,
    /// The generic JSON event.
    Json,
}

/// A notification target.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Full URL (may be a secret, e.g. a Slack webhook).
    pub url: String,
    /// Safe to log: scheme and host only.
    pub display: String,
    /// Body format.
    pub format: WebhookFormat,
}

/// The gateway-wide `[approvals]` table.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// Members may decide any request, bypassing approver groups and quorum; loudly recorded.
    pub break_glass_groups: Vec<String>,
    /// Principal kinds that may decide (humans by default).
    pub approver_kinds: Vec<PrincipalKind>,
    /// Notification targets.
    pub webhooks: Vec<Webhook>,
    /// Base URL of the admin listener, for links in notifications.
    pub admin_url: String,
}

/// Where state lives.
#[derive(Debug, Clone)]
pub enum StateStoreConfig {
    /// `STATE_DIR/wardgate.db`.
    Sqlite,
    /// A URL (`sqlite://…` or `postgres://user@host/db`) and the password of the latter.
    Url {
        /// Without password.
        url: String,
        /// Its password.
        password: SecretSource,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    #[serde(default)]
    break_glass_groups: Vec<String>,
    approver_kinds: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
    public_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    #[serde(default = "slack")]
    format: Spanned<String>,
}

fn slack() -> Spanned<String> {
    Spanned::new(0..0, "slack".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnApprovals {
    mode: Spanned<String>,
    timeout_secs: Option<u64>,
    quorum: Option<u64>,
    #[serde(default)]
    approver_groups: Vec<String>,
    use_window_secs: Option<u64>,
    #[serde(default)]
    require_justification: bool,
}

pub(super) fn connection(
    cx: &Ctx<'_>,
    name: &str,
    raw: Option<RawConnApprovals>,
) -> Result<ApprovalSettings, TomlError> {
    let Some(a) = raw else { return Ok(ApprovalSettings::default()) };
    let key = |k: &str| format!("connections.{name}.approvals.{k}");
    let mode = match a.mode.get_ref().as_str() {
        "wait" => HoldMode::Wait,
        "defer" => HoldMode::Defer,
        "off" => HoldMode::Off,
        other => {
            return Err(cx.err(
                a.mode.span(),
                &key("mode"),
                format!("unknown mode \"{other}\""),
                "use wait, defer or off",
            ))
        }
    };
    if mode != HoldMode::Off && a.approver_groups.is_empty() {
        return Err(cx.err(
            a.mode.span(),
            &key("approver_groups"),
            "approvals are on but no approver group is named: requests no plugin routes to a group could never be approved".into(),
            "add approver_groups = [\"dba\"]",
        ));
    }
    let quorum = a.quorum.unwrap_or(1);
    if quorum == 0 || quorum > 10 {
        return Err(cx.err(a.mode.span(), &key("quorum"), format!("quorum {quorum} is out of range"), "use 1 to 10"));
    }
    Ok(ApprovalSettings {
        mode,
        timeout: Duration::from_secs(a.timeout_secs.unwrap_or(300).clamp(1, 7 * 86_400)),
        quorum,
        approver_groups: a.approver_groups,
        use_window: Duration::from_secs(a.use_window_secs.unwrap_or(0)),
        require_justification: a.require_justification,
    })
}

pub(super) fn gateway(cx: &Ctx<'_>, raw: RawApprovals, admin_url: String) -> Result<ApprovalsConfig, TomlError> {
    let approver_kinds = match &raw.approver_kinds {
        None => vec![PrincipalKind::Human],
        Some(ks) => {
            let mut out = Vec::new();
            for k in ks {
                out.push(principal_kind(k.get_ref()).ok_or_else(|| {
                    cx.err(
                        k.span(),
                        "approvals.approver_kinds",
                        format!("unknown kind \"{}\"", k.get_ref()),
                        "use human, agent or service-account",
                    )
                })?);
            }
            out
        }
    };
    let mut webhooks = Vec::new();
    for (i, w) in raw.webhooks.into_iter().enumerate() {
        let key = |k: &str| format!("approvals.webhooks[{i}].{k}");
        let (url, span) = match (&w.url, &w.url_env) {
            (Some(u), None) => (u.get_ref().clone(), u.span()),
            (None, Some(v)) => (
                std::env::var(v.get_ref()).map_err(|_| {
                    cx.err(
                        v.span(),
                        &key("url_env"),
                        format!("environment variable {} is not set", v.get_ref()),
                        "export it before starting the gateway",
                    )
                })?,
                v.span(),
            ),
            _ => {
                return Err(cx.err(
                    w.format.span(),
                    &key("url"),
                    "give url or url_env (one of them)".into(),
                    "url_env = \"SLACK_WEBHOOK_URL\" keeps the secret out of the file",
                ))
            }
        };
        if !crate::identity::oidc::secure_url(&url) {
            return Err(cx.err(
                span,
                &key("url"),
                "webhook URL is neither https nor loopback".into(),
                "use an https:// URL",
            ));
        }
        let format = match w.format.get_ref().as_str() {
            "slack" => WebhookFormat::Slack,
            "json" => WebhookFormat::Json,
            other => {
                return Err(cx.err(
                    w.format.span(),
                    &key("format"),
                    format!("unknown format \"{other}\""),
                    "use slack or json",
                ))
            }
        };
        let display = url.split('/').take(3).collect::<Vec<_>>().join("/") + "/…";
        webhooks.push(Webhook { url, display, format });
    }
    Ok(ApprovalsConfig {
        break_glass_groups: raw.break_glass_groups,
        approver_kinds,
        webhooks,
        admin_url: raw.public_url.unwrap_or(admin_url).trim_end_matches('/').to_string(),
    })
}
