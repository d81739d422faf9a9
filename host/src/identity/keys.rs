//! Wardgate-issued service-account keys (`wg_…`).
//!
//! A key is 32 random bytes; only its SHA-256 is ever stored. Accounts come
//! from the config file (declarative) and from the state store
//! `STATE_DIR/service-accounts.json`, which `wardgate service-accounts
//! create|revoke` edit under an advisory lock with an atomic rename. The
//! gateway re-reads the store when its modification stamp changes, so a
//! revocation takes effect on the next connection attempt, without restart.
//! An unreadable store fails closed: its keys are refused, never guessed.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ServiceAccount;

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "service-accounts.json";

/// Problems with the key store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, locking or writing failed.
    #[error("service-account store {path}: {source}")]
    Io {
        /// Store file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid store.
    #[error("service-account store {path} is corrupt: {reason}")]
    Corrupt {
        /// Store file.
        path: PathBuf,
        /// Parse error.
        reason: String,
    },
    /// Bad request (duplicate name, unknown account, bad argument).
    #[error("{0}")]
    Invalid(String),
}

/// Generate a new service-account key and its stored hash.
pub fn generate_key() -> (String, String) {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let key = format!("wg_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b));
    let hash = key_hash(&key);
    (key, hash)
}

/// SHA-256 of a key, hex.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Is this a well-formed Wardgate key?
pub fn is_key_shaped(credential: &str) -> bool {
    credential.strip_prefix("wg_").is_some_and(|body| {
        body.len() >= 32 && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Kinds a key can have: machines, or a human's personal key (for approvers
/// where no OpenID Provider is configured).
pub const KINDS: [&str; 3] = ["agent", "service-account", "human"];

/// One account as stored (never the key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredAccount {
    /// Unique name; the principal is `sa:NAME`.
    pub name: String,
    /// `agent`, `service-account` or `human`.
    pub kind: String,
    /// Groups for grants and policies.
    #[serde(default)]
    pub groups: Vec<String>,
    /// SHA-256 of the key, hex.
    pub key_sha256: String,
    /// Sponsoring human, if any.
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Expiry, ms since the epoch.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Revocation time, ms since the epoch.
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
}

impl StoredAccount {
    fn runtime(&self) -> ServiceAccount {
        ServiceAccount {
            name: self.name.clone(),
            kind: self.kind.clone(),
            groups: self.groups.clone(),
            key_sha256: self.key_sha256.clone(),
            on_behalf_of: self.on_behalf_of.clone(),
            expires_at_ms: self.expires_at_ms,
            revoked: self.revoked_at_ms.is_some(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    accounts: Vec<StoredAccount>,
}

/// What `create` needs.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// `agent` or `service-account`.
    pub kind: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Sponsoring human.
    pub on_behalf_of: Option<String>,
    /// Lifetime from now.
    pub expires_in_ms: Option<u64>,
}

/// The state-store file of service accounts.
#[derive(Debug, Clone)]
pub struct AccountStore {
    path: PathBuf,
}

impl AccountStore {
    /// The store in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> Self {
        AccountStore { path: state_dir.join(STORE_FILE) }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io { path: self.path.clone(), source }
    }

    /// All accounts (none if the file does not exist yet).
    pub fn load(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self.read()?.accounts)
    }

    fn read(&self) -> Result<StoreFile, StoreError> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreFile { version: 1, accounts: vec![] }),
            Err(e) => Err(self.io(e)),
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: e.to_string() }),
        }
    }

    /// Read-modify-write under an exclusive lock; the new file replaces the old atomically.
    fn update<T>(&self, f: impl FnOnce(&mut Vec<StoredAccount>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        use std::os::unix::io::AsRawFd as _;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.path.with_extension("lock"))
            .map_err(|e| self.io(e))?;
        // SAFETY: flock on a file descriptor we own; released when `lock` drops.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io(std::io::Error::last_os_error()));
        }
        let mut file = self.read()?;
        let out = f(&mut file.accounts)?;
        file.version = 1;
        let tmp = self.path.with_extension("json.tmp");
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.io(e))?;
        let body = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Invalid(e.to_string()))?;
        w.write_all(&body).and_then(|_| w.sync_all()).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        Ok(out)
    }

    /// Create an account; returns the key (to show once) and the stored record.
    pub fn create(&self, new: NewAccount) -> Result<(String, StoredAccount), StoreError> {
        let valid_name = !new.name.is_empty()
            && new.name.len() <= 64
            && new.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return Err(StoreError::Invalid(format!(
                "invalid name \"{}\": use up to 64 letters, digits, '-', '_' or '.'",
                new.name
            )));
        }
        if !KINDS.contains(&new.kind.as_str()) {
            return Err(StoreError::Invalid(format!(
                "unknown kind \"{}\": use agent, service-account or human",
                new.kind
            )));
        }
        let (key, hash) = generate_key();
        let now = crate::util::now_ms();
        let acct = StoredAccount {
            name: new.name,
            kind: new.kind,
            groups: new.groups,
            key_sha256: hash,
            on_behalf_of: new.on_behalf_of,
            created_at_ms: now,
            expires_at_ms: new.expires_in_ms.map(|d| now + d),
            revoked_at_ms: None,
        };
        self.update(|all| {
            if all.iter().any(|a| a.name == acct.name && a.revoked_at_ms.is_none()) {
                return Err(StoreError::Invalid(format!(
                    "service account \"{}\" already exists; revoke it first to issue a new key",
                    acct.name
                )));
            }
            all.push(acct.clone());
            Ok(())
        })?;
        Ok((key, acct))
    }

    /// Revoke every live key of `name`; returns how many.
    pub fn revoke(&self, name: &str) -> Result<usize, StoreError> {
        self.update(|all| {
            let now = crate::util::now_ms();
            let mut n = 0;
            for a in all.iter_mut().filter(|a| a.name == name && a.revoked_at_ms.is_none()) {
                a.revoked_at_ms = Some(now);
                n += 1;
            }
            if n == 0 {
                return Err(StoreError::Invalid(format!("no live service account named \"{name}\" in the store")));
            }
            Ok(n)
        })
    }
}

