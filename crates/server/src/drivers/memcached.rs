//! The `memcached` driver: a storage spread over memcached servers.
//!
//! Built on the `memcache` crate's async meta-protocol client (`memcache::exp`), which keeps a
//! pool of connections per server, dials lazily, redials a dead pooled connection once, and
//! pipelines a batch of commands per server. So rrkv starts while memcached is down, a call
//! fails with an error naming the server, and calls succeed again once it is back. The crate
//! marks that module experimental, so the version is pinned exactly in Cargo.toml.
//!
//! Calls do not each take a connection: a [`Multiplexer`] task gathers the operations of all
//! calls that arrive together into one batch (one write and one read per server), as the
//! redis driver's multiplexed connection does. With 50 PHP workers calling at once that is
//! one exchange instead of 50.
//!
//! A key belongs to one server, chosen on a consistent-hash ring ([`Ring`]): adding or
//! removing a server moves only the keys of that server, and a server listed twice gets
//! twice the share of keys, as in RoadRunner.
//!
//! Semantics: Set stores with the deadline rounded up to the second (memcached's
//! resolution) plus one (its clock lags), so a key never disappears before its deadline and
//! lives at most two seconds past it; a deadline at or before now deletes. MExpire is `touch`
//! (a missing key stays missing). Has and MGet are one pipelined batch per server. Delete ignores misses. Clear is
//! `flush_all` on every server. TTL cannot be read back from memcached, so it fails with
//! RoadRunner's `memcached_plugin_ttl` text, which the PHP client turns into a
//! NotImplementedException.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use memcache::exp::{
    AsyncMetaClient, Delete, Error as MemcacheError, Get, GetStatus, MutationStatus, Op, OpResult,
    Router, Set,
};
use rrkv_engine::Clock;
use tokio::sync::{mpsc, oneshot, OnceCell, Semaphore};
use xxhash_rust::xxh3::xxh3_64;

use super::options;
use crate::storage::{DeadlineMs, SetItem, Storage, StorageError};

/// The text RoadRunner's memcached driver answers kv.TTL with; the PHP client looks for
/// `_plugin_ttl` in it.
pub const TTL_UNSUPPORTED: &str = "memcached_plugin_ttl: not valid request for memcached, \
     see https://github.com/memcached/memcached/issues/239";

/// The longest key memcached accepts.
const MAX_KEY_LEN: usize = 250;
/// TTLs up to this many seconds are relative; memcached reads larger ones as Unix times.
const MAX_RELATIVE_SECS: u64 = 30 * 24 * 3600;
/// Points each server entry gets on the ring.
const POINTS_PER_ENTRY: u32 = 160;
/// Most operations [`Multiplexer`] puts in one batch.
const MAX_BATCH_OPS: usize = 1024;
/// Batches [`Multiplexer`] keeps in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// Options of a `memcached` storage (`kv.<name>.config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemcachedOptions {
    /// `host:port` of each server; one listed twice gets twice the keys.
    pub addr: Vec<String>,
    pub dial_timeout: Duration,
    /// How long one exchange (a command or a batch) may take.
    pub io_timeout: Duration,
    /// Idle connections kept per server.
    pub max_idle: usize,
}

impl Default for MemcachedOptions {
    fn default() -> Self {
        MemcachedOptions {
            addr: vec!["127.0.0.1:11211".into()],
            dial_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            max_idle: 64,
        }
    }
}

/// Reads the driver's options; the error names the key.
pub fn parse_options(value: &serde_norway::Value) -> Result<MemcachedOptions, (String, String)> {
    let mut out = MemcachedOptions::default();
    for (key, value) in options::mapping(value, "memcached", "addr")? {
        let at = |message: String| (key.to_string(), message);
        match key {
            "addr" => out.addr = options::addresses(value).map_err(at)?,
            "dial_timeout" => {
                if let Some(d) = options::go_duration(value).map_err(at)? {
                    out.dial_timeout = d;
                }
            }
            "timeout" | "io_timeout" => {
                if let Some(d) = options::go_duration(value).map_err(at)? {
                    out.io_timeout = d;
                }
            }
            "max_idle" => {
                let n = options::unsigned(value).map_err(at)?;
                out.max_idle = usize::try_from(n).unwrap_or(usize::MAX).max(1);
            }
            other => tracing::warn!(key = other, "unknown memcached option ignored"),
        }
    }
    Ok(out)
}

