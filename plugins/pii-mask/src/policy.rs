//! Masking policy: which strategy applies to which entity or column, and the
//! batch loop that applies it. Pure Rust; the same code runs natively in tests
//! and benchmarks and inside the sandbox.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::detect::{Detectors, Entity, Span};
use wardgate_sdk::rows::{PackedBuilder, PackedRows};
use wardgate_sdk::types::{CellFormat, Column, Finding, MaskedBatch, PackedCells};

/// How many entities there are; column rules are counted after them.
const ENTITIES: usize = Entity::ALL.len();

/// How a value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Replace with `[REDACTED:<entity>]`.
    Redact,
    /// Keep a little shape: `j***@example.com`, `***-**-6789`, `**** 1111`.
    Partial,
    /// Keep the last four characters (`************1111`).
    Last4,
    /// Replace with a keyed hash (`hash:1f2e...`), stable across rows so joins
    /// and counts still work without revealing the value.
    Hash,
    /// Replace the whole cell with NULL (column rules only).
    Null,
    /// Leave as is.
    Keep,
}

/// The manifest's `[config]` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Strategy per entity name; entities not listed use `default`.
    #[serde(default)]
    pub entities: BTreeMap<String, Strategy>,
    /// Strategy for entities not in `entities` (default `redact`).
    pub default: Option<Strategy>,
    /// Column rules: `table.column`, `schema.table.column` or `*.column` -> strategy.
    /// A column rule masks the whole cell whatever its content.
    #[serde(default)]
    pub columns: BTreeMap<String, Strategy>,
    /// Detectors to turn off, by entity name.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Treat bare 9-digit numbers as SSNs (default false: they are usually ids).
    #[serde(default)]
    pub ssn_plain_digits: bool,
    /// Key for the `hash` strategy. Set it: without a key, hashes of low-entropy
    /// values (SSNs, phone numbers) can be reversed by brute force.
    pub hash_key: Option<String>,
}

/// A ready-to-use policy.
#[derive(Debug, Clone)]
pub struct Policy {
    detectors: Detectors,
    entity_strategy: [Strategy; ENTITIES],
    columns: HashMap<String, Strategy>,
    hash_key: Vec<u8>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_config(ConfigFile::default()).expect("default config is valid")
    }
}

impl Policy {
    /// Build from a JSON `[config]` table; errors name the bad key.
    pub fn from_json(json: &str) -> Result<Policy, String> {
        let cfg: ConfigFile = serde_json::from_str(json).map_err(|e| format!("pii-mask config: {e}"))?;
        Policy::from_config(cfg)
    }

    /// Build from a parsed config.
    pub fn from_config(cfg: ConfigFile) -> Result<Policy, String> {
        let default = cfg.default.unwrap_or(Strategy::Redact);
        let mut entity_strategy = [default; ENTITIES];
        // Sensible defaults when not configured: keep shape where it helps people.
        for (e, s) in [
            (Entity::Email, Strategy::Partial),
            (Entity::Card, Strategy::Last4),
            (Entity::Ssn, Strategy::Partial),
            (Entity::Phone, Strategy::Partial),
        ] {
            if cfg.default.is_none() {
                entity_strategy[idx(e)] = s;
            }
        }
        for (name, s) in &cfg.entities {
            let e = Entity::from_name(name).ok_or_else(|| unknown_entity("entities", name))?;
            if *s == Strategy::Null {
                return Err(format!("pii-mask config: entities.{name} = \"null\" is only valid for column rules"));
            }
            entity_strategy[idx(e)] = *s;
        }
        let mut detectors = Detectors { ssn_plain_digits: cfg.ssn_plain_digits, ..Default::default() };
        for name in &cfg.disable {
            let e = Entity::from_name(name).ok_or_else(|| unknown_entity("disable", name))?;
            detectors.set(e, false);
        }
        let mut columns = HashMap::new();
        for (k, s) in cfg.columns {
            if k.split('.').count() < 2 || k.split('.').any(str::is_empty) {
                return Err(format!(
                    "pii-mask config: columns key \"{k}\" must be \"table.column\", \"schema.table.column\" or \"*.column\""
                ));
            }
            columns.insert(k, s);
        }
        Ok(Policy { detectors, entity_strategy, columns, hash_key: cfg.hash_key.unwrap_or_default().into_bytes() })
    }

