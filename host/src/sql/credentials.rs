//! Credentials written into SQL — `CREATE ROLE … PASSWORD '…'` (and psql's
//! `\password`, which sends the verifier the same way), a user mapping's
//! `OPTIONS (password '…')`, a subscription's `CONNECTION '…'` — are taken
//! out of a statement's text before it is recorded, shown to approvers or
//! handed to maskers. Whatever plugins run (none, or maskers that know no
//! SQL), no recording, SIEM line or approval request holds a password an
//! agent sent. The statement itself goes upstream unchanged.
//!
//! Found with PostgreSQL's own lexer, so case, comments, spacing and string
//! syntax (`E'…'`, `$$…$$`, `U&'…'`) make no difference.

use pg_query::protobuf::Token;

/// What a credential literal is replaced with in recorded text.
pub const REDACTED: &str = "'[REDACTED]'";

/// `text` with every credential literal replaced by [`REDACTED`]; `None`
/// when it holds none. A text the lexer cannot read is redacted from the
/// first credential keyword on, if it has one (it cannot run anyway; what
/// follows the keyword might be the password).
pub fn redact(text: &str) -> Option<String> {
    // A text with no credential keyword costs one pass.
    let first = first_keyword(text)?;
    let Ok(scanned) = pg_query::scan(text) else {
        return Some(format!("{}{REDACTED}", &text[..first]));
    };
    let mut ranges = Vec::new();
    let mut after_keyword = false;
    for t in &scanned.tokens {
        let kind = Token::try_from(t.token).unwrap_or(Token::Nul);
        match kind {
            Token::SqlComment | Token::CComment => continue,
            // Bit strings are no password (a syntax error upstream), but
            // what the agent wrote there is still not recorded.
            Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst if after_keyword => {
                ranges.push(t.start.max(0) as usize..(t.end.max(0) as usize).min(text.len()));
            }
            _ => {}
        }
        // A `U&"..."` option name may spell `password` in escapes: taken as one.
        after_keyword = matches!(kind, Token::Password | Token::Connection | Token::Uident)
            || (kind == Token::Ident && is_password_ident(text.get(t.start.max(0) as usize..t.end.max(0) as usize)));
    }
    if ranges.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for r in ranges {
        // Token bounds are character bounds; were one not, the text is cut
        // at the first keyword rather than recorded as it is.
        let Some(before) = text.get(last..r.start) else {
            return Some(format!("{}{REDACTED}", &text[..first]));
        };
        out.push_str(before);
        out.push_str(REDACTED);
        last = r.end;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    Some(out)
}

/// A quoted option name `"password"` (an unquoted one is the keyword).
fn is_password_ident(raw: Option<&str>) -> bool {
    raw == Some("\"password\"")
}

/// Where the first word that can start a credential is, in any case: the
/// keywords `PASSWORD` and `CONNECTION` (ASCII, never escaped) and `U&`, as
/// an option name may be a `U&"..."` identifier spelling `password` in escapes.
fn first_keyword(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let at = |i: usize, word: &[u8]| b.get(i..i + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word));
    (0..b.len()).find(|&i| match b[i] | 0x20 {
        b'p' => at(i, b"password"),
        b'c' => at(i, b"connection"),
        b'u' => at(i, b"u&"),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_connection_strings_are_redacted() {
        for (text, want) in [
            ("ALTER ROLE bob WITH PASSWORD 'Hunter2'", "ALTER ROLE bob WITH PASSWORD '[REDACTED]'"),
            ("create user bob password 'a''b' login", "create user bob password '[REDACTED]' login"),
            ("ALTER USER bob ENCRYPTED PASSWORD E'x\\'y'", "ALTER USER bob ENCRYPTED PASSWORD '[REDACTED]'"),
            (
                "ALTER ROLE bob PASSWORD /* c */ $$pw$$ VALID UNTIL 'infinity'",
                "ALTER ROLE bob PASSWORD /* c */ '[REDACTED]' VALID UNTIL 'infinity'",
            ),
            ("ALTER ROLE bob PASSWORD U&'p\\0077'", "ALTER ROLE bob PASSWORD '[REDACTED]'"),
            ("ALTER ROLE bob PASSWORD X'4142'", "ALTER ROLE bob PASSWORD '[REDACTED]'"),
            (
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'pw')",
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[REDACTED]')",
            ),
            (
                "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET \"password\" 'pw')",
                "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET \"password\" '[REDACTED]')",
            ),
            (
                "CREATE SUBSCRIPTION s CONNECTION 'host=db user=rep password=pw' PUBLICATION p",
                "CREATE SUBSCRIPTION s CONNECTION '[REDACTED]' PUBLICATION p",
            ),
            (
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (U&\"\\0070assword\" 'pw')",
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (U&\"\\0070assword\" '[REDACTED]')",
            ),
            (
                "SELECT 1; alter role a password 'x'; alter role b password 'y'",
                "SELECT 1; alter role a password '[REDACTED]'; alter role b password '[REDACTED]'",
            ),
        ] {
            assert_eq!(redact(text).as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn other_texts_are_left_alone() {
        for text in [
            "SELECT 1",
            "SELECT password FROM users WHERE id = 1",
            "ALTER ROLE bob PASSWORD NULL",
            "SELECT 'password' AS x",
            "SELECT * FROM connection_log",
        ] {
            assert_eq!(redact(text), None, "{text}");
        }
    }

    #[test]
    fn an_unreadable_text_is_cut_at_the_keyword() {
        assert_eq!(redact("ALTER ROLE bob PASSWORD 'unterminated").as_deref(), Some("ALTER ROLE bob '[REDACTED]'"));
    }
}
