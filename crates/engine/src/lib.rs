//! rrkv's in-memory key-value engine.
//!
//! A map from byte keys to byte values where every key may carry an absolute deadline
//! (milliseconds since the Unix epoch). It is built for TTL-heavy workloads:
//!
//! * **Sharded.** Keys are spread over independent shards, each behind its own read-write
//!   lock, so cores work in parallel and a busy shard does not stall the others.
//! * **No task, timer or channel per key.** Each shard keeps one expiry index (a heap with a
//!   back-pointer in every entry) that is updated in place when a key is overwritten, its
//!   deadline changes or it is deleted, so there is never more than one index entry per key.
//! * **Exact deadlines.** Every read compares the key's deadline with the [`Clock`]: a key is
//!   never returned at or after its deadline, and never missing before it.
//! * **Stale deadlines cannot remove newer data.** A deadline is stored in exactly one place,
//!   the key's own index entry (see the invariants in `shard.rs`).
//! * **Memory comes back.** One background [`Sweeper`] removes expired keys in bounded batches,
//!   and tables shrink once they fall to a quarter of their capacity.
//!
//! The engine knows nothing of sockets, protocols or configuration.
//!
//! ```
//! use rrkv_engine::Engine;
//! let engine = Engine::new();
//! let now = engine.now_ms();
//! engine.set(b"session:1", b"data", Some(now + 60_000));
//! assert_eq!(engine.get(b"session:1").as_deref(), Some(&b"data"[..]));
//! ```

mod clock;
mod shard;
mod sweeper;

use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::RwLock;

pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use shard::Stats;
pub use sweeper::Sweeper;

use shard::{Probe, Shard};
use sweeper::SweepSignal;

/// Number of shards when none is given: several per core, so two writers rarely meet.
pub const DEFAULT_SHARDS: usize = 64;

/// How many expired keys the sweeper removes under one lock before letting others in.
pub const PURGE_BATCH: usize = 512;

/// A shard aligned to its own cache lines, so locking one does not slow its neighbours.
#[repr(align(128))]
struct Padded(RwLock<Shard>);

/// Shared state behind every [`Engine`] handle and its sweeper.
struct Inner {
    shards: Box<[Padded]>,
    shard_mask: usize,
    hasher: foldhash::fast::RandomState,
    clock: Arc<dyn Clock>,
    sweep: SweepSignal,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Expired keys removed.
    pub removed: usize,
    /// The earliest deadline left in the index, if any.
    pub next_deadline: Option<Millis>,
}

