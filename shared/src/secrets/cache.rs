//! An in-memory cache in front of a [`SecretStore`], for the worker: a burst
//! of actions on one integration reads its credentials once, not once per
//! action (Key Vault throttles, and every read is a round trip).
//!
//! Entries are keyed by (company, identifier) and live for a fixed TTL. A
//! rotation stores a new identifier, so it is a new key and is read fresh;
//! `put` and `delete` through this cache drop the company's entries, and any
//! other process's change is seen at the latest when the TTL runs out.
//! Concurrent misses for one key share a single read; errors are never
//! cached. Values stay [`SecretValue`]s, which never print.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{SecretError, SecretStore, SecretValue};

/// Default bound on the number of cached secrets.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

type Key = (Uuid, String);

/// One cached read: empty while the first reader fetches it.
#[derive(Default)]
struct Slot {
    value: OnceCell<(SecretValue, Instant)>,
}

impl Slot {
    /// True when the value is present and past its expiry.
    fn expired(&self, now: Instant) -> bool {
        self.value
            .get()
            .is_some_and(|(_, expires_at)| *expires_at <= now)
    }
}

/// A [`SecretStore`] that caches `get` results for a TTL.
pub struct CachedSecretStore {
    inner: Arc<dyn SecretStore>,
    ttl: Duration,
    max_entries: usize,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
}

impl CachedSecretStore {
    /// Wraps `inner`, caching reads for `ttl` (zero disables caching).
    pub fn new(inner: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        Self::with_max_entries(inner, ttl, DEFAULT_MAX_ENTRIES)
    }

    /// As [`CachedSecretStore::new`], holding at most `max_entries` secrets.
    pub fn with_max_entries(
        inner: Arc<dyn SecretStore>,
        ttl: Duration,
        max_entries: usize,
    ) -> Self {
        Self {
            inner,
            ttl,
            max_entries: max_entries.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The number of entries held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Slot>>> {
        // The map is left consistent at every await-free step, so a panic
        // elsewhere while holding the lock does not make it unusable.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot for a key: the live one, or a fresh one in its place.
    fn slot(&self, key: &Key) -> Arc<Slot> {
        let now = Instant::now();
        let mut slots = self.lock();
        if let Some(slot) = slots.get(key)
            && !slot.expired(now)
        {
            return slot.clone();
        }
        if !slots.contains_key(key) && slots.len() >= self.max_entries {
            slots.retain(|_, slot| !slot.expired(now));
            if slots.len() >= self.max_entries {
                // Still full of live entries: drop the one closest to expiry.
                let soonest = slots
                    .iter()
                    .filter_map(|(k, slot)| slot.value.get().map(|(_, at)| (k.clone(), *at)))
                    .min_by_key(|(_, at)| *at)
                    .map(|(k, _)| k);
                if let Some(k) = soonest {
                    slots.remove(&k);
                }
            }
        }
        let slot = Arc::new(Slot::default());
        slots.insert(key.clone(), slot.clone());
        slot
    }

    /// Drops a slot whose read failed, unless it was replaced meanwhile.
    fn forget(&self, key: &Key, slot: &Arc<Slot>) {
        let mut slots = self.lock();
        if slots
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, slot) && current.value.get().is_none())
        {
            slots.remove(key);
        }
    }

    fn forget_company(&self, company_id: Uuid) {
        self.lock().retain(|(company, _), _| *company != company_id);
    }
}

#[async_trait]
impl SecretStore for CachedSecretStore {
    async fn put(
        &self,
        company_id: Uuid,
        integration_id: Uuid,
        value: &SecretValue,
    ) -> Result<String, SecretError> {
        let result = self.inner.put(company_id, integration_id, value).await;
        self.forget_company(company_id);
        result
    }

    async fn get(&self, company_id: Uuid, id: &str) -> Result<SecretValue, SecretError> {
        if self.ttl.is_zero() {
            return self.inner.get(company_id, id).await;
        }
        let key = (company_id, id.to_owned());
        let slot = self.slot(&key);
        let read = slot
            .value
            .get_or_try_init(|| async {
                let value = self.inner.get(company_id, id).await?;
                Ok::<_, SecretError>((value, Instant::now() + self.ttl))
            })
            .await;
        match read {
            Ok((value, _)) => Ok(value.clone()),
            Err(e) => {
                self.forget(&key, &slot);
                Err(e)
            }
        }
    }

    async fn delete(&self, company_id: Uuid, id: &str) -> Result<(), SecretError> {
        let result = self.inner.delete(company_id, id).await;
        self.forget_company(company_id);
        result
    }

