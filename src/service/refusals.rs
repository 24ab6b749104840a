//! Unauthenticated refusals, counted instead of logged one by one.
//!
//! A request that never authenticates (no token, a malformed, unknown or
//! doubled credential, an unknown `/v1` route, or the per-address limit
//! before authentication) releases nothing and belongs to no agreement.
//! Writing one hash-chained audit row for each let a wrong-token flood
//! write 2,000 rows a second. Instead they are counted in memory per
//! client address (IPv6: per /64), minute and code, and every completed
//! minute is added to the `refusal_counts` table of the state database
//! ([`crate::state::StateStore::add_refusals`]); what is left is written
//! when the service stops. The table grows by at most one row per address,
//! minute and code, whatever the request rate. A crash loses at most the
//! counts of the last minute or so; every authenticated request still
//! gets its own audit entry before its response leaves.
//!
//! The same failures charge the address's bucket of the limit before
//! authentication ([`super::ratelimit::RateLimiter::charge`]): when it is
//! empty, every `/v1` request from that address is refused with 429
//! before its token is even looked at, until the bucket refills.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::state::RefusalCount;

/// Distinct (minute, address, code) keys kept in memory at most; beyond
/// that, new addresses are counted under `*`.
const MAX_KEYS: usize = 100_000;

/// The key a client address is counted and limited under: the address,
/// or the /64 of an IPv6 address (one host holds a whole /64); `""` when
/// unknown.
pub fn address_key(addr: Option<&str>) -> String {
    match addr.map(|a| a.parse::<IpAddr>()) {
        Some(Ok(ip)) => super::conn::address_key(ip).to_string(),
        Some(Err(_)) => addr.unwrap_or_default().to_string(),
        None => String::new(),
    }
}

/// Unauthenticated refusals counted in memory per (minute, address,
/// code) until they are flushed to the state database.
#[derive(Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<(i64, String, String), u64>>,
}

impl Refusals {
    /// Counts one refusal at `time` from `addr` with `code`.
    pub fn record(&self, time: DateTime<Utc>, addr: &str, code: &str) {
        let minute = time.timestamp().div_euclid(60) * 60;
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (minute, addr.to_string(), code.to_string());
        if m.len() >= MAX_KEYS && !m.contains_key(&key) {
            key.1 = "*".into();
        }
        *m.entry(key).or_insert(0) += 1;
    }

    /// Takes the counts of the minutes before `before` (all when `None`).
    pub fn drain(&self, before: Option<DateTime<Utc>>) -> Vec<RefusalCount> {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let taken = match before {
            None => std::mem::take(&mut *m),
            Some(t) => {
                let current = t.timestamp().div_euclid(60) * 60;
                let rest = m.split_off(&(current, String::new(), String::new()));
                std::mem::replace(&mut *m, rest)
            }
        };
        taken
            .into_iter()
            .map(|((minute, client_addr, code), count)| RefusalCount {
                minute: DateTime::from_timestamp(minute, 0)
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                client_addr,
                code,
                count,
            })
            .collect()
    }

    /// Puts counts back (their write failed; the next flush retries).
    pub fn restore(&self, counts: Vec<RefusalCount>) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for c in counts {
            let minute = DateTime::parse_from_rfc3339(&c.minute)
                .map(|t| t.timestamp())
                .unwrap_or(0);
            *m.entry((minute, c.client_addr, c.code)).or_insert(0) += c.count;
        }
    }
}

/// Writes the counts of completed minutes (all of them when `all`) to the
/// state database; on failure they are kept for the next try.
pub async fn flush(state: &std::sync::Arc<super::AppState>, all: bool) {
    let counts = state.refusals.drain((!all).then(|| state.clock.now()));
    if counts.is_empty() {
        return;
    }
    let store = std::sync::Arc::clone(&state.store);
    let written = tokio::task::spawn_blocking(move || {
        let r = store.add_refusals(&counts);
        (r, counts)
    })
    .await;
    match written {
        Ok((Ok(()), _)) => {}
        Ok((Err(e), counts)) => {
            eprintln!("agregat: refusal counts not written yet ({e}); retrying");
            state.refusals.restore(counts);
        }
        Err(e) => eprintln!("agregat: writing refusal counts failed ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_minute_address_and_code() {
        let r = Refusals::default();
        let t: DateTime<Utc> = "2026-11-28T03:00:10Z".parse().unwrap();
        for _ in 0..5 {
            r.record(t, "10.0.0.1", "token_unknown");
        }
        r.record(t, "10.0.0.2", "token_unknown");
        r.record(
            t + chrono::Duration::seconds(60),
            "10.0.0.1",
            "token_unknown",
        );
        let done = r.drain(Some(t + chrono::Duration::seconds(70)));
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(done[0].minute, "2026-11-28T03:00:00Z");
        assert_eq!(done[0].count, 5);
        let rest = r.drain(None);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].minute, "2026-11-28T03:01:00Z");
        r.restore(rest.clone());
        assert_eq!(r.drain(None), rest);
        assert_eq!(address_key(Some("2001:db8:0:1:2:3:4:5")), "2001:db8:0:1::");
    }
}