    /// The column rule for `col`, if any.
    pub fn column_rule(&self, col: &Column) -> Option<Strategy> {
        if self.columns.is_empty() {
            return None;
        }
        if let Some(table) = &col.table {
            if let Some(s) = self.columns.get(&format!("{table}.{}", col.name)) {
                return Some(*s);
            }
            if let Some(bare) = table.split_once('.').map(|(_, t)| t) {
                if let Some(s) = self.columns.get(&format!("{bare}.{}", col.name)) {
                    return Some(*s);
                }
            }
        }
        self.columns.get(&format!("*.{}", col.name)).copied()
    }

    /// Whether this policy reads `col` at all: a column rule names it, or its
    /// values could hold an entity. Booleans, integers of up to ten digits
    /// (cards need 13 digits, phones separators, SSNs dashes — unless bare
    /// nine-digit SSNs are on) and UUIDs cannot, so their rows skip the
    /// sandbox.
    pub fn wants(&self, col: &Column) -> bool {
        const BOOL: u32 = 16;
        const INT2: u32 = 21;
        const INT4: u32 = 23;
        const OID: u32 = 26;
        const UUID: u32 = 2950;
        const UUID_ARRAY: u32 = 2951;
        let cannot_hold = match col.type_oid {
            // A UUID is 32 random hex digits: no entity of ours.
            BOOL | INT2 | UUID | UUID_ARRAY => true,
            INT4 | OID => !self.detectors.ssn_plain_digits,
            _ => false,
        };
        !cannot_hold || self.column_rule(col).is_some()
    }

    /// Mask a packed batch. Returns the masked cells and per-entity counts.
    pub fn mask_batch(&self, columns: &[Column], cells: &PackedCells) -> Result<MaskedBatch, String> {
        let rows = PackedRows::new(cells, columns.len()).map_err(|e| format!("pii-mask: bad batch: {e}"))?;
        let rules: Vec<Option<Strategy>> = columns.iter().map(|c| self.column_rule(c)).collect();
        let opaque: Vec<bool> = columns.iter().map(|c| c.format == CellFormat::BinaryOpaque).collect();
        let mut out = PackedBuilder::with_capacity(cells.data.len() + cells.data.len() / 8, cells.lengths.len());
        // One per entity, then column rules.
        let mut counts = [0u32; ENTITIES + 1];
        let mut spans: Vec<Span> = Vec::new();
        let mut scratch = String::new();
        for row in rows.iter() {
            for (c, cell) in row.enumerate() {
                let Some(bytes) = cell else {
                    out.push_null();
                    continue;
                };
                if let Some(rule) = rules[c] {
                    counts[ENTITIES] += (rule != Strategy::Keep) as u32;
                    if opaque[c] && rule != Strategy::Keep {
                        out.push_null(); // a typed binary value cannot carry a mask
                        continue;
                    }
                    match rule {
                        Strategy::Null => out.push_null(),
                        Strategy::Keep => out.push(bytes),
                        s => {
                            scratch.clear();
                            let text = String::from_utf8_lossy(bytes);
                            apply(s, None, &text, &self.hash_key, &mut scratch);
                            out.push(scratch.as_bytes());
                        }
                    }
                    continue;
                }
                let text = match std::str::from_utf8(bytes) {
                    Ok(text) => std::borrow::Cow::Borrowed(text),
                    // A binary value of another type (a record, an array of
                    // some other type) holds its text fields as UTF-8 between
                    // length bytes: read what text there is; a finding makes
                    // it NULL below, so the lossy reading is never written.
                    Err(_) if opaque[c] => String::from_utf8_lossy(bytes),
                    Err(_) => {
                        out.push(bytes); // not text: detectors cannot read it
                        continue;
                    }
                };
                self.detectors.scan(&text, &mut spans);
                if spans.is_empty() {
                    out.push(bytes);
                    continue;
                }
                if opaque[c] {
                    // A number in binary format that looks like PII: drop it.
                    counts[idx(spans[0].entity)] += 1;
                    out.push_null();
                    continue;
                }
                scratch.clear();
                let mut last = 0;
                for s in &spans {
                    let strategy = self.entity_strategy[idx(s.entity)];
                    scratch.push_str(&text[last..s.start]);
                    if strategy == Strategy::Keep {
                        scratch.push_str(&text[s.start..s.end]);
                    } else {
                        counts[idx(s.entity)] += 1;
                        apply(strategy, Some(s.entity), &text[s.start..s.end], &self.hash_key, &mut scratch);
                    }
                    last = s.end;
                }
                scratch.push_str(&text[last..]);
                out.push(scratch.as_bytes());
            }
        }
        let mut findings = Vec::new();
        for (i, e) in Entity::ALL.iter().enumerate() {
            if counts[i] > 0 {
                findings.push(Finding { entity: e.name().to_string(), count: counts[i] });
            }
        }
        if counts[ENTITIES] > 0 {
            findings.push(Finding { entity: "column-rule".into(), count: counts[ENTITIES] });
        }
        Ok(MaskedBatch { cells: out.finish(), findings })
    }

