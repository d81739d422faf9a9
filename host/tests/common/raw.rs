//! A PostgreSQL session spoken by hand, for what no driver sends: messages
//! pipelined across Syncs, names reused, malformed bytes.

use std::time::Duration;

/// One frontend message: type, length, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    [&[tag][..], &((body.len() + 4) as i32).to_be_bytes(), body].concat()
}

/// Messages off a raw session until `count` of type `tag` (or the close):
/// whole messages only.
pub async fn read_until(raw: &mut tokio::net::TcpStream, tag: u8, count: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await;
        let n =
            read.unwrap_or_else(|_| panic!("no '{}' in {:?}", tag as char, String::from_utf8_lossy(&seen))).unwrap();
        seen.extend_from_slice(&buf[..n]);
        if n == 0 || tags_of(&seen).is_some_and(|t| t.iter().filter(|t| **t == tag).count() >= count) {
            return seen;
        }
    }
}

/// The message types in `bytes`, if it holds whole messages only.
pub fn tags_of(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut tags = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        tags.push(bytes[at]);
        at += 1 + i32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
    }
    (at == bytes.len()).then_some(tags)
}

pub fn tags(bytes: &[u8]) -> Vec<u8> {
    tags_of(bytes).expect("whole messages")
}

/// A plaintext session logged in by hand, read up to its first ReadyForQuery.
pub async fn raw_session(g: &super::TestGateway) -> tokio::net::TcpStream {
    raw_session_with_login(g).await.0
}

/// [`raw_session`], with what the gateway sent after the password.
pub async fn raw_session_with_login(g: &super::TestGateway) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", g.port)).await.unwrap();
    let mut startup = vec![];
    let body = b"user\0x\0database\0shop\0\0";
    startup.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(body);
    raw.write_all(&startup).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(n > 0 && buf[0] == b'R');
    let mut pw = vec![b'p'];
    let key = format!("{}\0", g.key);
    pw.extend_from_slice(&((4 + key.len()) as i32).to_be_bytes());
    pw.extend_from_slice(key.as_bytes());
    raw.write_all(&pw).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.expect("logged in").unwrap();
        assert!(n > 0, "closed during login");
        seen.extend_from_slice(&buf[..n]);
    }
    (raw, seen)
}

/// Parse `sql` as statement `name`, no parameter types given.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat())
}

/// Bind statement `stmt` to portal `portal`: no parameters, text results.
pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    msg(b'B', &[portal.as_bytes(), b"\0", stmt.as_bytes(), b"\0\0\0\0\0\0\0"].concat())
}

/// Execute portal `portal`, all rows.
pub fn execute(portal: &str) -> Vec<u8> {
    msg(b'E', &[portal.as_bytes(), b"\0\0\0\0\0"].concat())
}

/// Close statement `name`.
pub fn close_statement(name: &str) -> Vec<u8> {
    msg(b'C', &[b"S", name.as_bytes(), b"\0"].concat())
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// Sync.
pub fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

/// Send `messages`, read the answers up to their ReadyForQuery: the
/// answers' types and, lossily, their bytes.
pub async fn exchange(raw: &mut tokio::net::TcpStream, messages: &[Vec<u8>]) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    raw.write_all(&messages.concat()).await.unwrap();
    let answers = read_until(raw, b'Z', 1).await;
    (String::from_utf8_lossy(&tags(&answers)).into_owned(), String::from_utf8_lossy(&answers).into_owned())
}