    fn describe(&self) -> String {
        format!(
            "{}; reads cached for {} s",
            self.inner.describe(),
            self.ttl.as_secs()
        )
    }

    async fn check(&self) -> Result<(), SecretError> {
        self.inner.check().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A stand-in backend that counts reads and can be told to fail; it tests
    /// the cache, not a backend.
    #[derive(Default)]
    struct CountingStore {
        reads: AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl SecretStore for CountingStore {
        async fn put(&self, _: Uuid, _: Uuid, _: &SecretValue) -> Result<String, SecretError> {
            Ok("id-2".into())
        }
        async fn get(&self, _: Uuid, id: &str) -> Result<SecretValue, SecretError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(SecretError::Transient {
                    message: "throttled".into(),
                    retry_after_secs: Some(1),
                });
            }
            Ok(SecretValue::new(format!("value of {id}")))
        }
        async fn delete(&self, _: Uuid, _: &str) -> Result<(), SecretError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "counting".into()
        }
        async fn check(&self) -> Result<(), SecretError> {
            Ok(())
        }
    }

    fn cached(ttl: Duration) -> (Arc<CountingStore>, Arc<CachedSecretStore>) {
        let inner = Arc::new(CountingStore::default());
        let cache = Arc::new(CachedSecretStore::new(inner.clone(), ttl));
        (inner, cache)
    }

    #[tokio::test]
    async fn a_concurrent_burst_of_gets_reads_the_inner_store_once() {
        let (inner, cache) = cached(Duration::from_secs(60));
        let company = Uuid::new_v4();
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let cache = cache.clone();
            reads.spawn(async move { cache.get(company, "id-1").await });
        }
        for value in reads.join_all().await {
            assert_eq!(value.unwrap().expose(), "value of id-1");
        }
        cache.get(company, "id-1").await.unwrap();
        assert_eq!(inner.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_expired_entry_is_read_again() {
        let (inner, cache) = cached(Duration::from_millis(100));
        let company = Uuid::new_v4();
        cache.get(company, "id-1").await.unwrap();
        cache.get(company, "id-1").await.unwrap();
        assert_eq!(inner.reads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        cache.get(company, "id-1").await.unwrap();
        assert_eq!(inner.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let (inner, cache) = cached(Duration::from_secs(60));
        let company = Uuid::new_v4();
        inner.failing.store(true, Ordering::SeqCst);
        let err = cache.get(company, "id-1").await.unwrap_err();
        assert!(matches!(err, SecretError::Transient { .. }));
        assert!(cache.get(company, "id-1").await.is_err());
        assert_eq!(inner.reads.load(Ordering::SeqCst), 2);
        assert!(cache.is_empty(), "a failed read leaves no entry");
        inner.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            cache.get(company, "id-1").await.unwrap().expose(),
            "value of id-1"
        );
        assert_eq!(inner.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn keys_are_per_company_and_identifier_and_a_rotation_is_a_new_key() {
        let (inner, cache) = cached(Duration::from_secs(60));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        cache.get(a, "id-1").await.unwrap();
        cache.get(b, "id-1").await.unwrap();
        cache.get(a, "id-2").await.unwrap();
        assert_eq!(inner.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn put_and_delete_drop_the_companys_entries() {
        let (inner, cache) = cached(Duration::from_secs(60));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        cache.get(a, "id-1").await.unwrap();
        cache.get(b, "id-1").await.unwrap();
        cache
            .put(a, Uuid::new_v4(), &SecretValue::new("new"))
            .await
            .unwrap();
        cache.get(a, "id-1").await.unwrap();
        cache.get(b, "id-1").await.unwrap();
        assert_eq!(inner.reads.load(Ordering::SeqCst), 3);
        cache.delete(a, "id-1").await.unwrap();
        cache.get(a, "id-1").await.unwrap();
        assert_eq!(inner.reads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_cache_never_holds_more_than_its_bound() {
        let inner = Arc::new(CountingStore::default());
        let cache = CachedSecretStore::with_max_entries(inner, Duration::from_secs(60), 3);
        let company = Uuid::new_v4();
        for i in 0..10 {
            cache.get(company, &format!("id-{i}")).await.unwrap();
            assert!(cache.len() <= 3);
        }
    }

    #[tokio::test]
    async fn a_zero_ttl_disables_caching() {
        let (inner, cache) = cached(Duration::ZERO);
        let company = Uuid::new_v4();
        cache.get(company, "id-1").await.unwrap();
        cache.get(company, "id-1").await.unwrap();
        assert_eq!(inner.reads.load(Ordering::SeqCst), 2);
        assert!(cache.is_empty());
    }
}
