//! Cancel-request mapping.
//!
//! Each client sees its upstream backend's real process id (as
//! `pg_backend_pid()` and NOTIFY messages report it; clients compare them)
//! with a secret of the gateway's own; the gateway remembers which upstream
//! backend the pair stands for. A CancelRequest must match both values
//! exactly, so one client can never cancel another's query, and the
//! upstream's real secret never leaves the gateway. A cancel also signals the
//! session itself, which withdraws a statement held for approval.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

/// Where to send a cancel for one client key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamKey {
    /// Upstream host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Backend process id.
    pub pid: i32,
    /// Backend secret.
    pub secret: i32,
}

/// An upstream key and the session's cancel signal.
type Entry = (UpstreamKey, Arc<tokio::sync::watch::Sender<u64>>);

/// The gateway's key table.
#[derive(Debug, Default, Clone)]
pub struct CancelMap {
    inner: Arc<Mutex<HashMap<(i32, i32), Entry>>>,
}

impl CancelMap {
    /// Register an upstream key; returns the (pid, secret) to give the client
    /// and a guard that unregisters it on drop.
    pub fn register(&self, key: UpstreamKey) -> CancelRegistration {
        let mut rng = rand::rngs::OsRng;
        let mut map = self.inner.lock();
        let client = loop {
            let k = (key.pid, rng.gen::<i32>());
            if k.1 != key.secret && !map.contains_key(&k) {
                break k;
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        map.insert(client, (key, Arc::new(tx)));
        CancelRegistration { map: self.clone(), client, cancelled: rx }
    }

    /// The upstream key for a client's cancel request, if it matches
    /// exactly; the session is signalled too.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<UpstreamKey> {
        let map = self.inner.lock();
        let (key, signal) = map.get(&(pid, secret))?;
        signal.send_modify(|n| *n += 1);
        Some(key.clone())
    }
}

/// Removes its key from the map when dropped (the session ended).
#[derive(Debug)]
pub struct CancelRegistration {
    map: CancelMap,
    /// The key the client was given.
    pub client: (i32, i32),
    /// Changes whenever the client sends a cancel request.
    pub cancelled: tokio::sync::watch::Receiver<u64>,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.map.inner.lock().remove(&self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_maps_and_it_is_gone_after_the_session() {
        let m = CancelMap::default();
        let up = UpstreamKey { host: "h".into(), port: 1, pid: 7, secret: 9 };
        let mut reg = m.register(up.clone());
        let (pid, secret) = reg.client;
        assert_eq!(pid, 7, "the client sees the backend's real pid");
        assert_ne!(secret, 9, "but not its secret");
        assert!(!reg.cancelled.has_changed().unwrap());
        assert_eq!(m.lookup(pid, secret), Some(up));
        assert!(reg.cancelled.has_changed().unwrap(), "the session is signalled");
        reg.cancelled.mark_unchanged();
        assert_eq!(m.lookup(pid, secret.wrapping_add(1)), None);
        assert_eq!(m.lookup(7, 9), None, "the upstream's real key is not a client key");
        drop(reg);
        assert_eq!(m.lookup(pid, secret), None);
    }
}
