//! Content detectors. Each scans a cell's text and reports byte spans of one
//! entity type. They are hand-written single-pass scanners (no regex engine in
//! the sandbox) with cheap prefilters, and they validate checksums where the
//! format has one (Luhn for cards, mod-97 for IBANs) to avoid false positives.

/// Entity types the masker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Email,
    Card,
    Ssn,
    Phone,
    Iban,
    AwsKey,
    PrivateKey,
    Jwt,
    Secret,
    Token,
}

impl Entity {
    /// All entities, in detection priority order (first wins on overlap).
    pub const ALL: [Entity; 10] = [
        Entity::PrivateKey,
        Entity::Jwt,
        Entity::Secret,
        Entity::AwsKey,
        Entity::Token,
        Entity::Email,
        Entity::Iban,
        Entity::Card,
        Entity::Ssn,
        Entity::Phone,
    ];

    /// Name used in manifests and findings.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Email => "email",
            Entity::Card => "card",
            Entity::Ssn => "ssn",
            Entity::Phone => "phone",
            Entity::Iban => "iban",
            Entity::AwsKey => "aws-key",
            Entity::PrivateKey => "private-key",
            Entity::Jwt => "jwt",
            Entity::Secret => "secret",
            Entity::Token => "token",
        }
    }

    /// Inverse of [`Entity::name`].
    pub fn from_name(name: &str) -> Option<Entity> {
        Entity::ALL.iter().copied().find(|e| e.name() == name)
    }
}

/// A detected entity at `text[start..end]` (for secrets, only the value part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub entity: Entity,
}

/// Which detectors run, and options.
#[derive(Debug, Clone)]
pub struct Detectors {
    pub enabled: [bool; Entity::ALL.len()],
    /// Treat a bare run of exactly nine digits as an SSN (off by default: ids).
    pub ssn_plain_digits: bool,
}

impl Default for Detectors {
    fn default() -> Self {
        Self { enabled: [true; Entity::ALL.len()], ssn_plain_digits: false }
    }
}

impl Detectors {
    fn on(&self, e: Entity) -> bool {
        self.enabled[Entity::ALL.iter().position(|x| *x == e).unwrap_or(0)]
    }

    /// Enable or disable one detector.
    pub fn set(&mut self, e: Entity, on: bool) {
        if let Some(i) = Entity::ALL.iter().position(|x| *x == e) {
            self.enabled[i] = on;
        }
    }

    /// Find all non-overlapping entities in `text`, sorted by start.
    pub fn scan(&self, text: &str, out: &mut Vec<Span>) {
        out.clear();
        let b = text.as_bytes();
        // Prefilter: one table-driven pass tells which detectors can possibly
        // match; most cells run none. (One loop, not six: inside the sandbox
        // every loop iteration also pays for the deadline check.)
        let mut digits = 0usize;
        let mut upper = 0usize;
        let mut seen = 0u16;
        for &c in b {
            let k = CLASS[c as usize];
            digits += (k & DIGIT != 0) as usize;
            upper += (k & UPPER != 0) as usize;
            seen |= k;
        }
        let has_at = seen & AT != 0;
        let has_eq_or_colon = seen & EQ_COLON != 0;
        let has_space = seen & SPACE != 0;
        let has_dash5 = seen & DASH != 0 && b.len() >= 10 && memfind(b, b"-----").is_some();
        if has_dash5 && self.on(Entity::PrivateKey) {
            private_keys(b, out);
        }
        if b.len() >= 20 && self.on(Entity::Jwt) && memfind(b, b"eyJ").is_some() {
            jwts(b, out);
        }
        let sql_literal = has_space && seen & QUOTE != 0 && b.len() >= 10;
        if self.on(Entity::Secret)
            && (has_eq_or_colon || sql_literal || (has_space && b.len() >= 15 && contains_ci(b, b"bearer ")))
        {
            secrets(b, out);
        }
        if upper >= 4 && b.len() >= 20 && self.on(Entity::AwsKey) {
            aws_keys(b, out);
        }
        if b.len() >= MIN_TOKEN && (seen & (DASH | UNDERSCORE) != 0 || upper >= 6) && self.on(Entity::Token) {
            tokens(b, upper, out);
        }
        if has_at && self.on(Entity::Email) {
            emails(b, out);
        }
        if (upper >= 2 || seen & LOWER != 0) && digits >= 4 && b.len() >= 15 && self.on(Entity::Iban) {
            ibans(b, out);
        }
        // Cards and SSNs need 9+ digits; international phones 8+.
        if digits >= 9 || (digits >= 8 && self.on(Entity::Phone)) {
            let before = out.len();
            digit_runs(b, self, out);
            not_in_uuids(b, out, before);
        }
        if out.len() > 1 {
            out.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
            // Drop spans that overlap an earlier one (priority = detection order
            // above is already reflected because earlier detectors skip claimed
            // ranges only here; keep the longest at a position).
            let mut kept: Vec<Span> = Vec::with_capacity(out.len());
            for s in out.drain(..) {
                if kept.last().is_none_or(|k| s.start >= k.end) {
                    kept.push(s);
                }
            }
            *out = kept;
        }
    }
}

const DIGIT: u16 = 1;
const UPPER: u16 = 2;
const AT: u16 = 4;
const EQ_COLON: u16 = 8;
const SPACE: u16 = 16;
const DASH: u16 = 32;
const UNDERSCORE: u16 = 64;
const QUOTE: u16 = 128;
const LOWER: u16 = 256;

