//! A byte stream that may or may not be TLS, so the session code is written once.

use tokio::io::{AsyncRead, AsyncWrite};

/// Any duplex byte stream.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A boxed duplex stream (plain TCP or TLS).
pub type BoxStream = Box<dyn Duplex>;

/// Write all of `bytes`, then flush. The flush is what makes a TLS stream
/// send everything: tokio-rustls accepts plaintext it could not yet encrypt
/// and send (the socket was full) and keeps those records until the next
/// write or flush, so a large result's tail would wait forever for a write
/// that never comes. On plain TCP the flush costs nothing.
pub async fn send<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(bytes).await?;
    w.flush().await
}

/// End the stream as PostgreSQL does: over TLS with close_notify (libpq 17
/// reads a bare TCP close as "SSL error: unexpected eof" and reports it after
/// our last message, or counts a cancel request as failed). Bounded: a client
/// that stopped reading cannot hold the session.
pub async fn close<W: AsyncWrite + Unpin + ?Sized>(w: &mut W) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), w.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use crate::config::TlsSource;

    /// A TLS pair over an in-memory pipe that holds at most `capacity` bytes.
    async fn tls_pair(
        capacity: usize,
    ) -> (tokio_rustls::server::TlsStream<DuplexStream>, tokio_rustls::client::TlsStream<DuplexStream>) {
        let server = crate::tls::server_config(&TlsSource::SelfSigned, &[]).unwrap().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut server.self_signed_pem.as_deref().unwrap().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(capacity);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let (s, c) = tokio::join!(
            tokio_rustls::TlsAcceptor::from(server.config).accept(a),
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, b)
        );
        (s.unwrap(), c.unwrap())
    }

    /// Read `n` bytes, or give up after a second.
    async fn read_n(c: &mut tokio_rustls::client::TlsStream<DuplexStream>, n: usize) -> Option<Vec<u8>> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(1), c.read_exact(&mut got)).await.ok()?.ok()?;
        Some(got)
    }

    #[tokio::test]
    async fn what_send_returns_from_has_left_the_tls_stream() {
        // 100 KB into a 64 KB pipe nobody reads: write_all returns once rustls
        // holds the rest; only a flush pushes it out as the reader drains the pipe.
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let (mut s, mut c) = tls_pair(64 * 1024).await;
        s.write_all(&payload).await.unwrap();
        let stuck = read_n(&mut c, payload.len()).await;
        assert!(stuck.is_none(), "this test needs write_all to leave bytes in rustls");

        let (mut s, mut c) = tls_pair(64 * 1024).await;
        let sender = tokio::spawn(async move {
            super::send(&mut s, &payload).await.unwrap();
            (s, payload)
        });
        let got = read_n(&mut c, 100_000).await.expect("send left bytes behind");
        let (_s, payload) = sender.await.unwrap();
        assert_eq!(got, payload);
    }
}
