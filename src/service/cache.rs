//! The response cache for cell-key releases.
//!
//! A cell-key release is a deterministic function of the agreement (its
//! elements, scope and protection), the snapshot and the SQL text: the
//! same question always gets the same protected answer. Repeats (the
//! education office's saved query, a dashboard refreshing) are therefore
//! served from encoded bytes, skipping planning, validation, execution and
//! encoding. Authentication, validity, stage, rate limit and the audit
//! entry still happen for every request.
//!
//! The key covers the policy's content hash, so any change to any
//! agreement file (elements narrowed, scope changed, ptable replaced)
//! invalidates every entry. DP releases are not cached here: the engine's
//! release cache already returns a repeat free of charge, with metadata
//! that says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use sha2::{Digest, Sha256};

use crate::output::Format;

/// Entries kept before the cache is cleared.
const MAX_ENTRIES: usize = 2048;
/// Bytes kept before the cache is cleared.
const MAX_BYTES: usize = 256 << 20;

/// One encoded release and what its audit entry needs.
pub struct CachedRelease {
    /// The encoded release, sent again as it is.
    pub body: Bytes,
    /// Hex SHA-256 of `body`: the result hash of the audit entry.
    pub body_sha256: String,
    /// The protection metadata as ASCII JSON, for the
    /// `X-Agregat-Protection` header.
    pub protection: Option<String>,
    /// The release's facts, for the audit entry of a repeat.
    pub facts: crate::release::Facts,
}

/// Encoded cell-key releases by question key, bounded by entries and bytes
/// (cleared as a whole when full).
#[derive(Default)]
pub struct ResponseCache {
    inner: Mutex<(HashMap<String, Arc<CachedRelease>>, usize)>,
}

impl ResponseCache {
    /// The key of a question: policy content, agreement, snapshot, format
    /// and the exact SQL text.
    pub fn key(
        policy_sha256: &str,
        agreement: &str,
        snapshot: &str,
        format: Format,
        sql: &str,
    ) -> String {
        let mut h = Sha256::new();
        for part in [
            policy_sha256,
            agreement,
            snapshot,
            &format!("{format:?}"),
            sql,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// The cached release of a key, if the question was answered before
    /// under the same policy content.
    pub fn get(&self, key: &str) -> Option<Arc<CachedRelease>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(key)
            .cloned()
    }

    /// Stores an encoded release under its key. Bodies over 16 MiB are not
    /// kept; when the entry or byte budget would be exceeded, the whole
    /// cache is cleared first.
    pub fn put(&self, key: String, value: CachedRelease) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let size = value.body.len();
        if size > MAX_BYTES / 16 {
            return;
        }
        if g.0.len() >= MAX_ENTRIES || g.1 + size > MAX_BYTES {
            g.0.clear();
            g.1 = 0;
        }
        g.1 += size;
        if let Some(old) = g.0.insert(key, Arc::new(value)) {
            // A key stored again: its old body no longer counts.
            g.1 -= old.body.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storing_a_key_again_counts_its_bytes_once() {
        let cache = ResponseCache::default();
        let release = |n: usize| CachedRelease {
            body: Bytes::from(vec![b'x'; n]),
            body_sha256: String::new(),
            protection: None,
            facts: crate::release::Facts::default(),
        };
        cache.put("a".into(), release(100));
        cache.put("a".into(), release(40));
        cache.put("b".into(), release(10));
        assert_eq!(cache.inner.lock().unwrap().1, 50);
        assert_eq!(cache.get("a").unwrap().body.len(), 40);
    }

    #[test]
    fn keys_separate_every_part() {
        let k = |p, a, s, f, q| ResponseCache::key(p, a, s, f, q);
        let base = k("p", "a", "s", Format::Json, "q");
        assert_ne!(base, k("p2", "a", "s", Format::Json, "q"));
        assert_ne!(base, k("p", "a2", "s", Format::Json, "q"));
        assert_ne!(base, k("p", "a", "s2", Format::Json, "q"));
        assert_ne!(base, k("p", "a", "s", Format::Csv, "q"));
        assert_ne!(base, k("p", "a", "s", Format::Json, "q "));
        // Length prefixes: shifting text between parts changes the key.
        assert_ne!(
            k("ab", "c", "s", Format::Json, "q"),
            k("a", "bc", "s", Format::Json, "q")
        );
        let c = ResponseCache::default();
        c.put(
            base.clone(),
            CachedRelease {
                body: Bytes::from_static(b"x"),
                body_sha256: String::new(),
                protection: None,
                facts: crate::release::Facts {
                    cells: 1,
                    ..Default::default()
                },
            },
        );
        assert_eq!(c.get(&base).unwrap().facts.cells, 1);
        assert!(c.get("other").is_none());
    }
}
