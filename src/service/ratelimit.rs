//! Rate limits: a token bucket per key (an agreement, or a client address
//! before authentication) holding up to `per_minute` requests and
//! refilling at that rate, so a burst of one minute's allowance passes and
//! then requests are paced.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key (agreement id, or client address before
/// authentication).
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before the full ones (which carry no information) are
/// dropped, so that many addresses cannot grow the map without bound.
const PRUNE_AT: usize = 10_000;

impl RateLimiter {
    /// Takes one request from the key's bucket; `Err(seconds)` until one
    /// is available when the bucket is empty.
    pub fn check(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), u64> {
        self.with_bucket(key, per_minute, now, |b, rate| {
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Ok(())
            } else {
                Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
            }
        })
    }

    /// Whether the key's bucket holds a request, without taking it;
    /// `Err(seconds)` until it does.
    pub fn peek(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), u64> {
        self.with_bucket(key, per_minute, now, |b, rate| {
            if b.tokens >= 1.0 {
                Ok(())
            } else {
                Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
            }
        })
    }

    /// Takes one request from the key's bucket, if it holds one.
    pub fn charge(&self, key: &str, per_minute: u32, now: Instant) {
        self.with_bucket(key, per_minute, now, |b, _| {
            b.tokens = (b.tokens - 1.0).max(0.0);
        })
    }

    fn with_bucket<T>(
        &self,
        key: &str,
        per_minute: u32,
        now: Instant,
        f: impl FnOnce(&mut Bucket, f64) -> T,
    ) -> T {
        let capacity = f64::from(per_minute.max(1));
        let rate = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(key) {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < capacity
            });
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(capacity);
        b.last = now;
        f(b, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_minutes_allowance_then_paced() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", 3, t0).is_ok());
        }
        let wait = l.check("a", 3, t0).unwrap_err();
        assert_eq!(wait, 20);
        assert!(l.check("b", 3, t0).is_ok(), "agreements are independent");
        assert!(l.check("a", 3, t0 + Duration::from_secs(20)).is_ok());
        assert!(l.check("a", 3, t0 + Duration::from_secs(21)).is_err());
    }

    #[test]
    fn peek_looks_and_charge_takes() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        assert!(l.peek("10.0.0.1", 2, t0).is_ok());
        l.charge("10.0.0.1", 2, t0);
        assert!(l.peek("10.0.0.1", 2, t0).is_ok());
        l.charge("10.0.0.1", 2, t0);
        l.charge("10.0.0.1", 2, t0);
        assert_eq!(l.peek("10.0.0.1", 2, t0), Err(30));
        assert!(l.peek("10.0.0.1", 2, t0 + Duration::from_secs(30)).is_ok());
    }
}
