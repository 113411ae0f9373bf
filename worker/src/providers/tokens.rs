//! Session tokens cached per integration account: Wazuh JWTs (valid 900 s)
//! and PAN-OS keys obtained with `type=keygen`.
//!
//! Each account (provider, base URL, credentials, hashed) has its own slot
//! behind an async mutex, so concurrent actions of one integration
//! authenticate once and share the token instead of racing to log in.
//! Rotated credentials hash to a new slot, so a stale token is never used
//! with new credentials.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::ProviderError;

/// The cache; one per worker process, shared by clones of `Providers`.
#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<[u8; 32], Slot>>,
}

/// One account's token, locked while it is being obtained.
type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

struct Token {
    value: String,
    obtained: Instant,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    /// The cached token of `account` if younger than `max_age` (any age when
    /// `None`), else a fresh one from `obtain`, cached.
    ///
    /// # Errors
    /// Whatever `obtain` fails with; nothing is cached then.
    pub async fn get_or_obtain<F, Fut>(
        &self,
        account: [u8; 32],
        max_age: Option<Duration>,
        obtain: F,
    ) -> Result<String, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, ProviderError>>,
    {
        let slot = self.slot(account);
        let mut token = slot.lock().await;
        if let Some(cached) = token.as_ref()
            && max_age.is_none_or(|max| cached.obtained.elapsed() < max)
        {
            return Ok(cached.value.clone());
        }
        let value = obtain().await?;
        *token = Some(Token {
            value: value.clone(),
            obtained: Instant::now(),
        });
        Ok(value)
    }

    /// Drops `account`'s token if it is still `stale` (the provider refused
    /// it); a token another action renewed meanwhile is kept.
    pub async fn forget(&self, account: [u8; 32], stale: &str) {
        let slot = self.slot(account);
        let mut token = slot.lock().await;
        if token.as_ref().is_some_and(|t| t.value == stale) {
            *token = None;
        }
    }

    fn slot(&self, account: [u8; 32]) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(account)
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    async fn token(cache: &TokenCache, calls: &AtomicU32, max_age: Option<Duration>) -> String {
        cache
            .get_or_obtain([1; 32], max_age, || async {
                Ok(format!("t{}", calls.fetch_add(1, Ordering::SeqCst)))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_token_is_reused_until_it_is_too_old_or_forgotten() {
        let cache = TokenCache::default();
        let calls = AtomicU32::new(0);
        assert_eq!(token(&cache, &calls, None).await, "t0");
        assert_eq!(token(&cache, &calls, None).await, "t0");
        cache.forget([1; 32], "someone-else's").await;
        assert_eq!(token(&cache, &calls, None).await, "t0");
        cache.forget([1; 32], "t0").await;
        assert_eq!(token(&cache, &calls, None).await, "t1");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            token(&cache, &calls, Some(Duration::from_millis(10))).await,
            "t2"
        );
    }

    #[tokio::test]
    async fn a_failed_login_caches_nothing() {
        let cache = TokenCache::default();
        let failed = cache
            .get_or_obtain([2; 32], None, || async {
                Err(ProviderError::Permanent {
                    message: "no".into(),
                })
            })
            .await;
        assert!(failed.is_err());
        let calls = AtomicU32::new(5);
        let fresh = cache
            .get_or_obtain([2; 32], None, || async {
                Ok(format!("t{}", calls.fetch_add(1, Ordering::SeqCst)))
            })
            .await
            .unwrap();
        assert_eq!(fresh, "t5");
    }
}
