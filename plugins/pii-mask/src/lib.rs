//! # pii-mask
//!
//! A Wardgate masker that finds personal data and secrets in result rows and
//! masks them: e-mail addresses, payment card numbers (Luhn-checked), US SSNs,
//! phone numbers, IBANs (mod-97), AWS access keys, PEM private keys, JWTs and
//! `password=`/`secret=`/bearer values. Strategies per entity (`redact`,
//! `partial`, `last4`, `hash`, `keep`) and per column (`table.column` rules)
//! come from the manifest's `[config]` table; see `pii-mask.toml`.

pub mod detect;
pub mod policy;

use std::sync::OnceLock;

use policy::Policy;
use wardgate_sdk::host::LogLevel;
use wardgate_sdk::types::{Column, MaskedBatch, RowBatch};

/// The policy, built once per instance from the manifest config. A broken
/// config makes every call fail, so the host fails closed.
fn policy() -> &'static Result<Policy, String> {
    static POLICY: OnceLock<Result<Policy, String>> = OnceLock::new();
    POLICY.get_or_init(|| {
        let p = Policy::from_json(&wardgate_sdk::config_json());
        if let Err(e) = &p {
            wardgate_sdk::log(LogLevel::Error, e);
        }
        p
    })
}

/// The exported masker.
pub struct PiiMask;

impl exports::wardgate::plugin::masker::Guest for PiiMask {
    fn wants_columns(columns: Vec<Column>) -> Vec<bool> {
        match policy() {
            Ok(p) => columns.iter().map(|c| p.wants(c)).collect(),
            // A broken config fails every mask call: let the host make them.
            Err(_) => vec![true; columns.len()],
        }
    }

    fn mask_rows(batch: RowBatch) -> Result<MaskedBatch, String> {
        policy().as_ref().map_err(Clone::clone)?.mask_batch(&batch.columns, &batch.cells)
    }

    fn mask_text(text: String) -> Result<String, String> {
        Ok(policy().as_ref().map_err(Clone::clone)?.mask_text(&text))
    }
}

wardgate_sdk::masker_plugin!(PiiMask);
