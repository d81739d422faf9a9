//! Server errors that quote data.
//!
//! A data exception (SQLSTATE class 22: `invalid input syntax for type
//! integer: "…"`, a JSON or XML parse error with an excerpt) or an integrity
//! violation (class 23: `Key (email)=(…)`, `Failing row contains (…)`) quotes
//! the very values maskers hide in results — an agent can provoke one on
//! purpose (`WHERE ssn::int = 1`) to read a column through the error, and
//! content detectors cannot recognise a fragment such as a JSON token. On a
//! masked session these quotes are withheld; the error stays an error with
//! its SQLSTATE and its shape.

/// What replaces a withheld value.
pub const WITHHELD: &str = "[withheld by Wardgate]";

/// Replace every `"…"` span (PostgreSQL doubles `"` inside) with the marker.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        let mut tail = &rest[start + 1..];
        // Find the closing quote, skipping doubled ones.
        let mut end = None;
        let mut i = 0;
        let b = tail.as_bytes();
        while i < b.len() {
            if b[i] == b'"' {
                if b.get(i + 1) == Some(&b'"') {
                    i += 2;
                    continue;
                }
                end = Some(i);
                break;
            }
            i += 1;
        }
        match end {
            Some(e) => {
                out.push_str(WITHHELD);
                out.push('"');
                tail = &tail[e + 1..];
            }
            None => {
                out.push_str(WITHHELD);
                tail = "";
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `field` (an ErrorResponse/NoticeResponse field code) of an error with
/// `sqlstate`, with quoted data withheld.
pub fn withhold_data(sqlstate: &str, field: u8, value: &str) -> String {
    match (sqlstate.get(..2), field) {
        (Some("22"), b'M') => quoted(value),
        // Details and contexts of data exceptions quote input: JSON tokens,
        // XML excerpts, COPY lines.
        (Some("22"), b'D' | b'W') => WITHHELD.to_string(),
        (Some("23"), b'D') => {
            if let Some(cols) = value.strip_prefix("Key (").and_then(|r| r.split_once(")=(")).map(|(c, _)| c) {
                let tail = value.rsplit_once(") ").map(|(_, t)| t).unwrap_or("");
                format!("Key ({cols})=({WITHHELD}) {tail}").trim_end().to_string()
            } else if value.starts_with("Failing row contains") {
                format!("Failing row contains ({WITHHELD}).")
            } else {
                quoted(value)
            }
        }
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_quoted_by_data_exceptions_and_constraint_violations_is_withheld() {
        assert_eq!(
            withhold_data("22P02", b'M', "invalid input syntax for type integer: \"123-45-6789\""),
            format!("invalid input syntax for type integer: \"{WITHHELD}\"")
        );
        assert_eq!(withhold_data("22P02", b'D', "Token \"jane\" is invalid."), WITHHELD);
        assert_eq!(withhold_data("22P02", b'W', "JSON data, line 1: jane..."), WITHHELD);
        assert_eq!(withhold_data("22P02", b'M', "a \"b\"\"c\" d \"open"), format!("a \"{WITHHELD}\" d \"{WITHHELD}"));
        assert_eq!(
            withhold_data("23505", b'D', "Key (email)=(jane.doe@example.com) already exists."),
            format!("Key (email)=({WITHHELD}) already exists.")
        );
        assert_eq!(
            withhold_data("23502", b'D', "Failing row contains (7, null, Jane Doe)."),
            format!("Failing row contains ({WITHHELD}).")
        );
        // Other classes, and the constraint name in a class-23 message, are kept.
        let m = "duplicate key value violates unique constraint \"customers_email_key\"";
        assert_eq!(withhold_data("23505", b'M', m), m);
        assert_eq!(withhold_data("42703", b'M', "column \"x\" does not exist"), "column \"x\" does not exist");
    }
}
