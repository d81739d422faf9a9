//! Any text through PostgreSQL's parser and the gateway's statement analysis
//! (kinds, tables, functions, column usage, policy violations).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wardgate::pipeline::types::SqlPhase;

fuzz_target!(|text: &str| {
    let _ = wardgate::sql::analyze_checked(text, SqlPhase::SimpleQuery, "");
    let _ = wardgate::sql::fingerprint::fingerprint(text, &[]);
});