/// Parse a lifetime: `30d`, `12h`, `90m`, `3600s`.
pub fn parse_lifetime_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok().filter(|n| *n > 0)?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

type Stamp = (SystemTime, u64, u64);
type Loaded = Result<HashMap<String, ServiceAccount>, String>;

impl Default for KeyRing {
    fn default() -> Self {
        KeyRing::new(&[], None)
    }
}

/// Looks keys up in the config's accounts and the (re-read on change) store.
#[derive(Debug)]
pub struct KeyRing {
    fixed: HashMap<String, ServiceAccount>,
    store: Option<AccountStore>,
    cache: parking_lot::Mutex<(Option<Stamp>, Loaded)>,
}

impl KeyRing {
    /// Accounts from config, plus the store (if any).
    pub fn new(fixed: &[ServiceAccount], store: Option<AccountStore>) -> Self {
        KeyRing {
            fixed: fixed.iter().map(|s| (s.key_sha256.clone(), s.clone())).collect(),
            store,
            cache: parking_lot::Mutex::new((None, Ok(HashMap::new()))),
        }
    }

    /// The account holding the key with this hash. `Err`: the store is unreadable.
    pub fn lookup(&self, hash: &str) -> Result<Option<ServiceAccount>, String> {
        if let Some(a) = self.fixed.get(hash) {
            return Ok(Some(a.clone()));
        }
        let Some(store) = &self.store else { return Ok(None) };
        use std::os::unix::fs::MetadataExt as _;
        let stamp = std::fs::metadata(store.path())
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
        let mut cache = self.cache.lock();
        if cache.0 != stamp || stamp.is_none() {
            let loaded = store
                .load()
                .map(|all| all.iter().map(|a| (a.key_sha256.clone(), a.runtime())).collect::<HashMap<_, _>>())
                .map_err(|e| e.to_string());
            if let Err(e) = &loaded {
                tracing::error!("{e}; refusing its keys until it is fixed");
            }
            *cache = (stamp, loaded);
        }
        match &cache.1 {
            Ok(m) => Ok(m.get(hash).cloned()),
            Err(e) => Err(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str) -> NewAccount {
        NewAccount {
            name: name.into(),
            kind: "agent".into(),
            groups: vec!["agents".into()],
            on_behalf_of: Some("alice".into()),
            expires_in_ms: Some(60_000),
        }
    }

    #[test]
    fn create_lookup_revoke_round_trip_through_the_store() {
        let dir = std::env::temp_dir().join(format!("wg-keys-{}", crate::util::random_id()));
        let store = AccountStore::in_dir(&dir);
        let ring = KeyRing::new(&[], Some(store.clone()));
        let (key, acct) = store.create(new("bot")).unwrap();
        assert!(is_key_shaped(&key));
        let raw = std::fs::read_to_string(store.path()).unwrap();
        assert!(!raw.contains(&key) && raw.contains(&acct.key_sha256), "only the hash is stored");
        let found = ring.lookup(&key_hash(&key)).unwrap().unwrap();
        assert_eq!((found.name.as_str(), found.revoked), ("bot", false));
        assert!(store.create(new("bot")).unwrap_err().to_string().contains("already exists"));
        assert!(store.create(new("bad name")).is_err());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(store.revoke("bot").unwrap(), 1);
        assert!(ring.lookup(&key_hash(&key)).unwrap().unwrap().revoked, "the ring sees the revocation");
        assert!(store.revoke("bot").is_err());
        std::fs::write(store.path(), "{not json").unwrap();
        assert!(ring.lookup(&key_hash(&key)).is_err(), "a corrupt store fails closed");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime_ms("30d"), Some(30 * 86_400_000));
        assert_eq!(parse_lifetime_ms("90m"), Some(5_400_000));
        for bad in ["", "d", "0d", "5y", "-1d", "1.5h"] {
            assert_eq!(parse_lifetime_ms(bad), None, "{bad}");
        }
    }
}
