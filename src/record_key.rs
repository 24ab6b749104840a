//! The record key: a stable pseudo-random key per person, derived from the
//! NIK with HMAC-SHA256 under a secret held by Disdukcapil.
//!
//! The key is stable across snapshots (same NIK, same secret, same key) and
//! cannot be recomputed without the secret. It is stored in the
//! `record_key` column, is never queryable, and feeds the cell-key method.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Environment variable holding the secret itself (hex or raw text).
pub const SECRET_ENV: &str = "AGREGAT_RECORD_KEY_SECRET";

/// Minimum secret length in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

impl SecretError {
    /// An unreadable secret file is the environment's; a bad one usage.
    pub fn category(&self) -> crate::error::ErrorCategory {
        match self {
            SecretError::Read { .. } => crate::error::ErrorCategory::Io,
            _ => crate::error::ErrorCategory::Usage,
        }
    }
}

/// Errors loading the record-key secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret file could not be read.
    #[error(
        "cannot read the record-key secret file '{path}': {source}; pass --secret-file with a readable file or set {SECRET_ENV}"
    )]
    Read {
        /// The `--secret-file` path.
        path: PathBuf,
        /// Why reading (as UTF-8 text) failed.
        source: std::io::Error,
    },
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "the record-key secret from {origin} is {len} bytes; it must be at least {MIN_SECRET_BYTES} random bytes (e.g. `head -c 32 /dev/urandom | xxd -p -c 64 > secret.key`)"
    )]
    TooShort {
        /// Where the secret came from: `file '…'` or the environment
        /// variable's name.
        origin: String,
        /// Length of the secret in bytes (hex decoded, or the raw text).
        len: usize,
    },
    /// Neither a secret file nor [`SECRET_ENV`] was given.
    #[error("no record-key secret: pass --secret-file FILE or set {SECRET_ENV}")]
    Missing,
}

/// The HMAC secret. Its bytes never leave this type; only a fingerprint
/// (a second HMAC, not the secret's hash) is ever written out.
#[derive(Clone)]
pub struct RecordKeySecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for RecordKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordKeySecret({})", self.fingerprint())
    }
}

impl RecordKeySecret {
    /// Builds a secret from text: a hex string is decoded, anything else is
    /// taken as raw bytes. Surrounding whitespace is ignored.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, SecretError> {
        let t = text.trim();
        let key = match hex::decode(t) {
            Ok(bytes) => bytes,
            Err(_) => t.as_bytes().to_vec(),
        };
        if key.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort {
                origin: origin.to_string(),
                len: key.len(),
            });
        }
        Ok(RecordKeySecret { key })
    }

    /// Reads the secret from a file, hex or raw text as in
    /// [`RecordKeySecret::from_text`].
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_text(&text, &format!("file '{}'", path.display()))
    }

    /// The file if given, else the environment variable.
    pub fn load(file: Option<&Path>) -> Result<Self, SecretError> {
        match file {
            Some(p) => Self::from_file(p),
            None => match std::env::var(SECRET_ENV) {
                Ok(v) => Self::from_text(&v, SECRET_ENV),
                Err(_) => Err(SecretError::Missing),
            },
        }
    }

    /// A keyed hasher ready for [`RecordKeyHasher::key`].
    pub fn hasher(&self) -> RecordKeyHasher {
        RecordKeyHasher {
            mac: Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length"),
        }
    }

    /// Identifies the secret without revealing it, so a manifest can show
    /// that two snapshots share keys.
    pub fn fingerprint(&self) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"agregat record-key secret fingerprint v1");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

/// Derives record keys; reuses the keyed state for speed.
#[derive(Clone)]
pub struct RecordKeyHasher {
    mac: Hmac<Sha256>,
}

impl RecordKeyHasher {
    /// The first 8 bytes of HMAC-SHA256(secret, NIK), big-endian.
    pub fn key(&self, nik: &str) -> u64 {
        let mut mac = self.mac.clone();
        mac.update(nik.as_bytes());
        let out = mac.finalize().into_bytes();
        u64::from_be_bytes(out[..8].try_into().expect("32-byte MAC"))
    }
}

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> RecordKeySecret {
        RecordKeySecret::from_text(&"ab".repeat(32), "test").unwrap()
    }

    #[test]
    fn keys_are_stable_and_secret_dependent() {
        let a = secret().hasher();
        assert_eq!(a.key("6171014501900001"), a.key("6171014501900001"));
        assert_ne!(a.key("6171014501900001"), a.key("6171014501900002"));
        let other = RecordKeySecret::from_text(&"cd".repeat(32), "test").unwrap();
        assert_ne!(
            other.hasher().key("6171014501900001"),
            a.key("6171014501900001")
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = RecordKeySecret::from_text("short", "test").unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let s = format!("{:?}", secret());
        assert!(!s.contains("abab"), "{s}");
    }
}
