//! The listener's certificate, re-read when its files change.
//!
//! Certificates are rotated by writing new PEM files (cert-manager, certbot,
//! a deploy script). [`CertStore`] serves the current pair to every new
//! handshake and [`CertStore::watch`] polls the files' identity (inode, size,
//! mtime) every [`POLL`]; a changed pair is loaded and checked (the key must
//! match the leaf certificate) before it replaces the old one. A bad or
//! half-written pair is refused with one log line and the old certificate
//! stays in service, so rotation can never take the listener down.
//! Connections already open keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::{provider, read_certs, read_key, TlsError};

/// How often the files are checked.
pub const POLL: Duration = Duration::from_secs(2);

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { ino: m.ino(), len: m.len(), mtime: m.modified().ok() })
}

/// The certificate chain and key a listener presents.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    files: Option<(PathBuf, PathBuf)>,
    seen: Mutex<Option<(Stamp, Stamp)>>,
    /// Successful reloads.
    pub reloads: AtomicU64,
    /// Changed files that were refused (the old certificate stayed).
    pub reload_failures: AtomicU64,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("files", &self.files).field("leaf_sha256", &self.fingerprint()).finish()
    }
}

fn certified(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey::from_der(certs, key, &provider())?)
}

impl CertStore {
    /// A fixed pair (a generated self-signed certificate).
    pub fn fixed(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<CertStore>, TlsError> {
        Ok(Arc::new(CertStore {
            current: ArcSwap::from_pointee(certified(certs, key)?),
            files: None,
            seen: Mutex::new(None),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// Load `cert` and `key` (PEM); fails if they are unreadable or do not match.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let seen = stamp(cert).zip(stamp(key));
        let ck = certified(read_certs(cert)?, read_key(key)?)?;
        Ok(Arc::new(CertStore {
            current: ArcSwap::from_pointee(ck),
            files: Some((cert.to_path_buf(), key.to_path_buf())),
            seen: Mutex::new(seen),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// SHA-256 of the leaf certificate now in service (hex).
    pub fn fingerprint(&self) -> String {
        let ck = self.current.load();
        ck.cert.first().map(|c| hex::encode(Sha256::digest(c.as_ref()))).unwrap_or_default()
    }

    /// Reload if the files changed since last seen. `Ok(true)`: a new pair is
    /// in service; `Ok(false)`: nothing changed; `Err`: the changed pair was
    /// refused and the old one stays.
    pub fn check(&self) -> Result<bool, TlsError> {
        let Some((cert, key)) = &self.files else { return Ok(false) };
        let now = stamp(cert).zip(stamp(key));
        {
            let mut seen = self.seen.lock();
            if now.is_none() || *seen == now {
                // A missing file is mid-rotation (or gone): keep serving what we have.
                return Ok(false);
            }
            *seen = now;
        }
        match read_certs(cert).and_then(|c| certified(c, read_key(key)?)) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Poll the files every [`POLL`] for as long as the runtime lives. `what`
    /// names the listener in logs.
    pub fn watch(self: &Arc<Self>, what: &'static str) -> Option<tokio::task::JoinHandle<()>> {
        self.files.as_ref()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let me2 = me.clone();
                match tokio::task::spawn_blocking(move || me2.check()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(listener = what, leaf_sha256 = %me.fingerprint(), "TLS certificate reloaded")
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(
                        listener = what,
                        "TLS certificate files changed but were refused; still serving the previous certificate: {e}"
                    ),
                    Err(e) => tracing::error!(listener = what, "TLS certificate check failed: {e}"),
                }
            }
        }))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_changed_pair_is_served_and_a_bad_one_is_refused_keeping_the_old() {
        let dir = tempdir();
        let (c, k) = write_pair(&dir, "one.test");
        let store = CertStore::from_files(&c, &k).unwrap();
        let first = store.fingerprint();
        assert!(!store.check().unwrap(), "nothing changed");

        std::thread::sleep(Duration::from_millis(20));
        write_pair(&dir, "two.test");
        assert!(store.check().unwrap());
        let second = store.fingerprint();
        assert_ne!(first, second);

        // A key that does not belong to the certificate: refused, second stays.
        let other = rcgen::generate_simple_self_signed(vec!["three.test".to_string()]).unwrap();
        std::fs::write(&k, other.signing_key.serialize_pem()).unwrap();
        let e = store.check().unwrap_err();
        assert!(e.to_string().contains("match") || e.to_string().contains("inconsistent"), "{e}");
        assert_eq!(store.fingerprint(), second);
        // Garbage: refused too.
        std::fs::write(&c, "not a certificate").unwrap();
        assert!(store.check().is_err());
        assert_eq!(store.fingerprint(), second);
        assert_eq!(store.reloads.load(Ordering::Relaxed), 1);
        assert_eq!(store.reload_failures.load(Ordering::Relaxed), 2);
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("wardgate-tls-{}", crate::util::random_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
