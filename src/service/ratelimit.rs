//! Per-agreement rate limits: a token bucket per agreement holding up to
//! `requests_per_minute` requests and refilling at that rate, so a burst
//! of one minute's allowance passes and then requests are paced.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one request from the agreement's bucket; `Err(seconds)` until
    /// one is available when the bucket is empty.
    pub fn check(&self, agreement: &str, per_minute: u32, now: Instant) -> Result<(), u64> {
        let capacity = f64::from(per_minute.max(1));
        let rate = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(agreement.to_string()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
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
}