/// A consistent-hash ring over the configured server entries (duplicates included).
///
/// Each entry owns [`POINTS_PER_ENTRY`] points, placed by hashing `address#occurrence#n`;
/// a key goes to the entry owning the first point at or after the key's hash. The hash is
/// XXH3-64, whose output is fixed by its specification, so every rrkv process with the same
/// `addr` list routes every key to the same server. (CRC-32 was tried first: it is linear, so
/// labels that differ in a digit land in correlated places, and shares swung from 55% to 75%
/// for a 2:1 weighting depending on the port numbers.)
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new(entries: &[String]) -> Ring {
        let mut points = Vec::with_capacity(entries.len() * POINTS_PER_ENTRY as usize);
        for (index, address) in entries.iter().enumerate() {
            let occurrence = entries[..index].iter().filter(|a| *a == address).count();
            for n in 0..POINTS_PER_ENTRY {
                let label = format!("{address}#{occurrence}#{n}");
                points.push((xxh3_64(label.as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The entry that owns `key`.
    pub fn entry(&self, key: &[u8]) -> usize {
        let hash = xxh3_64(key);
        let at = self.points.partition_point(|&(point, _)| point < hash);
        self.points.get(at).unwrap_or(&self.points[0]).1
    }
}

impl Router for Ring {
    fn route(&self, key: &[u8], _servers: &[String]) -> usize {
        self.entry(key)
    }
}

/// A storage whose keys live in memcached.
pub struct MemcachedStorage {
    options: MemcachedOptions,
    /// `"memcached 10.0.0.1:11211,10.0.0.2:11211"`, for logs.
    describe: String,
    ring: Arc<Ring>,
    /// Made on first use: resolving addresses is async, and a name may not resolve yet.
    client: OnceCell<Multiplexer>,
    clock: Arc<dyn Clock>,
}

impl MemcachedStorage {
    pub fn new(options: &MemcachedOptions, clock: Arc<dyn Clock>) -> Result<Self, String> {
        Ok(MemcachedStorage {
            describe: format!("memcached {}", options.addr.join(",")),
            ring: Arc::new(Ring::new(&options.addr)),
            options: options.clone(),
            client: OnceCell::new(),
            clock,
        })
    }

    async fn client(&self) -> Result<&Multiplexer, StorageError> {
        self.client
            .get_or_try_init(|| async {
                AsyncMetaClient::builder()
                    .router(RingRouter(self.ring.clone()))
                    .connect_timeout(Some(self.options.dial_timeout))
                    .io_timeout(Some(self.options.io_timeout))
                    .max_idle(self.options.max_idle)
                    .connect_multiple_async(self.options.addr.iter().map(String::as_str))
                    .await
                    .map(Multiplexer::start)
            })
            .await
            .map_err(|e| {
                StorageError::Backend(format!("memcached {}: {e}", self.options.addr.join(",")))
            })
    }

    /// Runs `operations` (in one batch with those of concurrent calls); one result each.
    async fn run(
        &self,
        operations: Vec<Op>,
    ) -> Result<Vec<Result<OpResult, MemcacheError>>, StorageError> {
        if operations.is_empty() {
            return Ok(Vec::new());
        }
        self.client().await?.run(operations).await.map_err(|e| {
            StorageError::Backend(format!("memcached {}: {e}", self.options.addr.join(",")))
        })
    }

    /// An error for `key`, naming the server it lives on.
    fn error(&self, key: &[u8], e: impl std::fmt::Display) -> StorageError {
        let server = &self.options.addr[self.ring.entry(key)];
        StorageError::Backend(format!("memcached {server}: {e}"))
    }

    /// The memcached expiration for a deadline that is still ahead: relative seconds when
    /// it is within 30 days (immune to clock differences between hosts), else a Unix time.
    ///
    /// Rounded up, plus one second: memcached's clock ticks once a second and lags real time
    /// by up to a second, so an item with TTL n goes after n-1 to n seconds (measured: TTL 2
    /// gone after 1.63 s). With the extra second a key is never gone before its deadline, and
    /// is gone at most two seconds after it.
    fn expiration(&self, deadline: DeadlineMs, now: u64) -> Result<u32, StorageError> {
        let remaining = (deadline - now).div_ceil(1000) + 1;
        let seconds = if remaining <= MAX_RELATIVE_SECS {
            remaining
        } else {
            deadline.div_ceil(1000) + 1
        };
        u32::try_from(seconds)
            .ok()
            .filter(|&s| s <= i32::MAX as u32)
            .ok_or_else(|| {
                StorageError::Invalid(
                    "memcached keeps expiry times as 32-bit Unix seconds; \
                     deadlines after 2038-01-19T03:14:07Z cannot be stored"
                        .into(),
                )
            })
    }

    /// Reads `keys` (values only when `values`), one pipelined batch per server.
    async fn get_many(
        &self,
        keys: &[String],
        values: bool,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        check_keys(keys.iter().map(String::as_str))?;
        let operations = keys
            .iter()
            .map(|k| {
                let get = Get::new(k);
                Op::from(if values { get } else { get.without_value() })
            })
            .collect();
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let results = self.run_for_keys(&names, operations).await?;
        let mut out = Vec::new();
        for (key, result) in keys.iter().zip(results) {
            if let OpResult::Get(get) = result {
                if get.status == GetStatus::Hit {
                    out.push((key.clone(), get.value.map(Bytes::from).unwrap_or_default()));
                }
            }
        }
        Ok(out)
    }

    /// Runs one operation per key of `keys`, in order, in one batch; a failed operation
    /// becomes an error naming its key's server.
    async fn run_for_keys(
        &self,
        keys: &[&str],
        operations: Vec<Op>,
    ) -> Result<Vec<OpResult>, StorageError> {
        let results = self.run(operations).await?;
        keys.iter()
            .zip(results)
            .map(|(key, result)| result.map_err(|e| self.error(key.as_bytes(), e)))
            .collect()
    }
}

/// One call's operations, waiting for a batch.
struct Job {
    operations: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<Result<OpResult, MemcacheError>>, String>>,
}

/// Gathers the operations of concurrent calls into shared batches.
///
/// One task takes every job that is waiting (up to [`MAX_BATCH_OPS`] operations), sends them
/// as one `run_batch` (which splits them per server and pipelines each group on one
/// connection), and hands each job its slice of the results. Up to [`BATCHES_IN_FLIGHT`]
/// batches run at once, so one slow exchange does not hold up the next. Operations of one job
/// stay together and in order, and jobs keep their arrival order within a server's batch.
/// Operations are moved into the batch, never copied.
struct Multiplexer {
    jobs: mpsc::UnboundedSender<Job>,
    /// For requests that are not batched (the startup check).
    client: AsyncMetaClient,
}

impl Multiplexer {
    fn start(client: AsyncMetaClient) -> Multiplexer {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let batches = client.clone();
        tokio::spawn(async move {
            let client = batches;
            let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
            while let Ok(slot) = slots.clone().acquire_owned().await {
                let Some(first) = queue.recv().await else {
                    return; // the storage is gone
                };
                let mut total = first.operations.len();
                let mut batch = vec![first];
                while total < MAX_BATCH_OPS {
                    match queue.try_recv() {
                        Ok(job) => {
                            total += job.operations.len();
                            batch.push(job);
                        }
                        Err(_) => break,
                    }
                }
                let client = client.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let mut sizes = Vec::with_capacity(batch.len());
                    let mut replies = Vec::with_capacity(batch.len());
                    let mut operations = Vec::with_capacity(total);
                    for job in batch {
                        sizes.push(job.operations.len());
                        replies.push(job.reply);
                        operations.extend(job.operations);
                    }
                    match client.run_batch(operations).await {
                        Ok(results) => {
                            let mut results = results.into_iter();
                            for (size, reply) in sizes.into_iter().zip(replies) {
                                let _ = reply.send(Ok(results.by_ref().take(size).collect()));
                            }
                        }
                        // Only validation refuses a whole batch, and `check_keys` has done
                        // all of it before a call is queued.
                        Err(e) => {
                            let text = e.to_string();
                            for reply in replies {
                                let _ = reply.send(Err(text.clone()));
                            }
                        }
                    }
                });
            }
        });
        Multiplexer { jobs, client }
    }

    async fn run(
        &self,
        operations: Vec<Op>,
    ) -> Result<Vec<Result<OpResult, MemcacheError>>, String> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { operations, reply })
            .map_err(|_| "the batching task has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the batch was dropped".to_string())?
    }
}

/// [`Ring`] behind an `Arc`, so the storage can name the server of a failing key.
struct RingRouter(Arc<Ring>);

impl Router for RingRouter {
    fn route(&self, key: &[u8], servers: &[String]) -> usize {
        self.0.route(key, servers)
    }
}

/// Fails before any network call if a key is one memcached cannot hold.
/// Fails before any network call if a key is one memcached cannot hold.
///
/// This is the whole of what the client validates: a key with bytes outside printable ASCII
/// travels base64-encoded, and the limit applies to the encoded form. So once these checks
/// pass, a batch cannot be refused, and one call's keys cannot fail the calls it is batched
/// with (see [`Multiplexer`]).
fn check_keys<'a>(keys: impl Iterator<Item = &'a str>) -> Result<(), StorageError> {
    for key in keys {
        if let Some(c) = key.bytes().find(|&b| b <= b' ' || b == 0x7f) {
            return Err(StorageError::Invalid(format!(
                "key {key:?} contains {}; memcached keys cannot contain spaces or control characters",
                if c == b' ' {
                    "a space".to_string()
                } else {
                    format!("the control character 0x{c:02x}")
                }
            )));
        }
        let wire_len = if key.is_ascii() {
            key.len()
        } else {
            key.len().div_ceil(3) * 4 // base64
        };
        if wire_len > MAX_KEY_LEN {
            return Err(StorageError::Invalid(format!(
                "key {:?}… is {wire_len} bytes on the wire{}; memcached keys are at most {MAX_KEY_LEN} bytes",
                key.chars().take(32).collect::<String>(),
                if key.is_ascii() { "" } else { " (base64, for its non-ASCII bytes)" },
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Storage for MemcachedStorage {
    fn driver(&self) -> &'static str {
        "memcached"
    }

    async fn has(&self, keys: &[String]) -> Result<Vec<String>, StorageError> {
        Ok(self
            .get_many(keys, false)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.get_many(keys, true).await
    }

    async fn set(&self, items: Vec<SetItem>) -> Result<(), StorageError> {
        check_keys(items.iter().map(|i| i.key.as_str()))?;
        let now = self.clock.now_ms();
        // Sets, and deletes for deadlines already past, go in item order in one batch: a
        // key's operations all go to its server, in order, so a later item wins.
        let mut keys = Vec::with_capacity(items.len());
        let mut operations = Vec::with_capacity(items.len());
        for item in &items {
            keys.push(item.key.as_str());
            operations.push(match item.deadline {
                Some(deadline) if deadline <= now => Op::from(Delete::new(&item.key)),
                Some(deadline) => Op::from(
                    Set::new(&item.key, &item.value).ttl_raw(self.expiration(deadline, now)?),
                ),
                None => Op::from(Set::new(&item.key, &item.value)),
            });
        }
        let results = self.run_for_keys(&keys, operations).await?;
        for (key, result) in keys.iter().zip(results) {
            match result {
                OpResult::Mutation(m)
                    if m.status == MutationStatus::Applied
                        || m.status == MutationStatus::NotFound => {} // a delete of nothing
                other => {
                    return Err(self.error(key.as_bytes(), format!("set not stored ({other:?})")))
                }
            }
        }
        Ok(())
    }

    async fn mexpire(&self, items: Vec<(String, DeadlineMs)>) -> Result<(), StorageError> {
        check_keys(items.iter().map(|(k, _)| k.as_str()))?;
        let now = self.clock.now_ms();
        let mut keys = Vec::with_capacity(items.len());
        let mut operations = Vec::with_capacity(items.len());
        for (key, deadline) in &items {
            keys.push(key.as_str());
            operations.push(if *deadline <= now {
                Op::from(Delete::new(key))
            } else {
                let ttl = self.expiration(*deadline, now)?;
                Op::from(Get::new(key).without_value().touch_raw(ttl))
            });
        }
        // A miss is fine: MExpire leaves missing keys missing.
        self.run_for_keys(&keys, operations).await.map(|_| ())
    }

    async fn ttl(
        &self,
        _keys: &[String],
    ) -> Result<Vec<(String, Option<DeadlineMs>)>, StorageError> {
        Err(StorageError::Unsupported(TTL_UNSUPPORTED.into()))
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        check_keys(keys.iter().map(String::as_str))?;
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let operations = names.iter().map(|k| Op::from(Delete::new(k))).collect();
        // Misses are fine.
        self.run_for_keys(&names, operations).await.map(|_| ())
    }

    async fn clear(&self) -> Result<(), StorageError> {
        let mut servers = self.options.addr.clone();
        servers.sort();
        servers.dedup();
        let dial = self.options.dial_timeout;
        let io = self.options.io_timeout;
        // flush_all is not a meta command; the crate's classic client sends it.
        let flushes = servers.into_iter().map(|server| {
            tokio::task::spawn_blocking(move || {
                let url = format!("memcache://{server}?protocol=ascii");
                memcache::Client::builder()
                    .add_server(url.as_str())
                    .and_then(|b| {
                        b.with_connection_timeout(dial)
                            .with_read_timeout(io)
                            .with_write_timeout(io)
                            .with_max_pool_size(1)
                            .build()
                    })
                    .and_then(|client| client.flush())
                    .map_err(|e| {
                        StorageError::Backend(format!("memcached {server}: flush_all: {e}"))
                    })
            })
        });
        for flushed in futures_util::future::join_all(flushes).await {
            flushed.map_err(|e| StorageError::Backend(format!("memcached flush_all: {e}")))??;
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn backend(&self) -> Option<&str> {
        Some(&self.describe)
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.client()
            .await?
            .client
            .noop()
            .await
            .map_err(|e| StorageError::Backend(format!("{}: {e}", self.describe)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_stable_balanced_and_weighted() {
        let two = Ring::new(&["a:1".to_string(), "b:1".to_string()]);
        let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
        let on_a = keys.iter().filter(|k| two.entry(k.as_bytes()) == 0).count();
        assert!((8_000..12_000).contains(&on_a), "a got {on_a} of 20000");

        // b listed twice: about two thirds of the keys go to one of its entries.
        let weighted = Ring::new(&["a:1".to_string(), "b:1".to_string(), "b:1".to_string()]);
        let on_a = keys
            .iter()
            .filter(|k| weighted.entry(k.as_bytes()) == 0)
            .count();
        assert!((5_000..8_300).contains(&on_a), "a got {on_a} of 20000");

        // The 2:1 share holds whatever the addresses are (tests use random ports).
        for port in (20_000..60_000).step_by(4_001) {
            let (a, b) = (
                format!("127.0.0.1:{port}"),
                format!("127.0.0.1:{}", port + 7),
            );
            let ring = Ring::new(&[a.clone(), a, b]);
            let on_a = keys
                .iter()
                .filter(|k| ring.entry(k.as_bytes()) <= 1)
                .count();
            assert!(
                (11_500..15_000).contains(&on_a),
                "port {port}: a got {on_a} of 20000"
            );
        }

        // Adding a server moves only keys onto the new one.
        let three = Ring::new(&["a:1".to_string(), "b:1".to_string(), "c:1".to_string()]);
        for key in &keys {
            let after = three.entry(key.as_bytes());
            if after != 2 {
                assert_eq!(
                    after,
                    two.entry(key.as_bytes()),
                    "{key} moved between old servers"
                );
            }
        }
    }

    #[test]
    fn keys_memcached_cannot_hold_are_refused() {
        assert!(check_keys(["ok:key-1"].into_iter()).is_ok());
        let long = "k".repeat(251);
        let e = check_keys([long.as_str()].into_iter())
            .unwrap_err()
            .to_string();
        assert!(e.contains("250 bytes"), "{e}");
        let e = check_keys(["a b"].into_iter()).unwrap_err().to_string();
        assert!(e.contains("space"), "{e}");
        let e = check_keys(["a\nb"].into_iter()).unwrap_err().to_string();
        assert!(e.contains("0x0a"), "{e}");
        // Non-ASCII keys travel base64-encoded: 200 bytes become 268 on the wire.
        assert!(check_keys(["é".repeat(93).as_str()].into_iter()).is_ok()); // 186 -> 248
        let e = check_keys(["é".repeat(100).as_str()].into_iter())
            .unwrap_err()
            .to_string();
        assert!(e.contains("268 bytes on the wire"), "{e}");
    }

    #[test]
    fn options_are_read() {
        let o = parse_options(
            &serde_norway::from_str("addr: ['m1:11211', 'm1:11211', 'm2:11211']").unwrap(),
        )
        .unwrap();
        assert_eq!(o.addr.len(), 3);
        let e = parse_options(&serde_norway::from_str("addr: 11211").unwrap()).unwrap_err();
        assert_eq!(e.0, "addr");
    }
}
