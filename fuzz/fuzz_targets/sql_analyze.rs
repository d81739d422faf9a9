//! Any text through PostgreSQL's parser and the gateway's statement analysis
//! (kinds, tables, functions, column usage, policy violations). The caches
//! (exact text, literal key, token shape) persist across inputs, so inputs
//! that differ only in constants are served from them: whatever they serve
//! must equal a fresh parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wardgate::pipeline::types::SqlPhase;

fuzz_target!(|text: &str| {
    let cached = wardgate::sql::analyze_checked(text, SqlPhase::SimpleQuery, "");
    assert_eq!(cached, wardgate::sql::analyze_checked_uncached(text, SqlPhase::SimpleQuery, ""), "{text:?}");
    let _ = wardgate::sql::fingerprint::fingerprint(text, &[]);
});
