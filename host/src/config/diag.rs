//! Diagnostics for TOML files: every error names the file, line, key and a fix.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// An error in a TOML file the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Dotted key path (`limits.memory_mib`), empty when not known.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub fix: Option<String>,
}

impl fmt::Display for TomlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

impl std::error::Error for TomlError {}

/// 1-based line and column of byte `offset` in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|p| offset - p).unwrap_or(offset + 1);
    (line, column)
}

/// Build a [`TomlError`] at `span` of `src`.
pub fn at_span(
    file: &Path,
    src: &str,
    span: Option<Range<usize>>,
    key: &str,
    message: impl Into<String>,
    fix: Option<&str>,
) -> TomlError {
    let (line, column) = span.map(|s| line_col(src, s.start)).unwrap_or((0, 0));
    TomlError {
        file: file.to_path_buf(),
        line,
        column,
        key: key.to_string(),
        message: message.into(),
        fix: fix.map(str::to_string),
    }
}

/// Parse `src` as `T`, turning serde/toml errors into a [`TomlError`].
pub fn parse<T: serde::de::DeserializeOwned>(file: &Path, src: &str) -> Result<T, TomlError> {
    toml::from_str(src).map_err(|e| {
        let message = e.message().trim().to_string();
        let key = guess_key(src, e.span());
        let fix = if message.starts_with("unknown field") {
            Some("remove the key or correct its spelling; the message lists the keys allowed here")
        } else if message.starts_with("missing field") {
            Some("add the key")
        } else if message.contains("invalid type") {
            Some("check the value's type (quote strings, no quotes on numbers and booleans)")
        } else {
            None
        };
        at_span(file, src, e.span(), &key, message, fix)
    })
}

/// Best effort: the dotted key whose line contains `span` (`[table]` header + key).
fn guess_key(src: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else { return String::new() };
    let start = span.start.min(src.len());
    let line_start = src[..start].rfind('\n').map(|p| p + 1).unwrap_or(0);
    let line = src[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"').to_string();
    if line.trim_start().starts_with('[') || !line.contains('=') {
        return line.trim().trim_matches(['[', ']']).to_string();
    }
    let table = src[..line_start]
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| l.trim().trim_matches(['[', ']']).trim().to_string());
    match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        name: String,
        #[serde(default)]
        limits: Limits,
    }
    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        memory_mib: Option<u32>,
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let src = "name = \"x\"\n\n[limits]\nmemory_mb = 3\n";
        let e = parse::<T>(Path::new("p.toml"), src).unwrap_err();
        assert_eq!(e.line, 4);
        assert_eq!(e.key, "limits.memory_mb");
        let s = e.to_string();
        assert!(s.starts_with("p.toml:4:"), "{s}");
        assert!(s.contains("memory_mib"), "lists allowed keys: {s}");
    }

    #[test]
    fn wrong_type_is_explained() {
        let e = parse::<T>(Path::new("p.toml"), "name = 3\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.fix.unwrap().contains("type"));
    }
}