/// Byte classes for the prefilter.
const CLASS: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_lowercase() {
            LOWER
        } else {
            match c {
                b'@' => AT,
                b'=' | b':' => EQ_COLON,
                b' ' => SPACE,
                b'-' => DASH,
                b'_' => UNDERSCORE,
                b'\'' => QUOTE,
                _ => 0,
            }
        };
        i += 1;
    }
    t
};

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn private_keys(b: &[u8], out: &mut Vec<Span>) {
    let mut from = 0;
    while let Some(p) = memfind(&b[from..], b"-----BEGIN ") {
        let start = from + p;
        let header_end = match memfind(&b[start + 11..], b"-----") {
            Some(e) => start + 11 + e + 5,
            None => return,
        };
        let label = &b[start + 11..header_end - 5];
        if !label.ends_with(b"PRIVATE KEY") {
            from = header_end;
            continue;
        }
        // Mask through the END line, or to the end of the cell when truncated.
        let end = match memfind(&b[header_end..], b"-----END ") {
            Some(e) => {
                let after = header_end + e + 9;
                match memfind(&b[after..], b"-----") {
                    Some(x) => after + x + 5,
                    None => b.len(),
                }
            }
            None => b.len(),
        };
        out.push(Span { start, end, entity: Entity::PrivateKey });
        from = end;
    }
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'='
}

fn jwts(b: &[u8], out: &mut Vec<Span>) {
    let mut i = 0;
    while i + 3 <= b.len() {
        if &b[i..i + 3] == b"eyJ" && (i == 0 || !is_b64url(b[i - 1])) {
            // header . payload . signature (signature may be empty: alg none)
            let mut j = i;
            let mut parts = 0;
            let mut part_len = 0;
            let mut ok_parts = 0;
            while j < b.len() && (is_b64url(b[j]) || b[j] == b'.') {
                if b[j] == b'.' {
                    if part_len >= 2 {
                        ok_parts += 1;
                    }
                    parts += 1;
                    part_len = 0;
                } else {
                    part_len += 1;
                }
                j += 1;
            }
            if parts >= 2 && ok_parts >= 2 {
                out.push(Span { start: i, end: j, entity: Entity::Jwt });
                i = j;
                continue;
            }
        }
        i += 1;
    }
}

/// Words that make any part of a key a secret's name, wherever that part
/// stands and whatever it starts with: `AWS_SECRET_ACCESS_KEY`, `PGPASSWORD`,
/// `db.credentials`, `smtp-passphrase` (parts are split at `_`, `-` and `.`;
/// `passwordless` and `secretary` end otherwise and are not secrets).
const SECRET_WORDS: [&[u8]; 6] = [b"password", b"passwd", b"secret", b"passphrase", b"credential", b"credentials"];

/// Keys that name a secret as the whole key or its last parts: `token`,
/// `github_token`, `access_token`, `signing-key` (but not `token_count` or
/// `key`). Keys with a part in [`SECRET_WORDS`] (`secret_key`) need no entry.
const SECRET_KEYS: [&[u8]; 11] = [
    b"pwd",
    b"api_key",
    b"apikey",
    b"api-key",
    b"access_key",
    b"private_key",
    b"signing_key",
    b"encryption_key",
    b"master_key",
    b"token",
    b"authorization",
];

/// Last parts that name a secret only after another part: `DB_PASS`,
/// `smtp.pass`, but not a bare `pass` (a test report's `pass: 10`).
const SECRET_SUFFIXES: [&[u8]; 1] = [b"pass"];

fn starts_with_ci(b: &[u8], at: usize, pat: &[u8]) -> bool {
    at + pat.len() <= b.len() && b[at..at + pat.len()].eq_ignore_ascii_case(pat)
}

