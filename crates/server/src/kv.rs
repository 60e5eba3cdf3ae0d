//! The `kv` RPC service: decodes nothing, knows no sockets; takes a decoded `kv.v1`
//! request, validates all of it, routes it to a storage by name and builds the reply.
//!
//! Choices where upstream drivers disagree (see the README's table of differences):
//! * an empty item list succeeds; reads reply with no items;
//! * an empty or whitespace-only key is an error for every method, Set included;
//! * a request is applied all or nothing: every key and timeout is checked before any item
//!   reaches the storage;
//! * MExpire needs a timeout on every item; missing keys stay missing;
//! * TTL answers in UTC whole seconds (rounded up), and an empty timeout for keys without one.

use std::collections::HashSet;
use std::sync::Arc;

use rrkv_protocol::kv::{Item, Request, Response};

use crate::metrics::RequestMetrics;
use crate::storage::{SetItem, Storage, StorageError};
use crate::timeout::{format_deadline, parse_deadline};

/// The methods of the `kv` service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Has,
    Set,
    MGet,
    MExpire,
    Ttl,
    Delete,
    Clear,
}

impl Method {
    /// All methods, in the order the protocol lists them.
    pub const ALL: [Method; 7] = [
        Method::Has,
        Method::Set,
        Method::MGet,
        Method::MExpire,
        Method::Ttl,
        Method::Delete,
        Method::Clear,
    ];

    /// The method for a name after `kv.`; names are case-sensitive.
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "Has" => Method::Has,
            "Set" => Method::Set,
            "MGet" => Method::MGet,
            "MExpire" => Method::MExpire,
            "TTL" => Method::Ttl,
            "Delete" => Method::Delete,
            "Clear" => Method::Clear,
            _ => return None,
        })
    }

    /// The name after `kv.`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Has => "Has",
            Method::Set => "Set",
            Method::MGet => "MGet",
            Method::MExpire => "MExpire",
            Method::Ttl => "TTL",
            Method::Delete => "Delete",
            Method::Clear => "Clear",
        }
    }

    /// The operation prefix of error texts, as RoadRunner spells it.
    fn op(self) -> &'static str {
        match self {
            Method::Has => "rpc_has",
            Method::Set => "rpc_set",
            Method::MGet => "rpc_mget",
            Method::MExpire => "rpc_mexpire",
            Method::Ttl => "rpc_ttl",
            Method::Delete => "rpc_delete",
            Method::Clear => "rpc_clear",
        }
    }
}

/// The configured storages, by name.
pub struct KvService {
    /// Sorted by name: a handful of storages is found faster by binary search than by
    /// hashing the name on every call.
    storages: Vec<(String, Arc<dyn Storage>)>,
    /// Failures of each storage, in the order of `storages`.
    failures: Vec<StorageFailures>,
    metrics: RequestMetrics,
}

/// Counts a storage's failed calls and logs them, at most once per [`LOG_EVERY_MS`]: a
/// backend that is down fails every call, and the log must stay readable.
struct StorageFailures {
    total: metrics::Counter,
    last_logged_ms: std::sync::atomic::AtomicU64,
}

const LOG_EVERY_MS: u64 = 10_000;

impl StorageFailures {
    fn record(&self, storage: &str, text: &str) {
        use std::sync::atomic::Ordering;
        self.total.increment(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY_MS
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                storage,
                error = text,
                "storage call failed (logged at most every 10 s)"
            );
        }
    }
}

