//! Signed checkpoints: an ed25519 signature over a session's chain head.
//!
//! The hash chain shows that no event was edited, inserted or removed in
//! the middle; it cannot show that the end was cut off, or that a whole file
//! was rewritten by someone who recomputed every hash. A checkpoint event
//! carries the gateway's signature over (session, seq, head hash): without
//! the private key nobody can extend, shorten-and-re-sign or forge a
//! recording. Checkpoints are written every [`EVERY`] events, at most
//! [`MAX_UNSIGNED_AGE`] after an unsigned event, on every flush, and when the
//! session closes, so a closed session always ends with one.

use std::time::Duration;

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

/// Events between checkpoints. On a busy session the age bound
/// ([`MAX_UNSIGNED_AGE`]) is what limits the unsigned tail; this caps what a
/// burst leaves unsigned without putting a signature (~40 µs, on the
/// session's own path) on every few dozen requests.
pub const EVERY: u64 = 1024;
/// Longest an event stays unsigned while the session is open.
pub const MAX_UNSIGNED_AGE: Duration = Duration::from_millis(200);

/// The gateway's checkpoint key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("public", &self.public_hex()).finish()
    }
}

/// What is signed.
pub fn message(session: &str, seq: u64, head: &str) -> Vec<u8> {
    format!("wardgate.checkpoint.v1\0{session}\0{seq}\0{head}").into_bytes()
}

/// A new private key: 32 random bytes, hex.
pub fn generate_seed_hex() -> String {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    hex::encode(seed)
}

impl Signer {
    /// From a key file's text: the 32-byte seed in hex.
    pub fn from_seed_hex(text: &str) -> Result<Signer, String> {
        let seed = hex::decode(text.trim()).map_err(|_| "not hex".to_string())?;
        if seed.len() != 32 {
            return Err(format!("{} bytes, expected a 32-byte ed25519 seed", seed.len()));
        }
        let key = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| e.to_string())?;
        Ok(Signer { key })
    }

    /// From a key file (`gateway.recording_key_file`); the file's text is
    /// wiped from memory once parsed. Errors name the file.
    pub fn from_key_file(path: &std::path::Path) -> Result<Signer, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_seed_hex(&crate::config::Secret::new(text)).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The public key, hex (what verifiers need).
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.public_key().as_ref())
    }

    /// Signature over a chain head, hex.
    pub fn sign(&self, session: &str, seq: u64, head: &str) -> String {
        hex::encode(self.key.sign(&message(session, seq, head)).as_ref())
    }
}

/// Check a checkpoint's signature with a public key (raw 32 bytes).
pub fn verify(public: &[u8], session: &str, seq: u64, head: &str, sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex) else { return false };
    UnparsedPublicKey::new(&ED25519, public).verify(&message(session, seq, head), &sig).is_ok()
}

/// A public key given as hex, or a file holding it.
pub fn parse_public(s: &str) -> Result<Vec<u8>, String> {
    let text = if std::path::Path::new(s).is_file() {
        std::fs::read_to_string(s).map_err(|e| format!("cannot read {s}: {e}"))?
    } else {
        s.to_string()
    };
    let key = hex::decode(text.trim()).map_err(|_| "the public key is not hex".to_string())?;
    if key.len() != 32 {
        return Err(format!("the public key has {} bytes, expected 32", key.len()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_session_seq_and_head() {
        let s = Signer::from_seed_hex(&generate_seed_hex()).unwrap();
        let public = hex::decode(s.public_hex()).unwrap();
        let sig = s.sign("sess", 7, "abc");
        assert!(verify(&public, "sess", 7, "abc", &sig));
        assert!(!verify(&public, "sess", 6, "abc", &sig));
        assert!(!verify(&public, "other", 7, "abc", &sig));
        assert!(!verify(&public, "sess", 7, "abd", &sig));
        let other = Signer::from_seed_hex(&generate_seed_hex()).unwrap();
        assert!(!verify(&hex::decode(other.public_hex()).unwrap(), "sess", 7, "abc", &sig));
        assert!(Signer::from_seed_hex("abcd").is_err());
    }
}
