//! A byte stream that may or may not be TLS, so the session code is written once.

use tokio::io::{AsyncRead, AsyncWrite};

/// Any duplex byte stream.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A boxed duplex stream (plain TCP or TLS).
pub type BoxStream = Box<dyn Duplex>;
