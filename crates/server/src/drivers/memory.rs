//! The `memory` driver: a [`rrkv_engine::Engine`] and its sweeper thread.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use rrkv_engine::{Engine, Sweeper};

use crate::storage::{DeadlineMs, SetItem, Storage, StorageError, StorageStats};

/// An in-process storage. Its data lives as long as the server process.
pub struct MemoryStorage {
    engine: Engine,
    sweeper: Mutex<Option<Sweeper>>,
}

impl MemoryStorage {
    /// Wraps `engine` and starts its sweeper.
    pub fn new(engine: Engine) -> MemoryStorage {
        let sweeper = engine.start_sweeper();
        MemoryStorage {
            engine,
            sweeper: Mutex::new(Some(sweeper)),
        }
    }

    /// The engine, for statistics.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn driver(&self) -> &'static str {
        "memory"
    }

    async fn has(&self, keys: &[String]) -> Result<Vec<String>, StorageError> {
        Ok(keys
            .iter()
            .filter(|k| self.engine.contains(k.as_bytes()))
            .cloned()
            .collect())
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError> {
        Ok(keys
            .iter()
            .filter_map(|k| {
                self.engine
                    .read(k.as_bytes(), |value, _| Bytes::copy_from_slice(value))
                    .map(|v| (k.clone(), v))
            })
            .collect())
    }

    async fn set(&self, items: Vec<SetItem>) -> Result<(), StorageError> {
        for item in items {
            self.engine
                .set(item.key.as_bytes(), &item.value, item.deadline);
        }
        Ok(())
    }

    async fn mexpire(&self, items: Vec<(String, DeadlineMs)>) -> Result<(), StorageError> {
        for (key, deadline) in items {
            self.engine.expire(key.as_bytes(), deadline);
        }
        Ok(())
    }

    async fn ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Option<DeadlineMs>)>, StorageError> {
        Ok(keys
            .iter()
            .filter_map(|k| self.engine.deadline(k.as_bytes()).map(|d| (k.clone(), d)))
            .collect())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            self.engine.remove(key.as_bytes());
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), StorageError> {
        self.engine.clear();
        Ok(())
    }

    fn stats(&self) -> Option<StorageStats> {
        let s = self.engine.stats();
        Some(StorageStats {
            keys: s.keys,
            index_entries: s.index_entries,
            data_bytes: s.data_bytes,
        })
    }

    async fn close(&self) -> Result<(), StorageError> {
        // Dropping the handle stops and joins the sweeper thread.
        let sweeper = self.sweeper.lock().map(|mut s| s.take()).unwrap_or(None);
        drop(sweeper);
        Ok(())
    }
}
