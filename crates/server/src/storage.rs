//! The one interface every storage driver implements.
//!
//! The kv service validates a whole request (keys, deadlines) before it calls a storage, so
//! a driver receives only well-formed input: non-blank keys and absolute deadlines. Methods
//! are async and fallible because most drivers (boltdb's file, redis, memcached) do I/O; the
//! memory driver simply never fails.

use async_trait::async_trait;
use bytes::Bytes;

/// An absolute deadline: milliseconds since the Unix epoch (0 for instants before it).
pub type DeadlineMs = u64;

/// One item of a `kv.Set`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetItem {
    pub key: String,
    pub value: Bytes,
    /// `None`: the key never expires. A deadline at or before now removes the key.
    pub deadline: Option<DeadlineMs>,
}

/// Sizes a storage can report cheaply, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Stored keys (may include expired keys not yet swept).
    pub keys: usize,
    /// Keys with a deadline.
    pub index_entries: usize,
    /// Bytes of keys and values.
    pub data_bytes: usize,
}

/// A storage failure, reported to the client as an error reply.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend could not be reached or failed the operation.
    #[error("{0}")]
    Backend(String),
    /// The driver cannot do this at all (memcached cannot read TTLs).
    #[error("{0}")]
    Unsupported(String),
    /// The request holds something this backend cannot store (a key memcached refuses);
    /// found before anything was sent.
    #[error("{0}")]
    Invalid(String),
}

/// A named key-value store that the `kv.*` methods operate on.
///
/// Contract, shared by every driver (the memory driver is the reference):
/// * reads (`has`, `mget`, `ttl`) return only keys that exist and have not expired, in the
///   order asked; a key is expired from its deadline on, to the millisecond;
/// * `set` replaces value and deadline; a deadline at or before now deletes the key;
/// * `mexpire` changes the deadline of existing keys and leaves missing keys missing;
/// * `delete` of a missing key succeeds; `clear` empties this storage only.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The driver's name, for logs and error texts.
    fn driver(&self) -> &'static str;

    async fn has(&self, keys: &[String]) -> Result<Vec<String>, StorageError>;

    async fn mget(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError>;

    async fn set(&self, items: Vec<SetItem>) -> Result<(), StorageError>;

    async fn mexpire(&self, items: Vec<(String, DeadlineMs)>) -> Result<(), StorageError>;

    /// `(key, deadline)` for each existing key; `None` when it never expires.
    async fn ttl(&self, keys: &[String])
        -> Result<Vec<(String, Option<DeadlineMs>)>, StorageError>;

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError>;

    async fn clear(&self) -> Result<(), StorageError>;

    /// Releases resources (threads, files, connections) at shutdown.
    async fn close(&self) -> Result<(), StorageError>;

    /// Sizes, if the driver knows them without I/O.
    fn stats(&self) -> Option<StorageStats> {
        None
    }

    /// The remote servers behind this storage (`"redis 10.0.0.1:6379"`), for logs; `None`
    /// when the data lives in this process.
    fn backend(&self) -> Option<&str> {
        None
    }

    /// Asks the remote servers whether they answer (PING, a no-op). Used at startup to log
    /// an unreachable backend; calls still fail or succeed on their own.
    async fn check(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