    /// Mask free text with the content detectors.
    pub fn mask_text(&self, text: &str) -> String {
        let mut spans = Vec::new();
        self.detectors.scan(text, &mut spans);
        if spans.is_empty() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for s in &spans {
            out.push_str(&text[last..s.start]);
            let strategy = self.entity_strategy[idx(s.entity)];
            if strategy == Strategy::Keep {
                out.push_str(&text[s.start..s.end]);
            } else {
                apply(strategy, Some(s.entity), &text[s.start..s.end], &self.hash_key, &mut out);
            }
            last = s.end;
        }
        out.push_str(&text[last..]);
        out
    }
}

fn idx(e: Entity) -> usize {
    Entity::ALL.iter().position(|x| *x == e).unwrap_or(0)
}

fn unknown_entity(key: &str, name: &str) -> String {
    let known: Vec<&str> = Entity::ALL.iter().map(|e| e.name()).collect();
    format!("pii-mask config: {key}: unknown entity \"{name}\" (known: {})", known.join(", "))
}

/// Append the masked form of `value` to `out`.
fn apply(strategy: Strategy, entity: Option<Entity>, value: &str, key: &[u8], out: &mut String) {
    match strategy {
        Strategy::Keep => out.push_str(value),
        Strategy::Null | Strategy::Redact => {
            out.push_str("[REDACTED");
            if let Some(e) = entity {
                out.push(':');
                out.push_str(e.name());
            }
            out.push(']');
        }
        Strategy::Last4 => last4(value, out),
        Strategy::Partial => match entity {
            Some(Entity::Email) => {
                let (local, domain) = value.split_once('@').unwrap_or((value, ""));
                out.push_str(local.chars().next().map(|c| c.to_string()).unwrap_or_default().as_str());
                out.push_str("***@");
                out.push_str(domain);
            }
            Some(Entity::Ssn) => {
                out.push_str("***-**-");
                let digits: Vec<char> = value.chars().filter(|c| c.is_ascii_digit()).collect();
                out.extend(&digits[digits.len().saturating_sub(4)..]);
            }
            // A column rule has no entity: keep the last four, like a card.
            None | Some(Entity::Card) | Some(Entity::Phone) | Some(Entity::Iban) => last4(value, out),
            Some(_) => {
                out.push_str("[REDACTED");
                if let Some(e) = entity {
                    out.push(':');
                    out.push_str(e.name());
                }
                out.push(']');
            }
        },
        Strategy::Hash => {
            let mut h = Sha256::new();
            h.update((key.len() as u64).to_le_bytes());
            h.update(key);
            h.update(value.as_bytes());
            let digest = h.finalize();
            out.push_str("hash:");
            for b in &digest[..8] {
                out.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
                out.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
            }
        }
    }
}