impl KvService {
    pub fn new(storages: impl IntoIterator<Item = (String, Arc<dyn Storage>)>) -> KvService {
        let mut storages: Vec<_> = storages.into_iter().collect();
        storages.sort_by(|a, b| a.0.cmp(&b.0));
        storages.dedup_by(|a, b| a.0 == b.0);
        let failures = storages
            .iter()
            .map(|(name, storage)| StorageFailures {
                total: metrics::counter!(
                    "rrkv_storage_errors_total",
                    "storage" => name.clone(),
                    "driver" => storage.driver()
                ),
                last_logged_ms: Default::default(),
            })
            .collect();
        KvService {
            storages,
            failures,
            metrics: RequestMetrics::new(),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.storages
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
    }

    /// The storage called `name`.
    pub fn storage(&self, name: &str) -> Option<&Arc<dyn Storage>> {
        self.position(name).map(|i| &self.storages[i].1)
    }

    /// Storage names, sorted.
    pub fn storage_names(&self) -> Vec<&str> {
        self.storages.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Closes every storage, logging failures.
    pub async fn close_all(&self) {
        for (name, storage) in &self.storages {
            if let Err(e) = storage.close().await {
                tracing::warn!(storage = %name, error = %e, "closing storage failed");
            }
        }
    }

    /// Runs one call. The error is the text of the error reply.
    pub async fn call(&self, method: Method, request: Request) -> Result<Response, String> {
        let started = std::time::Instant::now();
        let result = self.run(method, request).await;
        self.metrics
            .record(method, result.is_ok(), started.elapsed());
        result
    }

    async fn run(&self, method: Method, request: Request) -> Result<Response, String> {
        let position = match request.storage.as_str() {
            "" => return Err("no storage provided".to_string()),
            name => self
                .position(name)
                .ok_or_else(|| format!("no such storage: {name}"))?,
        };
        let storage = &self.storages[position].1;
        let op = method.op();
        let fail = |e: StorageError| {
            let text = format!(
                "{op}: {} storage {:?}: {e}",
                storage.driver(),
                request.storage
            );
            if matches!(e, StorageError::Backend(_)) {
                self.failures[position].record(&request.storage, &text);
            }
            text
        };
        if method != Method::Clear {
            for (i, item) in request.items.iter().enumerate() {
                if item.key.trim().is_empty() {
                    return Err(format!("{op}: key can't be empty string (item {i})"));
                }
            }
        }
        let items = request.items;
        let reply_items = match method {
            Method::Has => {
                let keys = unique_keys(items);
                storage
                    .has(&keys)
                    .await
                    .map_err(fail)?
                    .into_iter()
                    .map(Item::key)
                    .collect()
            }
            Method::MGet => {
                let keys = unique_keys(items);
                storage
                    .mget(&keys)
                    .await
                    .map_err(fail)?
                    .into_iter()
                    .map(|(key, value)| Item {
                        key,
                        value,
                        timeout: String::new(),
                    })
                    .collect()
            }
            Method::Ttl => {
                let keys = unique_keys(items);
                storage
                    .ttl(&keys)
                    .await
                    .map_err(fail)?
                    .into_iter()
                    .map(|(key, deadline)| Item {
                        key,
                        value: Default::default(),
                        timeout: deadline.map(format_deadline).unwrap_or_default(),
                    })
                    .collect()
            }
            Method::Set => {
                let mut set = Vec::with_capacity(items.len());
                for item in items {
                    let deadline = match item.timeout.as_str() {
                        "" => None,
                        text => Some(
                            parse_deadline(text)
                                .map_err(|e| format!("{op}: key {:?}: {e}", item.key))?,
                        ),
                    };
                    set.push(SetItem {
                        key: item.key,
                        value: item.value,
                        deadline,
                    });
                }
                storage.set(set).await.map_err(fail)?;
                Vec::new()
            }
            Method::MExpire => {
                let mut expire = Vec::with_capacity(items.len());
                for item in items {
                    if item.timeout.is_empty() {
                        return Err(format!(
                            "{op}: key {:?}: timeout for MExpire is empty; send an RFC 3339 deadline",
                            item.key
                        ));
                    }
                    let deadline = parse_deadline(&item.timeout)
                        .map_err(|e| format!("{op}: key {:?}: {e}", item.key))?;
                    expire.push((item.key, deadline));
                }
                storage.mexpire(expire).await.map_err(fail)?;
                Vec::new()
            }
            Method::Delete => {
                let keys: Vec<String> = items.into_iter().map(|i| i.key).collect();
                storage.delete(&keys).await.map_err(fail)?;
                Vec::new()
            }
            Method::Clear => {
                storage.clear().await.map_err(fail)?;
                Vec::new()
            }
        };
        Ok(Response { items: reply_items })
    }
}

/// The keys of `items` without repeats, in first-seen order (replies are keyed maps
/// upstream, so a key asked twice is answered once).
fn unique_keys(items: Vec<Item>) -> Vec<String> {
    let small = items.len() <= 16;
    let keys = items.into_iter().map(|i| i.key);
    if small {
        let mut out: Vec<String> = Vec::new();
        for key in keys {
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out
    } else {
        let mut seen = HashSet::new();
        keys.filter(|k| seen.insert(k.clone())).collect()
    }
}
