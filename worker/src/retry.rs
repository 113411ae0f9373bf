//! The retry policy: exponential backoff with full jitter, capped, and the
//! provider's `Retry-After` honoured when it asks for longer.

use std::time::Duration;

use rand::Rng;

/// Backoff parameters.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the second attempt (before jitter).
    pub base: Duration,
    /// Upper bound on any delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based):
    /// `base × 2^(attempt-1)`, capped, with jitter in its upper half, and
    /// never shorter than `retry_after`.
    pub fn delay(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.cap);
        let half = ceiling / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        let delay = half + Duration::from_millis(jitter);
        match retry_after {
            Some(asked) => delay.max(asked.min(self.cap)),
            None => delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds() {
        let b = Backoff::default();
        for attempt in 1..=6 {
            let ceiling = Duration::from_secs(1 << (attempt - 1));
            for _ in 0..50 {
                let d = b.delay(attempt, None);
                assert!(
                    d >= ceiling / 2 && d <= ceiling + Duration::from_millis(1),
                    "attempt {attempt}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn delays_are_capped() {
        let b = Backoff::default();
        assert!(b.delay(30, None) <= Duration::from_secs(300) + Duration::from_millis(1));
    }

    #[test]
    fn retry_after_is_honoured_when_longer() {
        let b = Backoff::default();
        assert!(b.delay(1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }
}