/// Mask every alphanumeric but the last four; keep separators so the shape stays.
fn last4(value: &str, out: &mut String) {
    let total = value.chars().filter(|c| c.is_ascii_alphanumeric()).count();
    let mut seen = 0;
    for c in value.chars() {
        if c.is_ascii_alphanumeric() {
            seen += 1;
            out.push(if seen + 4 > total { c } else { '*' });
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardgate_sdk::testkit::{pack, text_columns, unpack};

    fn mask(policy: &Policy, cols: &[&str], rows: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
        let columns = text_columns(cols);
        let out = policy.mask_batch(&columns, &pack(rows)).unwrap();
        unpack(&out.cells, cols.len())
    }

    #[test]
    fn integer_and_boolean_columns_are_skipped_unless_a_rule_or_plain_ssns_need_them() {
        let col = |name: &str, type_oid: u32| Column {
            name: name.into(),
            type_oid,
            table: Some("public.accounts".into()),
            format: CellFormat::Text,
        };
        let p = Policy::default();
        for oid in [16, 21, 23, 26, 2950, 2951] {
            assert!(!p.wants(&col("n", oid)), "type {oid}");
        }
        // int8 holds 19 digits (a card number); text, numeric and unknown types anything.
        for oid in [20, 25, 1043, 1700, 0] {
            assert!(p.wants(&col("n", oid)), "type {oid}");
        }
        let ruled = Policy::from_json(r#"{"columns": {"accounts.pin": "null"}}"#).unwrap();
        assert!(ruled.wants(&col("pin", 23)));
        assert!(!ruled.wants(&col("balance", 23)));
        let plain = Policy::from_json(r#"{"ssn_plain_digits": true}"#).unwrap();
        assert!(plain.wants(&col("n", 23)), "a bare nine-digit SSN fits in an int4");
        assert!(!plain.wants(&col("n", 21)));
        // What the host would skip really is left alone by mask_batch.
        let ints = [col("a", 23), col("b", 21), col("c", 16)];
        let cells = pack(&[&[Some("2147483647"), Some("-32768"), Some("t")], &[Some("123456789"), None, Some("f")]]);
        assert_eq!(p.mask_batch(&ints, &cells).unwrap().cells, cells);
    }

    #[test]
    fn default_policy_masks_content_and_keeps_shape() {
        let p = Policy::default();
        let got = mask(
            &p,
            &["id", "email", "card", "note"],
            &[&[Some("1"), Some("jane@example.com"), Some("4111 1111 1111 1111"), None]],
        );
        assert_eq!(
            got,
            vec![vec![Some("1".into()), Some("j***@example.com".into()), Some("**** **** **** 1111".into()), None]]
        );
    }

    #[test]
    fn column_rules_mask_whatever_the_content() {
        let p = Policy::from_json(r#"{"columns":{"customers.ssn":"redact","*.notes":"null"}}"#).unwrap();
        let mut cols = text_columns(&["ssn", "notes", "name"]);
        cols[0].table = Some("public.customers".into());
        let out = p.mask_batch(&cols, &pack(&[&[Some("123456789"), Some("hi"), Some("Ann")]])).unwrap();
        assert_eq!(unpack(&out.cells, 3), vec![vec![Some("[REDACTED]".into()), None, Some("Ann".into())]]);
        assert_eq!(out.findings[0].entity, "column-rule");
        assert_eq!(out.findings[0].count, 2);
    }

    #[test]
    fn hash_is_stable_and_keyed() {
        let a = Policy::from_json(r#"{"entities":{"email":"hash"},"hash_key":"k1"}"#).unwrap();
        let b = Policy::from_json(r#"{"entities":{"email":"hash"},"hash_key":"k2"}"#).unwrap();
        let x1 = a.mask_text("a@b.io");
        assert_eq!(x1, a.mask_text("a@b.io"));
        assert_ne!(x1, b.mask_text("a@b.io"));
        assert!(x1.starts_with("hash:"));
    }

    #[test]
    fn bad_config_names_the_key() {
        let e = Policy::from_json(r#"{"entities":{"emial":"redact"}}"#).unwrap_err();
        assert!(e.contains("emial") && e.contains("entities"), "{e}");
        let e = Policy::from_json(r#"{"columns":{"ssn":"redact"}}"#).unwrap_err();
        assert!(e.contains("table.column"), "{e}");
        let e = Policy::from_json(r#"{"colums":{}}"#).unwrap_err();
        assert!(e.contains("colums"), "{e}");
    }

    #[test]
    fn opaque_binary_values_are_read_for_the_text_they_hold() {
        // A binary record (count, then oid, length, bytes per field) whose
        // text field is 200 bytes long: its length byte 0xC8 is no UTF-8.
        let note = format!("reach me at jane@example.com {}", "x".repeat(171));
        let mut record = Vec::new();
        for v in [1u32, 25, note.len() as u32] {
            record.extend_from_slice(&v.to_be_bytes());
        }
        record.extend_from_slice(note.as_bytes());
        assert!(std::str::from_utf8(&record).is_err());
        let plain = [0xC8u8, 0, 1, 2, 0xFF];
        let mut cols = text_columns(&["r", "b"]);
        for c in &mut cols {
            c.format = CellFormat::BinaryOpaque;
        }
        let mut cells = PackedBuilder::with_capacity(0, 2);
        cells.push(&record);
        cells.push(&plain);
        let cells = cells.finish();
        let out = Policy::default().mask_batch(&cols, &cells).unwrap();
        assert_eq!(out.cells.lengths, vec![-1, plain.len() as i32], "the record is NULL, the other bytes kept");
        assert_eq!(out.cells.data, plain);
        assert_eq!(out.findings.len(), 1);
        assert_eq!(out.findings[0].entity, "email");
    }

    #[test]
    fn ragged_batch_is_an_error_not_a_panic() {
        let p = Policy::default();
        let cells = PackedCells { data: b"abc".to_vec(), lengths: vec![3, 4] };
        assert!(p.mask_batch(&text_columns(&["a", "b"]), &cells).is_err());
    }
}
