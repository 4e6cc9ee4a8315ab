//! Verified API keys, remembered so that a request does not cost a ledger
//! round trip (HTTP ingest is called for every event an upstream emits).
//!
//! A revocation must still take effect at once on every replica, so the
//! cache is trusted only while this process *hears* revocations: each API
//! process binds a queue of its own to the control exchange (see
//! `courier serve`) and counts as a listener while its consumer runs. With
//! no listener (no broker, a reconnect in progress) nothing is cached and
//! every request reads the ledger. A revocation deletes the key from the
//! ledger first and then announces it with a publisher confirm; every
//! listening process forgets the key when the notice arrives.
//!
//! Races are closed by an epoch: a lookup notes it before reading the
//! ledger and caches its answer only if no revocation (nor a listener
//! stopping) came in between, so an answer read just before a delete cannot
//! outlive the notice of that delete. As a last bound, an entry is used for
//! [`MAX_AGE`] at most, should a notice be lost without the listener
//! noticing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use courier_model::WorkspaceId;

/// The longest an entry is used without reading the ledger again.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Entries kept at most; reaching it empties the cache (keys in use come
/// back with their next request).
const CAPACITY: usize = 10_000;

/// SHA-256 of a key, the form the ledger stores (as hex).
pub type KeyDigest = [u8; 32];

#[derive(Clone, Debug)]
struct Verified {
    key_id: Arc<str>,
    workspace: WorkspaceId,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct KeyCache {
    /// Revocation listeners running in this process; the cache is used
    /// only while there is one.
    listeners: AtomicUsize,
    /// Bumped by every revocation and every listener that stops.
    epoch: AtomicU64,
    entries: RwLock<HashMap<KeyDigest, Verified>>,
}

/// Where a lookup started, for [`KeyCache::remember`].
#[derive(Clone, Copy, Debug)]
pub struct Epoch(u64);

impl KeyCache {
    /// The workspace of a key verified lately, if the cache may be trusted.
    pub fn get(&self, digest: &KeyDigest) -> Option<WorkspaceId> {
        if self.listeners.load(Ordering::Acquire) == 0 {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(digest)
            .filter(|v| v.at.elapsed() < MAX_AGE)
            .map(|v| v.workspace.clone())
    }

    /// To be taken before reading the ledger.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// Remembers a key read from the ledger after `since`, unless a
    /// revocation came in between or nobody listens for revocations.
    pub fn remember(&self, since: Epoch, digest: KeyDigest, key_id: &str, workspace: WorkspaceId) {
        if self.listeners.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that `revoked` takes to bump it.
        if self.epoch.load(Ordering::Acquire) != since.0 {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(
            digest,
            Verified {
                key_id: key_id.into(),
                workspace,
                at: Instant::now(),
            },
        );
    }

    /// Forgets the key `key_id`, and makes lookups in flight forget what
    /// they read.
    pub fn revoked(&self, key_id: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, v| &*v.key_id != key_id);
    }

    /// A revocation listener is running until the guard is dropped; from
    /// then on, if it was the last, nothing is cached until one runs again.
    pub fn listening(self: &Arc<Self>) -> Listening {
        self.listeners.fetch_add(1, Ordering::AcqRel);
        Listening(Arc::clone(self))
    }

    fn stopped_listening(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.listeners.fetch_sub(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Whether the cache is in use (a revocation listener runs).
    pub fn in_use(&self) -> bool {
        self.listeners.load(Ordering::Acquire) > 0
    }
}

/// See [`KeyCache::listening`].
#[derive(Debug)]
pub struct Listening(Arc<KeyCache>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.stopped_listening();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(id: &str) -> WorkspaceId {
        WorkspaceId::parse(id).unwrap()
    }

    #[test]
    fn nothing_is_cached_while_nobody_listens_for_revocations() {
        let cache = Arc::new(KeyCache::default());
        cache.remember(cache.epoch(), [1; 32], "key_1", ws("acme"));
        assert_eq!(cache.get(&[1; 32]), None);

        let listening = cache.listening();
        cache.remember(cache.epoch(), [1; 32], "key_1", ws("acme"));
        assert_eq!(cache.get(&[1; 32]), Some(ws("acme")));
        drop(listening);
        assert_eq!(cache.get(&[1; 32]), None);
        // Back to listening: the old entry is gone, not just hidden.
        let _listening = cache.listening();
        assert_eq!(cache.get(&[1; 32]), None);
    }

    #[test]
    fn a_revocation_forgets_the_key_and_what_lookups_in_flight_read() {
        let cache = Arc::new(KeyCache::default());
        let _listening = cache.listening();
        cache.remember(cache.epoch(), [1; 32], "key_1", ws("acme"));
        cache.remember(cache.epoch(), [2; 32], "key_2", ws("acme"));

        // A lookup of key 3 reads the ledger, key 3 is revoked meanwhile.
        let before = cache.epoch();
        cache.revoked("key_1");
        cache.remember(before, [3; 32], "key_3", ws("acme"));
        assert_eq!(cache.get(&[3; 32]), None, "read before the revocation");
        assert_eq!(cache.get(&[1; 32]), None);
        assert_eq!(cache.get(&[2; 32]), Some(ws("acme")), "other keys stay");
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let cache = Arc::new(KeyCache::default());
        let _listening = cache.listening();
        for n in 0..(CAPACITY as u32 + 5) {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&n.to_le_bytes());
            cache.remember(cache.epoch(), digest, "key", ws("acme"));
        }
        let len = cache.entries.read().unwrap().len();
        assert!(len <= CAPACITY, "{len}");
    }
}