fn ends_with_ci(b: &[u8], pat: &[u8]) -> bool {
    b.len() >= pat.len() && b[b.len() - pat.len()..].eq_ignore_ascii_case(pat)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_key_separator(c: u8) -> bool {
    matches!(c, b'_' | b'-' | b'.')
}

/// Whether the key `ident` names a secret (see [`SECRET_WORDS`],
/// [`SECRET_KEYS`] and [`SECRET_SUFFIXES`]).
fn names_secret(ident: &[u8]) -> bool {
    // `ident` ends with `k`, which is all of it or follows a separator.
    let last_parts = |k: &[u8], alone: bool| {
        ends_with_ci(ident, k)
            && match ident.len() - k.len() {
                0 => alone,
                n => is_key_separator(ident[n - 1]),
            }
    };
    ident.split(|c| is_key_separator(*c)).any(|part| SECRET_WORDS.iter().any(|w| ends_with_ci(part, w)))
        || SECRET_KEYS.iter().any(|k| last_parts(k, true))
        || SECRET_SUFFIXES.iter().any(|k| last_parts(k, false))
}

/// `key=value`, `key: value`, `"key": "value"` where key names a secret, and
/// `Bearer <token>`. Works backwards from each `=`/`:` so cells without a
/// secret-looking key cost one pass over their separators.
fn secrets(b: &[u8], out: &mut Vec<Span>) {
    let n = b.len();
    let mut i = 0;
    while i < n {
        let c = b[i];
        if c == b'b' || c == b'B' {
            if starts_with_ci(b, i, b"bearer ") && (i == 0 || !is_word(b[i - 1])) {
                let vs = i + 7;
                let mut ve = vs;
                while ve < n && !b[ve].is_ascii_whitespace() && !matches!(b[ve], b'"' | b'\'' | b',') {
                    ve += 1;
                }
                if ve - vs >= 8 {
                    out.push(Span { start: vs, end: ve, entity: Entity::Secret });
                    i = ve;
                    continue;
                }
            }
            i += 1;
            continue;
        }
        if c == b'\'' && i > 0 && b[i - 1] == b' ' {
            if let Some(end) = sql_secret_literal(b, i) {
                out.push(Span { start: i + 1, end, entity: Entity::Secret });
                i = end + 1;
                continue;
            }
        }
        if c != b'=' && c != b':' {
            i += 1;
            continue;
        }
        // Walk back over spaces and one quote to the key.
        let (mut k, mut key_end) = key_before(b, i);
        if k == key_end && k > 0 && (b[k - 1] == b'"' || b[k - 1] == b'\'') {
            (k, key_end) = key_before(b, k - 1);
        }
        if key_end == k || !names_secret(&b[k..key_end]) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < n && b[j] == b' ' {
            j += 1;
        }
        let quote = if j < n && (b[j] == b'"' || b[j] == b'\'') {
            j += 1;
            Some(b[j - 1])
        } else {
            None
        };
        let mut vs = j;
        if ends_with_ci(&b[k..key_end], b"authorization") {
            // `Authorization: Basic dXNlcjpw...`: the credentials follow the scheme.
            let mut w = vs;
            while w < n && b[w].is_ascii_alphabetic() {
                w += 1;
            }
            if w > vs && w < n && b[w] == b' ' {
                vs = w + 1;
            }
        }
        let mut ve = vs;
        match quote {
            Some(q) => {
                while ve < n && b[ve] != q {
                    ve += if b[ve] == b'\\' && ve + 1 < n { 2 } else { 1 };
                }
                ve = ve.min(n);
            }
            None => {
                while ve < n
                    && !b[ve].is_ascii_whitespace()
                    && !matches!(b[ve], b'&' | b';' | b',' | b'}' | b'"' | b'\'')
                {
                    ve += 1;
                }
            }
        }
        if ve > vs {
            out.push(Span { start: vs, end: ve, entity: Entity::Secret });
            i = ve;
        } else {
            i += 1;
        }
    }
}

/// The identifier that ends where the spaces before `end` begin: its start
/// and end (equal when there is none).
fn key_before(b: &[u8], end: usize) -> (usize, usize) {
    let mut k = end;
    while k > 0 && b[k - 1] == b' ' {
        k -= 1;
    }
    let key_end = k;
    while k > 0 && is_ident(b[k - 1]) {
        k -= 1;
    }
    (k, key_end)
}

/// SQL's forms, `PASSWORD 'value'` (`CREATE ROLE`, a user mapping's
/// options, as a server log or `pg_stat_activity.query` shows them) and
/// `SET app.api_key TO 'value'`: a key that names a secret, spaces (and a
/// `TO`), then the string at `quote`. The end of the value (its closing
/// quote, or the end of the text), if so.
fn sql_secret_literal(b: &[u8], quote: usize) -> Option<usize> {
    let (mut k, mut key_end) = key_before(b, quote);
    if b[k..key_end].eq_ignore_ascii_case(b"to") {
        (k, key_end) = key_before(b, k);
    }
    if key_end == k || !names_secret(&b[k..key_end]) {
        return None;
    }
    // A quote inside is doubled ('').
    let mut j = quote + 1;
    while j < b.len() {
        if b[j] == b'\'' {
            if b.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            break;
        }
        j += 1;
    }
    (j > quote + 1).then_some(j)
}

fn aws_keys(b: &[u8], out: &mut Vec<Span>) {
    const PREFIXES: [&[u8]; 8] = [b"AKIA", b"ASIA", b"AGPA", b"AIDA", b"AROA", b"ANPA", b"ANVA", b"AIPA"];
    let mut i = 0;
    while i + 20 <= b.len() {
        if b[i] == b'A' && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) && PREFIXES.iter().any(|p| &b[i..i + 4] == *p)
        {
            let body = &b[i + 4..i + 20];
            let boundary = i + 20 == b.len() || !b[i + 20].is_ascii_alphanumeric();
            if boundary && body.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
                out.push(Span { start: i, end: i + 20, entity: Entity::AwsKey });
                i += 20;
                continue;
            }
        }
        i += 1;
    }
}

/// API tokens of well-known services, by prefix (each ends in `_` or `-`;
/// Google's `AIza` keys are found apart): the least number of token
/// characters (`[A-Za-z0-9_-]`) after it. A match also needs a word boundary
/// before the prefix and a digit in the body (random bodies have one;
/// hyphenated words such as `sk-learn-…` do not).
const TOKENS: [(&[u8], usize); 20] = [
    (b"ghp_", 36),
    (b"gho_", 36),
    (b"ghu_", 36),
    (b"ghs_", 36),
    (b"ghr_", 36),
    (b"github_pat_", 22),
    (b"glpat-", 20),
    (b"xoxb-", 10),
    (b"xoxp-", 10),
    (b"xoxa-", 10),
    (b"xoxr-", 10),
    (b"xoxs-", 10),
    (b"xapp-", 10),
    (b"sk_live_", 16),
    (b"rk_live_", 16),
    (b"sk_test_", 16),
    (b"whsec_", 16),
    (b"sk-", 20),
    (b"npm_", 36),
    // Wardgate's own service-account keys.
    (b"wg_", 40),
];

/// The shortest text [`tokens`] can match.
const MIN_TOKEN: usize = 15;

fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn tokens(b: &[u8], upper: usize, out: &mut Vec<Span>) {
    // Every prefix but Google's ends in `_` or `-`: look back from those.
    let mut from = 0;
    while let Some(p) = b[from..].iter().position(|&c| c == b'_' || c == b'-') {
        let sep = from + p;
        from = sep + 1;
        // Each prefix has a lower-case letter before its separator (not so
        // dates, numbers and identifiers in upper case).
        if sep == 0 || !b[sep - 1].is_ascii_lowercase() {
            continue;
        }
        let found = TOKENS.iter().find_map(|(prefix, least)| {
            let start = (sep + 1).checked_sub(prefix.len())?;
            (prefix.last() == Some(&b[sep]) && &b[start..=sep] == *prefix)
                .then(|| token_end(b, start, sep + 1, *least))
                .flatten()
                .map(|end| (start, end))
        });
        if let Some((start, end)) = found {
            out.push(Span { start, end, entity: Entity::Token });
            from = end;
        }
    }
    // Google's keys: 35 random characters, many of them upper case.
    if upper >= 6 {
        let mut from = 0;
        while let Some(p) = memfind(&b[from..], b"AIza") {
            let start = from + p;
            match token_end(b, start, start + 4, 35) {
                Some(end) => {
                    out.push(Span { start, end, entity: Entity::Token });
                    from = end;
                }
                None => from = start + 1,
            }
        }
    }
}

/// The end of a token whose prefix is `b[start..body]`: at least `least`
/// token characters follow, one a digit, and none of them precedes `start`.
fn token_end(b: &[u8], start: usize, body: usize, least: usize) -> Option<usize> {
    if start > 0 && is_token(b[start - 1]) {
        return None;
    }
    let len = b[body..].iter().take_while(|&&c| is_token(c)).count();
    (len >= least && b[body..body + len].iter().any(u8::is_ascii_digit)).then_some(body + len)
}

/// A byte of an address's local part: ASCII ones RFC 5321 allows unquoted,
/// and any byte of a non-ASCII character (RFC 6531 addresses, `jörg@…`).
fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'') || c >= 0x80
}

/// A byte of a domain: ASCII labels, and any byte of a non-ASCII character
/// (internationalized domains written in Unicode, `bücher.de`).
fn is_domain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c >= 0x80
}

/// Where the quoted local part (`"john smith"@…`) that ends just before
/// `at` begins, if one does (at most 64 bytes, RFC 5321's limit).
fn quoted_local(b: &[u8], at: usize) -> Option<usize> {
    if at < 2 || b[at - 1] != b'"' {
        return None;
    }
    let open = b[at.saturating_sub(66)..at - 1].iter().rposition(|&c| c == b'"')?;
    Some(at.saturating_sub(66) + open)
}

fn emails(b: &[u8], out: &mut Vec<Span>) {
    let mut from = 0;
    while let Some(p) = b[from..].iter().position(|&c| c == b'@') {
        let at = from + p;
        from = at + 1;
        let mut s = at;
        while s > 0 && is_local(b[s - 1]) {
            s -= 1;
        }
        if s == at {
            s = quoted_local(b, at).unwrap_or(at);
        }
        let mut e = at + 1;
        while e < b.len() && is_domain(b[e]) {
            e += 1;
        }
        // trim trailing dots/dashes from the domain
        while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if s == at || e == at + 1 {
            continue;
        }
        let Some(end) = domain_end(&b[at + 1..e]) else { continue };
        let e = at + 1 + end;
        out.push(Span { start: s, end: e, entity: Entity::Email });
        from = e;
    }
}

/// Where an address's domain ends: after the letters (two or more) that
/// follow its last usable dot. Text that runs on past the top-level label
/// (`example.com-x`, `example.com1`, `example.com_x`) does not hide the
/// address: what looks like one is masked, valid or not.
fn domain_end(domain: &[u8]) -> Option<usize> {
    domain.iter().enumerate().rev().filter(|&(d, &c)| c == b'.' && d > 0).find_map(|(d, _)| {
        let letters = domain[d + 1..].iter().take_while(|&&c| c.is_ascii_alphabetic() || c >= 0x80).count();
        (letters >= 2).then_some(d + 1 + letters)
    })
}

fn iban_valid(chars: &[u8]) -> bool {
    // move first four to the end, letters -> numbers, mod 97 == 1
    if chars.len() < 15 || chars.len() > 34 {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in chars[4..].iter().chain(chars[..4].iter()) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + (c - b'0') as u32) % 97;
        } else if c.is_ascii_uppercase() {
            let v = (c - b'A') as u32 + 10;
            rem = (rem * 100 + v) % 97;
        } else {
            return false;
        }
    }
    rem == 1
}

/// IBAN length by country (SWIFT's IBAN registry). An IBAN written with lower
/// case letters (as `lower()` writes one) is taken only at its country's
/// length: a checksum alone would also take 1 in 97 lower-case hex strings.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

fn ibans(b: &[u8], out: &mut Vec<Span>) {
    let mut i = 0;
    while i + 15 <= b.len() {
        if b[i].is_ascii_alphabetic()
            && b[i + 1].is_ascii_alphabetic()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
        {
            // collect alnum (upper-cased), allowing single spaces between groups
            let mut chars: Vec<u8> = Vec::with_capacity(34);
            let mut first_lower = usize::MAX;
            let mut j = i;
            let mut end = i;
            while j < b.len() && chars.len() < 34 {
                let c = b[j];
                if c.is_ascii_alphanumeric() {
                    if c.is_ascii_lowercase() && first_lower == usize::MAX {
                        first_lower = chars.len();
                    }
                    chars.push(c.to_ascii_uppercase());
                    j += 1;
                    end = j;
                } else if c == b' ' && j + 1 < b.len() && b[j + 1].is_ascii_alphanumeric() {
                    j += 1;
                } else {
                    break;
                }
            }
            let country = IBAN_LENGTHS.iter().find(|(cc, _)| cc[..] == chars[..2]).map(|&(_, n)| n);
            // try the longest valid prefix (a trailing word may have been glued on);
            // with a lower-case letter in it, only the country's length
            let mut matched = false;
            let mut n = chars.len();
            while n >= 15 {
                let length_ok = first_lower >= n || country == Some(n);
                if length_ok && iban_valid(&chars[..n]) {
                    // map n chars back to a byte end
                    let mut cnt = 0;
                    let mut k = i;
                    while k < end && cnt < n {
                        if b[k] != b' ' {
                            cnt += 1;
                        }
                        k += 1;
                    }
                    out.push(Span { start: i, end: k, entity: Entity::Iban });
                    i = k;
                    matched = true;
                    break;
                }
                n -= 1;
            }
            if matched {
                continue;
            }
        }
        i += 1;
    }
}

