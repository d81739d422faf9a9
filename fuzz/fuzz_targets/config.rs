//! Gateway configs and plugin manifests: any text is accepted or refused
//! with a file:line:key error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("/nonexistent/fuzz.toml");
    if let Err(e) = wardgate::config::Config::parse(path, text) {
        let _ = e.to_string();
    }
    if let Err(e) = wardgate::plugins::manifest::Manifest::parse(path, text, "fuzz") {
        let _ = e.to_string();
    }
});