fn min_deadline(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A handle to one in-memory store. Cloning it is cheap and shares the store.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An empty store on the system clock with [`DEFAULT_SHARDS`] shards.
    pub fn new() -> Self {
        Engine::with_clock(Arc::new(SystemClock), DEFAULT_SHARDS)
    }

    /// An empty store on `clock` with `shards` shards (rounded up to a power of two).
    pub fn with_clock(clock: Arc<dyn Clock>, shards: usize) -> Self {
        let count = shards.max(1).next_power_of_two();
        Engine {
            inner: Arc::new(Inner {
                shards: (0..count)
                    .map(|_| Padded(RwLock::new(Shard::default())))
                    .collect(),
                shard_mask: count - 1,
                hasher: foldhash::fast::RandomState::default(),
                clock,
                sweep: SweepSignal::default(),
            }),
        }
    }

    /// The engine clock's current time.
    pub fn now_ms(&self) -> Millis {
        self.inner.clock.now_ms()
    }

    fn probe<'k>(&self, key: &'k [u8]) -> (Probe<'k>, &RwLock<Shard>) {
        let hash = self.inner.hasher.hash_one(key);
        // Bits 40.. pick the shard: hashbrown uses the low bits for the bucket and the top
        // seven for its tag, so the shard choice must not correlate with either.
        let shard = &self.inner.shards[(hash >> 40) as usize & self.inner.shard_mask].0;
        (Probe { hash, key }, shard)
    }

    fn hash_key(&self) -> impl Fn(&[u8]) -> u64 + '_ {
        move |key| self.inner.hasher.hash_one(key)
    }

    /// Calls `f` with the value and deadline of a live key; `None` if the key is missing or
    /// expired. `f` runs under the shard's read lock: keep it short.
    pub fn read<R>(&self, key: &[u8], f: impl FnOnce(&[u8], Option<Millis>) -> R) -> Option<R> {
        let (probe, shard) = self.probe(key);
        let now = self.now_ms();
        shard.read().read(probe, now, f)
    }

    /// A copy of a live key's value.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read(key, |value, _| value.to_vec())
    }

    /// Whether the key is stored and not expired.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.read(key, |_, _| ()).is_some()
    }

    /// The deadline of a live key: `None` if the key is missing or expired, `Some(None)` if
    /// it never expires.
    pub fn deadline(&self, key: &[u8]) -> Option<Option<Millis>> {
        self.read(key, |_, deadline| deadline)
    }

    /// Stores `value` under `key`, replacing any previous value and deadline. A deadline at
    /// or before now removes the key instead (a TTL of zero or less deletes, as PSR-16 says).
    pub fn set(&self, key: &[u8], value: &[u8], deadline: Option<Millis>) {
        let (probe, shard) = self.probe(key);
        let now = self.now_ms();
        let hash_key = self.hash_key();
        match deadline {
            Some(deadline) if deadline <= now => {
                shard.write().remove(probe, now, &hash_key);
            }
            _ => {
                shard.write().set(probe, value, deadline, &hash_key);
                if let Some(deadline) = deadline {
                    self.inner.sweep.deadline_added(deadline);
                }
            }
        }
    }

    /// Gives a live key a new deadline, keeping its value; a deadline at or before now removes
    /// it. A missing key stays missing. Returns whether the key was live.
    pub fn expire(&self, key: &[u8], deadline: Millis) -> bool {
        let (probe, shard) = self.probe(key);
        let now = self.now_ms();
        if deadline <= now {
            return shard.write().remove(probe, now, &self.hash_key());
        }
        let live = shard.write().expire(probe, now, deadline);
        if live {
            self.inner.sweep.deadline_added(deadline);
        }
        live
    }

    /// Removes a key. Returns whether it was live.
    pub fn remove(&self, key: &[u8]) -> bool {
        let (probe, shard) = self.probe(key);
        let now = self.now_ms();
        shard.write().remove(probe, now, &self.hash_key())
    }

    /// Removes every key and gives the memory back. Keys set after `clear` returns are kept.
    pub fn clear(&self) {
        for shard in self.inner.shards.iter() {
            // Swap under the lock, drop the old contents after releasing it.
            let old = std::mem::take(&mut *shard.0.write());
            drop(old);
        }
    }

    /// Removes every key whose deadline is at or before now, in batches of [`PURGE_BATCH`]
    /// per lock hold. The [`Sweeper`] calls this; tests on a manual clock call it directly.
    pub fn purge_expired(&self) -> PurgeReport {
        let now = self.now_ms();
        let hash_key = self.hash_key();
        let mut report = PurgeReport::default();
        for shard in self.inner.shards.iter() {
            loop {
                // Look under the read lock first: most passes find most shards with nothing
                // due, and then writers are not blocked at all.
                let next = shard.0.read().next_deadline();
                if next.is_none_or(|d| d > now) {
                    report.next_deadline = min_deadline(report.next_deadline, next);
                    break;
                }
                let (removed, next) = shard.0.write().purge_expired(now, PURGE_BATCH, &hash_key);
                report.removed += removed;
                if removed < PURGE_BATCH {
                    report.next_deadline = min_deadline(report.next_deadline, next);
                    break;
                }
            }
        }
        report
    }

    /// Sizes and counts summed over all shards.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for shard in self.inner.shards.iter() {
            total += shard.0.read().stats();
        }
        total
    }

    /// Stored keys, including expired keys the sweeper has not removed yet.
    pub fn len(&self) -> usize {
        self.stats().keys
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts the background thread that removes expired keys. It stops when the returned
    /// handle is dropped.
    pub fn start_sweeper(&self) -> Sweeper {
        Sweeper::start(self.clone())
    }

    /// Panics if a shard's internal invariants do not hold. For tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let hash_key = self.hash_key();
        for shard in self.inner.shards.iter() {
            shard.0.read().check_invariants(&hash_key);
        }
    }
}