/// Drop the digit-run spans from `out[from..]` that lie in a UUID
/// (`42719259-7440-4891-a38b-6ac1a8f4bca0`): its hex groups are random, and
/// about one in ten thousand starts with 16 digits in groups of 8, 4 and 4
/// that pass Luhn; masking one would break the identifier (and a `uuid`
/// column's value).
fn not_in_uuids(b: &[u8], out: &mut Vec<Span>, from: usize) {
    if out.len() == from || b.len() < UUID_LEN {
        return;
    }
    let uuids: Vec<(usize, usize)> =
        (0..=b.len() - UUID_LEN).filter(|&i| is_uuid_at(b, i)).map(|i| (i, i + UUID_LEN)).collect();
    if uuids.is_empty() {
        return;
    }
    let outside: Vec<Span> =
        out.drain(from..).filter(|s| !uuids.iter().any(|&(a, z)| s.start < z && a < s.end)).collect();
    out.extend(outside);
}

/// The length of a UUID's text: 32 hex digits in groups of 8-4-4-4-12.
const UUID_LEN: usize = 36;

/// A UUID's text starts at `i`, not glued to a word on either side.
fn is_uuid_at(b: &[u8], i: usize) -> bool {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    let u = &b[i..i + UUID_LEN];
    (i == 0 || !b[i - 1].is_ascii_alphanumeric())
        && b.get(i + UUID_LEN).is_none_or(|c| !c.is_ascii_alphanumeric())
        && u.iter().enumerate().all(|(k, c)| if DASHES.contains(&k) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Cards, SSNs and phone numbers are all runs of digits with single
/// separators; one scanner finds the runs and classifies their stretches.
///
/// A run is split into its digit groups, and every stretch of consecutive
/// groups holding at most 19 digits is a candidate, the longest first from the
/// leftmost group: so `123-45-6789 234-56-7890` (two SSNs joined by a space,
/// as `string_agg(ssn, ' ')` writes them) is two SSNs, and a card followed by
/// its expiry (`4111 1111 1111 1111 12/28`) is still a card. A stretch may not
/// begin after or end before a dot inside the run (`0.4111111111111111` is a
/// number, not a card). A stretch inside a run has at most four groups, so
/// each group starts at most four candidates and the scan stays linear.
fn digit_runs(b: &[u8], d: &Detectors, out: &mut Vec<Span>) {
    let n = b.len();
    let mut i = 0;
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut digits: Vec<u8> = Vec::with_capacity(24);
    while i < n {
        let c = b[i];
        let plus = c == b'+' && i + 1 < n && b[i + 1].is_ascii_digit();
        let paren = c == b'(' && i + 4 < n && b[i + 1].is_ascii_digit();
        if !(c.is_ascii_digit() || plus || paren)
            || (i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.' && c != b'+'))
        {
            i += 1;
            continue;
        }
        // Walk the run: digit groups with single separators (space, dash, dot, parens, slash).
        let start = i;
        let mut j = if plus { i + 1 } else { i };
        groups.clear();
        while j < n {
            let x = b[j];
            if x.is_ascii_digit() {
                let g = j;
                while j < n && b[j].is_ascii_digit() {
                    j += 1;
                }
                groups.push((g, j));
            } else if matches!(x, b' ' | b'-' | b'.' | b'(' | b')' | b'/')
                && j + 1 < n
                && (b[j + 1].is_ascii_digit()
                    || (x == b')' && b[j + 1] == b' ' && j + 2 < n && b[j + 2].is_ascii_digit())
                    || (x == b'('))
            {
                j += 1;
            } else {
                break;
            }
        }
        // The run ends at its last digit; what follows must not glue it to a word.
        let run_end = groups.last().map_or(start, |g| g.1);
        let end_ok = run_end == n || !b[run_end].is_ascii_alphanumeric();
        let mut s = 0;
        while s < groups.len() {
            s = match longest_stretch(b, Run { groups: &groups, start, plus, end_ok }, s, d, &mut digits) {
                Some((span, after)) => {
                    out.push(span);
                    after
                }
                None => s + 1,
            };
        }
        i = j.max(i + 1);
    }
}

/// One run of digit groups, as [`digit_runs`] walked it.
struct Run<'a> {
    /// Each group's byte range.
    groups: &'a [(usize, usize)],
    /// Where the run begins (its first digit, `+` or `(`).
    start: usize,
    /// It begins with `+`.
    plus: bool,
    /// Its last digit is not glued to a word.
    end_ok: bool,
}

/// The longest entity among the stretches of `run` that begin at group `s`,
/// and the group after it.
fn longest_stretch(b: &[u8], run: Run<'_>, s: usize, d: &Detectors, digits: &mut Vec<u8>) -> Option<(Span, usize)> {
    let Run { groups, start, plus, end_ok } = run;
    let len = |g: usize| groups[g].1 - groups[g].0;
    // A stretch starts at the run's start, or after a separator other than a dot.
    let from = match s {
        0 => start,
        _ if b[groups[s].0 - 1] == b'.' => return None,
        _ if b[groups[s].0 - 1] == b'(' => groups[s].0 - 1,
        _ => groups[s].0,
    };
    let plus = plus && s == 0;
    // The stretches from group `s` hold at most 19 digits.
    let mut last = s;
    let mut nd = len(s);
    while last + 1 < groups.len() && nd + len(last + 1) <= 19 {
        last += 1;
        nd += len(last);
    }
    for e in (s..=last).rev() {
        let whole = s == 0 && e + 1 == groups.len();
        // Inside a longer run only SSNs (3 groups), phones (4 at most) and
        // cards in groups of 4+ digits (4 at most) count.
        if e - s >= 4 && !whole && !plus {
            continue;
        }
        let to = groups[e].1;
        let bounded = if e + 1 == groups.len() { end_ok } else { b[to] != b'.' };
        // A card inside a longer run is written in groups of four digits or
        // more (`1 1 1 1 1 1 1 1 1 1 1 1 4111` in a list of numbers is not one).
        let card_shape = whole || (s..=e).all(|g| len(g) >= 4);
        if let Some(entity) = bounded.then(|| classify(&b[from..to], plus, card_shape, d, digits)).flatten() {
            return Some((Span { start: from, end: to, entity }, e + 1));
        }
    }
    None
}

/// What one stretch of a digit run is, if anything: `s` runs from its first
/// digit (or the `+` or `(` in front of it) to its last digit.
fn classify(s: &[u8], plus: bool, card_shape: bool, d: &Detectors, digits: &mut Vec<u8>) -> Option<Entity> {
    digits.clear();
    let mut seps = 0usize;
    let mut kinds = 0u8;
    for &x in if plus { &s[1..] } else { s } {
        if x.is_ascii_digit() {
            digits.push(x);
        } else {
            seps += 1;
            kinds |= match x {
                b' ' => 1,
                b'-' => 2,
                b'.' => 4,
                _ => 8,
            };
        }
    }
    let nd = digits.len();
    // A decimal number (one dot) is not a card: 3583503.876544 passes Luhn.
    let decimal = kinds == 4 && seps == 1;
    if (13..=19).contains(&nd) && !plus && !decimal && card_shape && d.on(Entity::Card) && luhn(digits) {
        Some(Entity::Card)
    } else if nd == 9 && !plus && d.on(Entity::Ssn) && ssn_shape(s, d.ssn_plain_digits) && ssn_valid(digits) {
        Some(Entity::Ssn)
    } else if d.on(Entity::Phone) && phone_shape(plus, nd, seps, kinds, s) {
        Some(Entity::Phone)
    } else {
        None
    }
}

fn ssn_shape(s: &[u8], plain_ok: bool) -> bool {
    (s.len() == 11 && s[3] == b'-' && s[6] == b'-')
        || (s.len() == 11 && s[3] == b' ' && s[6] == b' ')
        || (plain_ok && s.len() == 9)
}

fn ssn_valid(d: &[u8]) -> bool {
    let area = &d[0..3];
    area != b"000" && area != b"666" && d[0] != b'9' && &d[3..5] != b"00" && &d[5..9] != b"0000"
}

fn phone_shape(plus: bool, nd: usize, seps: usize, kinds: u8, s: &[u8]) -> bool {
    if plus {
        return (8..=15).contains(&nd);
    }
    if !(nd == 10 || nd == 11) {
        return false;
    }
    // (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567, 1-555-123-4567:
    // the digit groups must read as a North American number (192.168.1.100
    // and 10.100.200.30 are addresses).
    let mut groups = [0usize; 5];
    let mut g = 0usize;
    for &c in s {
        if c.is_ascii_digit() {
            groups[g] += 1;
        } else if groups[g] > 0 {
            g += 1;
            if g == groups.len() {
                return false;
            }
        }
    }
    let groups = &groups[..=g];
    if nd == 10 && seps >= 2 && (kinds == 2 || kinds == 4 || kinds == 1 || kinds & 8 != 0) {
        return groups == [3, 3, 4];
    }
    if nd == 11 && s[0] == b'1' && seps >= 3 && (kinds == 2 || kinds == 4 || kinds == 1) {
        return groups == [1, 3, 3, 4];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Entity, String)> {
        let mut v = vec![];
        Detectors::default().scan(text, &mut v);
        v.iter().map(|s| (s.entity, text[s.start..s.end].to_string())).collect()
    }

    #[test]
    fn emails_in_text() {
        assert_eq!(
            found("mail Jane.Doe+x@Example.co.uk now"),
            vec![(Entity::Email, "Jane.Doe+x@Example.co.uk".into())]
        );
        assert!(found("not@an address").is_empty());
        assert!(found("user@localhost").is_empty());
        // Text glued to the top-level label does not hide the address.
        for (text, email) in [
            ("a jane.doe@example.com-xxxx b", "jane.doe@example.com"),
            ("jane.doe@example.com1", "jane.doe@example.com"),
            ("jane.doe@mail.example.co.uk-2", "jane.doe@mail.example.co.uk"),
            ("jane.doe@example.com.x", "jane.doe@example.com"),
        ] {
            assert_eq!(found(text), vec![(Entity::Email, email.into())], "{text}");
        }
        assert!(found("build@1.2.3.4").is_empty());
        // Internationalized addresses (RFC 6531) and quoted local parts.
        for (text, email) in [
            ("kontakt: jörg@bücher.de, danke", "jörg@bücher.de"),
            ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
            ("почта: иван@пример.рф", "иван@пример.рф"),
            (r#"to "john smith"@example.com now"#, r#""john smith"@example.com"#),
        ] {
            assert_eq!(found(text), vec![(Entity::Email, email.into())], "{text}");
        }
    }

    #[test]
    fn cards_need_luhn_and_allow_separators() {
        assert_eq!(found("4111 1111 1111 1111"), vec![(Entity::Card, "4111 1111 1111 1111".into())]);
        assert_eq!(found("card:4111-1111-1111-1111."), vec![(Entity::Card, "4111-1111-1111-1111".into())]);
        assert_eq!(found("5500005555555559"), vec![(Entity::Card, "5500005555555559".into())]);
        assert!(found("4111111111111112").is_empty(), "bad Luhn");
        assert_eq!(found("4111.1111.1111.1111"), vec![(Entity::Card, "4111.1111.1111.1111".into())]);
        assert!(found("-3583503.876544").is_empty(), "a decimal number that passes Luhn");
    }

    #[test]
    fn uuids_are_not_cards_ssns_or_phones() {
        // Random UUIDs whose leading groups are digits that pass Luhn (1 in ~10,000).
        for u in [
            "42719259-7440-4891-a38b-6ac1a8f4bca0",
            "8F047AD6-3D58-4927-0051-903708326015",
            "0873e8d5-0441-43c1-4018-924684098026",
            "12345678-1234-1234-1234-123456789012",
        ] {
            for text in [u.to_string(), format!("{{{u},{u}}}"), format!("id \"{u}\" ok")] {
                assert!(found(&text).is_empty(), "{text}: {:?}", found(&text));
            }
        }
        // The same digits outside a UUID's shape still are what they look like.
        assert_eq!(found("42719259-7440-4891"), vec![(Entity::Card, "42719259-7440-4891".into())]);
        assert_eq!(
            found("4111 1111 1111 1111 42719259-7440-4891-a38b-6ac1a8f4bca0"),
            vec![(Entity::Card, "4111 1111 1111 1111".into())]
        );
        // Next to a UUID, an SSN is still one.
        assert_eq!(
            found("123-45-6789 42719259-7440-4891-a38b-6ac1a8f4bca0"),
            vec![(Entity::Ssn, "123-45-6789".into())]
        );
        // Glued to a word it is no UUID, and its digits are judged as before.
        assert_eq!(found("42719259-7440-4891-a38b-6ac1a8f4bca0x"), vec![(Entity::Card, "42719259-7440-4891".into())]);
    }

    #[test]
    fn ssn_with_dashes_but_not_plain_ids() {
        assert_eq!(found("ssn 123-45-6789"), vec![(Entity::Ssn, "123-45-6789".into())]);
        assert!(found("123456789").is_empty(), "plain 9-digit id is not an SSN by default");
        assert!(found("000-12-3456").is_empty());
        let d = Detectors { ssn_plain_digits: true, ..Default::default() };
        let mut v = vec![];
        d.scan("123456789", &mut v);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn phones() {
        assert_eq!(found("call +44 20 7946 0958"), vec![(Entity::Phone, "+44 20 7946 0958".into())]);
        assert_eq!(found("(555) 123-4567"), vec![(Entity::Phone, "(555) 123-4567".into())]);
        assert_eq!(found("555-123-4567"), vec![(Entity::Phone, "555-123-4567".into())]);
        assert!(found("order 5551234567").is_empty());
        assert!(found("2024-01-15").is_empty());
        assert_eq!(found("555.123.4567"), vec![(Entity::Phone, "555.123.4567".into())]);
        assert_eq!(found("1-555-123-4567"), vec![(Entity::Phone, "1-555-123-4567".into())]);
        assert!(found("host 192.168.1.100").is_empty(), "an IPv4 address");
        assert!(found("10.100.200.30").is_empty(), "an IPv4 address");
    }

    #[test]
    fn ibans_need_checksum() {
        assert_eq!(found("GB82 WEST 1234 5698 7654 32"), vec![(Entity::Iban, "GB82 WEST 1234 5698 7654 32".into())]);
        assert_eq!(found("DE89370400440532013000"), vec![(Entity::Iban, "DE89370400440532013000".into())]);
        assert!(found("GB83 WEST 1234 5698 7654 32").is_empty());
        // Lower case (as lower() writes it): at the country's length only.
        assert_eq!(found("iban gb82west12345698765432."), vec![(Entity::Iban, "gb82west12345698765432".into())]);
        assert_eq!(found("de89 3704 0044 0532 0130 00"), vec![(Entity::Iban, "de89 3704 0044 0532 0130 00".into())]);
        assert_eq!(found("Gb82West12345698765432"), vec![(Entity::Iban, "Gb82West12345698765432".into())]);
        // Checksums that hold at another length than the country's, or for no
        // country: taken in upper case, not in lower case.
        assert_eq!(found("GB04WEST123456987654"), vec![(Entity::Iban, "GB04WEST123456987654".into())]);
        assert!(found("gb04west123456987654").is_empty(), "20 characters, GB's are 22");
        assert_eq!(found("ZZ59ABCD12345678901234"), vec![(Entity::Iban, "ZZ59ABCD12345678901234".into())]);
        assert!(found("zz59abcd12345678901234").is_empty(), "no such country");
        // An upper-case IBAN with a lower-case word glued on is still found.
        assert_eq!(found("DE89370400440532013000abc"), vec![(Entity::Iban, "DE89370400440532013000".into())]);
    }

    #[test]
    fn secrets_keys_and_tokens() {
        assert_eq!(found("AKIAIOSFODNN7EXAMPLE"), vec![(Entity::AwsKey, "AKIAIOSFODNN7EXAMPLE".into())]);
        assert_eq!(found("db password=hunter2 ok"), vec![(Entity::Secret, "hunter2".into())]);
        assert_eq!(found(r#"{"Password": "s3cr et"}"#), vec![(Entity::Secret, "s3cr et".into())]);
        assert_eq!(found("Authorization: Bearer abcdef123456"), vec![(Entity::Secret, "abcdef123456".into())]);
        assert_eq!(found("DB_PASSWORD = s3cret&x=1"), vec![(Entity::Secret, "s3cret".into())]);
        assert_eq!(found("X-Api-Key: k-123"), vec![(Entity::Secret, "k-123".into())]);
        assert!(found("at 10:05:00 ratio=3:4 passwordless=true").is_empty(), "not secret keys");
        // Any part of a key that names a secret; keys ending in one.
        for (text, value) in [
            (
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            ("PGPASSWORD=x1", "x1"),
            ("secret_key: abcdefgh", "abcdefgh"),
            ("DB_PASS=hunter2", "hunter2"),
            ("db.credentials=xyz", "xyz"),
            (r#"{"aws_session_token": "FQoGZXIvYXdzEJr"}"#, "FQoGZXIvYXdzEJr"),
            ("GITHUB_TOKEN=abc", "abc"),
            ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
            ("authorization: Bearer abc.def", "abc.def"),
            (r#"{"Authorization": "Basic dXNlcjpw"}"#, "dXNlcjpw"),
        ] {
            assert_eq!(found(text), vec![(Entity::Secret, value.into())], "{text}");
        }
        // SQL's `PASSWORD '...'`, as a log line or pg_stat_activity shows it.
        for (text, value) in [
            ("ALTER ROLE bob PASSWORD 'Hunter2' VALID UNTIL 'infinity'", "Hunter2"),
            ("create user x with password 'it''s'", "it''s"),
            ("OPTIONS (user 'bob', password 'pw')", "pw"),
            ("SET app.api_key TO 'k-123'", "k-123"),
        ] {
            assert_eq!(found(text), vec![(Entity::Secret, value.into())], "{text}");
        }
        for text in [
            "pass: 10, fail: 2",
            "token_count=5",
            "secretary: Jane",
            "key=k1",
            "compass=north",
            "SELECT name FROM t WHERE kind = 'password'",
            "SET app.mode TO 'strict'",
        ] {
            assert!(found(text).is_empty(), "{text}");
        }
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-x";
        assert_eq!(found(&format!("t {jwt} x")), vec![(Entity::Jwt, jwt.into())]);
        // API tokens of well-known services, by prefix.
        for token in [
            "ghp_1234567890abcdefghijklmnopqrstuvwxyz12",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "glpat-xYz12345678901234567",
            "xoxb-123456789012-abcdefABCDEF",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "sk-proj-abcDEF1234567890ghijKLmn",
            "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
            "wg_dQbSThb4aV1NjvhSo3aHnpBZ2HiNMLEJY_8YL-m3Ty8",
        ] {
            assert_eq!(found(&format!("key {token}, ok")), vec![(Entity::Token, token.into())], "{token}");
        }
        for text in
            ["sk-learn-pipelines-are-great-here", "task-1234567890123456789012345", "ghp_short1", "the gho_ prefix"]
        {
            assert!(found(text).is_empty(), "{text}");
        }
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----";
        assert_eq!(found(pem), vec![(Entity::PrivateKey, pem.into())]);
    }

    #[test]
    fn entities_inside_longer_digit_runs() {
        let ssn = |t: &str| (Entity::Ssn, t.to_string());
        // Joined by a space, as string_agg(ssn, ' ') writes them.
        assert_eq!(found("123-45-6789 234-56-7890"), vec![ssn("123-45-6789"), ssn("234-56-7890")]);
        assert_eq!(found("123-45-6789 5"), vec![ssn("123-45-6789")]);
        assert_eq!(found("7 123-45-6789"), vec![ssn("123-45-6789")]);
        let card = |t: &str| (Entity::Card, t.to_string());
        assert_eq!(found("card 4111 1111 1111 1111 12/28"), vec![card("4111 1111 1111 1111")]);
        assert_eq!(found("4111 1111 1111 1111 2024"), vec![card("4111 1111 1111 1111")]);
        // However long the run, a card in it is found.
        let long = format!("{}4111 1111 1111 1111", "1 ".repeat(40));
        assert_eq!(found(&long), vec![card("4111 1111 1111 1111")]);
        let huge = format!("{}4111 1111 1111 1111 1", "1 ".repeat(500_000));
        assert_eq!(found(&huge), vec![card("4111 1111 1111 1111")]);
        assert_eq!(
            found("555-123-4567 555-765-4321"),
            vec![(Entity::Phone, "555-123-4567".into()), (Entity::Phone, "555-765-4321".into())]
        );
        // Nor begin after, or end before, a dot: these are numbers.
        for s in ["0.4111111111111111", "4111111111111111.5", "12.123-45-6789", "1.5 2.5 3.5 4.5"] {
            assert!(found(s).is_empty(), "{s}");
        }
    }

    #[test]
    fn plain_numbers_dates_and_words_are_left_alone() {
        for s in ["42", "123456789", "2024-01-15 10:00:00", "order #1234567", "hello world", "3.14159265358979"] {
            assert!(found(s).is_empty(), "{s}");
        }
    }
}
