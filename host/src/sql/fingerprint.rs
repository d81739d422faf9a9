//! Statement fingerprints that bind an approval to exactly one statement.
//!
//! `pg_query`'s fingerprint identifies the normalized parse tree but ignores
//! constants and some names (prepared statements, cursors): on its own it would
//! let an approval of `DELETE … WHERE id = 1` cover `… WHERE id = 2`. So the
//! fingerprint here hashes the tree fingerprint together with PostgreSQL's own
//! token stream (comments and whitespace dropped, keywords and unquoted
//! identifiers case-folded as the server folds them, everything else exact)
//! and the bound parameter values. Formatting does not matter; any change to
//! what would run does.

use sha2::{Digest, Sha256};

/// Hex SHA-256 over the tree fingerprint, the normalized tokens and `params`.
pub fn fingerprint(text: &str, params: &[Option<Vec<u8>>]) -> String {
    use pg_query::protobuf::{KeywordKind, Token};
    let mut h = Sha256::new();
    h.update(b"wardgate.statement-fingerprint.v1\0");
    match pg_query::fingerprint(text, 0, pg_query::FingerprintOptions::FULL_RELNAME) {
        Ok(f) => h.update(f.hex.as_bytes()),
        Err(_) => h.update(b"(unparsable)"),
    }
    h.update(b"\0tokens\0");
    match pg_query::scan(text) {
        Ok(scanned) => {
            for t in &scanned.tokens {
                let kind = Token::try_from(t.token).unwrap_or(Token::Nul);
                if matches!(kind, Token::SqlComment | Token::CComment) {
                    continue;
                }
                let raw = text.get(t.start.max(0) as usize..t.end.max(0) as usize).unwrap_or("");
                let keyword = t.keyword_kind != KeywordKind::NoKeyword as i32;
                let folded = if keyword || (kind == Token::Ident && !raw.starts_with('"')) {
                    raw.to_lowercase()
                } else {
                    raw.to_string()
                };
                h.update(t.token.to_le_bytes());
                h.update((folded.len() as u64).to_le_bytes());
                h.update(folded.as_bytes());
            }
        }
        Err(_) => h.update(text.as_bytes()),
    }
    h.update(b"\0params\0");
    h.update((params.len() as u64).to_le_bytes());
    for p in params {
        match p {
            None => h.update(u64::MAX.to_le_bytes()),
            Some(v) => {
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
        }
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn formatting_does_not_matter_but_every_value_and_name_does() {
        let base = fingerprint("DELETE FROM orders WHERE id = 1", &[]);
        assert_eq!(base, fingerprint("delete   from ORDERS /* tidy */ where id=1 -- x\n", &[]));
        for other in [
            "DELETE FROM orders WHERE id = 2",
            "DELETE FROM orders WHERE id = 1 OR true",
            "DELETE FROM \"ORDERS\" WHERE id = 1",
            "DELETE FROM orders WHERE id = '1'",
            "DELETE FROM customers WHERE id = 1",
        ] {
            assert_ne!(base, fingerprint(other, &[]), "{other}");
        }
        assert_ne!(fingerprint("EXECUTE a", &[]), fingerprint("EXECUTE b", &[]), "names pg_query ignores");
        let p = fingerprint("DELETE FROM orders WHERE id = $1", &[Some(b"1".to_vec())]);
        assert_ne!(p, fingerprint("DELETE FROM orders WHERE id = $1", &[Some(b"2".to_vec())]));
        assert_ne!(p, fingerprint("DELETE FROM orders WHERE id = $1", &[None]));
        assert_ne!(fingerprint("not sql at all", &[]), fingerprint("not sql at  all!", &[]));
    }
}
