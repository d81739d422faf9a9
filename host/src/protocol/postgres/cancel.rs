//! Cancel-request mapping.
//!
//! Each client gets its own random (pid, secret) pair; the gateway remembers
//! which upstream backend it stands for. A CancelRequest must match both
//! values exactly, so one client can never cancel another's query, and the
//! upstream's real key never leaves the gateway.

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

/// The gateway's key table.
#[derive(Debug, Default, Clone)]
pub struct CancelMap {
    inner: Arc<Mutex<HashMap<(i32, i32), UpstreamKey>>>,
}

impl CancelMap {
    /// Register an upstream key; returns the (pid, secret) to give the client
    /// and a guard that unregisters it on drop.
    pub fn register(&self, key: UpstreamKey) -> CancelRegistration {
        let mut rng = rand::rngs::OsRng;
        let mut map = self.inner.lock();
        let client = loop {
            let k = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if !map.contains_key(&k) {
                break k;
            }
        };
        map.insert(client, key);
        CancelRegistration { map: self.clone(), client }
    }

    /// The upstream key for a client's cancel request, if it matches exactly.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<UpstreamKey> {
        self.inner.lock().get(&(pid, secret)).cloned()
    }
}

/// Removes its key from the map when dropped (the session ended).
#[derive(Debug)]
pub struct CancelRegistration {
    map: CancelMap,
    /// The key the client was given.
    pub client: (i32, i32),
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
        let reg = m.register(up.clone());
        let (pid, secret) = reg.client;
        assert_eq!(m.lookup(pid, secret), Some(up));
        assert_eq!(m.lookup(pid, secret.wrapping_add(1)), None);
        assert_eq!(m.lookup(7, 9), None, "the upstream's real key is not a client key");
        drop(reg);
        assert_eq!(m.lookup(pid, secret), None);
    }
}
