//! The blob store: uploaded content (module zips) by SHA-1, bounded by total bytes.

use bytes::Bytes;
use lru::LruCache;

/// Default bound on the bytes of blob content kept in memory.
pub const DEFAULT_CAPACITY: usize = 512 * 1024 * 1024;

/// Why a blob was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// The body does not hash to the announced name.
    HashMismatch {
        /// The hash the worker announced.
        claimed: String,
        /// The SHA-1 of the body.
        actual: String,
    },
    /// The blob alone is larger than the whole store.
    TooLarge {
        /// Its size in bytes.
        len: usize,
    },
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::HashMismatch { claimed, actual } => {
                write!(f, "blob announced as {claimed} hashes to {actual}")
            }
            BlobError::TooLarge { len } => write!(f, "blob of {len} bytes exceeds the store"),
        }
    }
}

impl std::error::Error for BlobError {}

/// A least-recently-used map from SHA-1 hex to content, evicting past `capacity` bytes.
#[derive(Debug)]
pub struct BlobStore {
    /// The blobs, most recently used first; unbounded by count, bounded by `bytes`.
    entries: LruCache<String, Bytes>,
    /// Sum of the lengths of `entries`, kept so eviction needs no scan.
    bytes: usize,
    /// Upper bound on `bytes`.
    capacity: usize,
}

impl BlobStore {
    /// An empty store holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> BlobStore {
        BlobStore {
            entries: LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    /// Checks `body` against `hash` and keeps it, evicting old blobs as needed.
    ///
    /// # Errors
    ///
    /// [`BlobError`] when the hash does not match or the blob cannot fit.
    pub fn insert(&mut self, hash: &str, body: Bytes) -> Result<(), BlobError> {
        let actual = sha1_smol::Sha1::from(&body).digest().to_string();
        if !actual.eq_ignore_ascii_case(hash) {
            return Err(BlobError::HashMismatch {
                claimed: hash.to_owned(),
                actual,
            });
        }
        if body.len() > self.capacity {
            return Err(BlobError::TooLarge { len: body.len() });
        }
        if let Some(old) = self.entries.put(actual, body.clone()) {
            self.bytes -= old.len();
        }
        self.bytes += body.len();
        while self.bytes > self.capacity {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.len(),
                None => break,
            }
        }
        Ok(())
    }

    /// The content named `hash`, marking it recently used.
    pub fn get(&mut self, hash: &str) -> Option<Bytes> {
        self.entries.get(&hash.to_ascii_lowercase()).cloned()
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        sha1_smol::Sha1::from(data).digest().to_string()
    }

    #[test]
    fn stores_and_verifies() {
        let mut store = BlobStore::new(100);
        store
            .insert(&sha(b"hello"), Bytes::from_static(b"hello"))
            .unwrap();
        assert_eq!(store.get(&sha(b"hello")).unwrap().as_ref(), b"hello");
        let err = store
            .insert(&sha(b"x"), Bytes::from_static(b"y"))
            .unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }));
        assert_eq!(store.bytes(), 5);
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let mut store = BlobStore::new(10);
        let (a, b, c) = (b"aaaa", b"bbbb", b"cccc");
        store.insert(&sha(a), Bytes::from_static(a)).unwrap();
        store.insert(&sha(b), Bytes::from_static(b)).unwrap();
        assert!(store.get(&sha(a)).is_some()); // a is now the most recent
        store.insert(&sha(c), Bytes::from_static(c)).unwrap();
        assert!(store.get(&sha(b)).is_none());
        assert!(store.get(&sha(a)).is_some());
        assert!(store.get(&sha(c)).is_some());
        assert_eq!(store.bytes(), 8);
        let big = vec![0u8; 11];
        assert!(matches!(
            store.insert(&sha(&big), Bytes::from(big)),
            Err(BlobError::TooLarge { len: 11 })
        ));
    }
}
