//! Any text through PostgreSQL's parser and the gateway's statement analysis
//! (kinds, tables, functions, column usage, policy violations). The caches
//! (exact text, literal key, token shape) persist across inputs, so inputs
//! that differ only in constants are served from them: whatever they serve
//! must equal a fresh parse (one allowed difference, below).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wardgate::pipeline::types::SqlPhase;

fuzz_target!(|text: &str| {
    // COPY TO STDOUT statements and the SELECTs their column lookups prepare.
    for c in wardgate::protocol::postgres::copyout::copies(text) {
        if let Some(select) = c.select {
            assert!(!select.contains('\0'));
        }
    }
    let cached = wardgate::sql::analyze_checked(text, SqlPhase::SimpleQuery, "");
    let fresh = wardgate::sql::analyze_checked_uncached(text, SqlPhase::SimpleQuery, "");
    // The one allowed difference: a constant the grammar itself checks
    // (`float(0)`) fails a fresh parse, while the caches serve the analysis of
    // the same statement with a valid constant; the server rejects the text,
    // so nothing runs that the guards did not see.
    if fresh.0.parse_error.is_some() && cached.0.parse_error.is_none() {
        return;
    }
    // "stack depth limit exceeded" is a limit of the call (libpg_query sizes
    // it to the calling thread's free stack on every call), not a property of
    // the text, and it refuses the text (fails closed); the caches never
    // store an error, so a later call parses again.
    let stack_limit = |r: &(wardgate::pipeline::types::SqlRequest, Option<String>)| {
        r.0.parse_error.as_deref().is_some_and(|e| e.contains("stack depth limit exceeded"))
    };
    if stack_limit(&cached) || stack_limit(&fresh) {
        return;
    }
    assert_eq!(cached, fresh, "{text:?}");
    // Which NOT NULL columns would make a WHERE trivial: the same either way.
    assert_eq!(wardgate::sql::null_reliance(text), wardgate::sql::null_reliance_uncached(text), "{text:?}");
    let _ = wardgate::sql::fingerprint::fingerprint(text, &[]);
});
