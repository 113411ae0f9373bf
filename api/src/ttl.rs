//! What this process learnt recently and may reuse for a bounded time.
//!
//! [`TtlMap`](crate::ttl::TtlMap) holds values for at most its time to live, and at most its
//! capacity of them: the api's caches (verified board credentials, token
//! checks, companies' backlogs) are each one of these, so each says only
//! what it keeps and for how long.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// A map whose entries expire `ttl` after they were inserted.
///
/// Expired entries are never returned. An insert sweeps them out when a
/// `ttl` has passed since the last sweep, so the map holds what was
/// inserted within about two `ttl`s. A full map also sweeps when an entry
/// has expired and a [`FULL_SWEEP_SHARE`]th of its capacity has been
/// inserted since the last sweep, so a sweep's cost is spread over that
/// many inserts; a map still full drops new keys. A full map costs lookups,
/// never memory.
#[derive(Debug)]
pub struct TtlMap<K, V> {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

/// A full map sweeps at most once per this share of its capacity of
/// inserts.
pub const FULL_SWEEP_SHARE: usize = 16;

#[derive(Debug)]
struct Inner<K, V> {
    entries: HashMap<K, (Instant, V)>,
    swept: Instant,
    /// Inserts since the last sweep.
    inserts: usize,
    /// The earliest moment an entry held was learnt.
    oldest: Option<Instant>,
    /// The last [`clear`](TtlMap::clear): values learnt before it are
    /// dropped.
    cleared: Option<Instant>,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    /// An empty map whose entries live `ttl`, holding at most `capacity`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                swept: Instant::now(),
                inserts: 0,
                oldest: None,
                cleared: None,
            }),
        }
    }

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) < self.ttl
    }

    /// The value inserted for `key` less than the time to live ago.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let inner = self.lock();
        match inner.entries.get(key) {
            Some((at, value)) if self.fresh(*at, now) => Some(value.clone()),
            _ => None,
        }
    }

    /// Keeps `value` for `key`, as learnt at `at` (its time to live counts
    /// from then: pass the moment the value was read, not the moment it
    /// arrived). A value learnt before the one held, or before the last
    /// [`clear`](Self::clear), is older news and is dropped, so a slow read
    /// cannot overwrite what a later one, or a later
    /// [`insert`](Self::insert), said.
    pub fn insert_at(&self, key: K, value: V, at: Instant) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.entries.get(&key).is_some_and(|(held, _)| *held > at)
            || inner.cleared.is_some_and(|cleared| cleared > at)
        {
            return;
        }
        inner.inserts = inner.inserts.saturating_add(1);
        let full = inner.entries.len() >= self.capacity && !inner.entries.contains_key(&key);
        let expired = inner.oldest.is_some_and(|oldest| !self.fresh(oldest, now));
        if now.saturating_duration_since(inner.swept) >= self.ttl
            || (full && expired && inner.inserts >= self.capacity / FULL_SWEEP_SHARE)
        {
            let ttl = self.ttl;
            inner
                .entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            inner.swept = now;
            inner.inserts = 0;
            inner.oldest = inner.entries.values().map(|(at, _)| *at).min();
        }
        if inner.entries.len() < self.capacity || inner.entries.contains_key(&key) {
            inner.entries.insert(key, (at, value));
            inner.oldest = Some(inner.oldest.map_or(at, |oldest| oldest.min(at)));
        }
    }

    /// Keeps `value` for `key` from now.
    pub fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    /// Changes the value kept for `key`, if it is still fresh; its time to
    /// live is not renewed.
    pub fn update(&self, key: &K, change: impl FnOnce(&mut V)) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some((at, value)) = inner.entries.get_mut(key)
            && now.saturating_duration_since(*at) < self.ttl
        {
            change(value);
        }
    }

    /// Forgets every entry, and every value learnt before now that is
    /// inserted later.
    pub fn clear(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.entries.clear();
        inner.oldest = None;
        inner.cleared = Some(now);
    }

    /// Entries held, fresh or not yet swept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_returned_until_its_time_to_live_has_passed_counted_from_when_it_was_learnt() {
        let map = TtlMap::new(Duration::from_secs(60), 8);
        map.insert("fresh", 1);
        assert_eq!(map.get(&"fresh"), Some(1));
        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(61)) else {
            return; // a clock this close to its origin cannot say "a minute ago"
        };
        map.insert_at("stale", 2, long_ago);
        assert_eq!(map.get(&"stale"), None);
        map.update(&"stale", |v| *v = 3);
        assert_eq!(map.get(&"stale"), None);
        map.update(&"fresh", |v| *v += 10);
        assert_eq!(map.get(&"fresh"), Some(11));
    }

    #[test]
    fn a_value_learnt_before_the_one_held_does_not_replace_it() {
        let map = TtlMap::new(Duration::from_secs(60), 8);
        let read_at = Instant::now();
        map.insert("user", "changed");
        map.insert_at("user", "read before the change", read_at);
        assert_eq!(map.get(&"user"), Some("changed"));
        map.insert("user", "read after");
        assert_eq!(map.get(&"user"), Some("read after"));
    }

    #[test]
    fn a_clear_forgets_every_entry_and_every_value_read_before_it() {
        let map = TtlMap::new(Duration::from_secs(60), 8);
        let read_before = Instant::now();
        map.insert("held", 1);
        map.clear();
        assert_eq!(map.get(&"held"), None);
        map.insert_at("late", 2, read_before);
        assert_eq!(map.get(&"late"), None);
        assert_eq!(map.len(), 0);
        map.insert("read after", 3);
        assert_eq!(map.get(&"read after"), Some(3));
    }

    #[test]
    fn a_full_map_sweeps_what_expired_and_then_drops_new_keys_but_still_renews_old_ones() {
        let map = TtlMap::new(Duration::from_secs(60), 2);
        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(61)) else {
            return;
        };
        map.insert_at(1, "expired", long_ago);
        map.insert(2, "two");
        // Full: the sweep takes the expired entry out, so 3 fits.
        map.insert(3, "three");
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&3), Some("three"));
        // Full of fresh entries: a new key is dropped, a known one renewed.
        map.insert(4, "four");
        assert_eq!(map.get(&4), None);
        map.insert(2, "two again");
        assert_eq!(map.get(&2), Some("two again"));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn a_full_map_sweeps_once_per_share_of_its_capacity_of_inserts() {
        let (ttl, capacity) = (Duration::from_secs(60), 64);
        let share = capacity / FULL_SWEEP_SHARE;
        let map = TtlMap::new(ttl, capacity);
        let now = Instant::now();
        let (Some(long_ago), Some(soon_stale)) = (
            now.checked_sub(ttl + Duration::from_secs(1)),
            now.checked_sub(ttl - Duration::from_millis(200)),
        ) else {
            return;
        };
        // Full: two entries expired, two about to, the rest fresh.
        for key in 0..capacity {
            let at = match key {
                0 | 1 => long_ago,
                2 | 3 => soon_stale,
                _ => now,
            };
            map.insert_at(key, key, at);
        }
        assert_eq!(map.len(), capacity);
        // The inserts that filled it count: the next new key sweeps the two
        // expired entries out and takes a place; one more fills the other.
        map.insert(100, 100);
        map.insert(101, 101);
        assert_eq!((map.get(&100), map.get(&101)), (Some(100), Some(101)));
        assert_eq!(map.len(), capacity);

        // Two more entries expire. Until a share of the capacity has been
        // inserted since the sweep, new keys are dropped and nothing is
        // swept; the share's last insert sweeps and gets in.
        std::thread::sleep(Duration::from_millis(250));
        for key in 200..200 + share - 2 {
            map.insert(key, key);
            assert_eq!(
                map.get(&key),
                None,
                "key {key} got in before a sweep was due"
            );
            assert_eq!(map.len(), capacity);
        }
        map.insert(300, 300);
        assert_eq!(map.get(&300), Some(300));
        assert_eq!(map.len(), capacity - 1);
    }
}
