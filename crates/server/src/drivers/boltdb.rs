//! The `boltdb` driver: RoadRunner's durable storage name, backed by one redb file.
//!
//! Layout: table `kv` maps a key to `deadline (u64 LE ms since epoch, 0 = none) ++ value`;
//! table `expiry` holds `(deadline, key)` for every key that has one, so the sweep finds
//! expired keys without scanning. Both are changed in the same transaction, so they never
//! disagree, and the deadline stored with the value is the truth: reads check it, and the
//! sweep removes a key only if its stored deadline is the one the index entry names.
//!
//! Writes go to one writer thread. It takes every write that is waiting, applies them in one
//! transaction and commits once (durably), then acknowledges them all: group commit, so 50
//! connections do not cost 50 serial fsyncs. A write is acknowledged only after its commit.
//! Reads use their own read transactions (MVCC) and never wait for writers. They run inline on
//! the connection's task: redb serves them from its page cache (1 GiB by default), and handing
//! each read to the blocking pool cost more than the read (50 connections: 48k gets/s through
//! `spawn_blocking`, 130k inline). A read that misses the cache holds one worker for one disk
//! read.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rrkv_engine::Clock;
use tokio::sync::oneshot;

use crate::storage::{DeadlineMs, SetItem, Storage, StorageError};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");

/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
/// bbolt's magic number, at byte 16 of its first meta page (little-endian on disk).
const BBOLT_MAGIC: u32 = 0xED0C_DAED;

/// Most writes grouped into one transaction.
const MAX_GROUP: usize = 4096;
/// Most expired keys removed by one sweep transaction.
const SWEEP_BATCH: usize = 10_000;

/// Options of a `boltdb` storage (`kv.<name>.config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoltOptions {
    pub file: PathBuf,
    /// Unix mode of a newly created file.
    pub permissions: u32,
    /// Seconds between sweeps of expired keys.
    pub interval: Duration,
}

impl Default for BoltOptions {
    fn default() -> Self {
        BoltOptions {
            file: PathBuf::from("rr.db"),
            permissions: 0o755,
            interval: Duration::from_secs(60),
        }
    }
}

/// Reads the driver's options; the error names the key.
pub fn parse_options(options: &serde_norway::Value) -> Result<BoltOptions, (String, String)> {
    let mut out = BoltOptions::default();
    let serde_norway::Value::Mapping(map) = options else {
        if options.is_null() {
            return Ok(out);
        }
        return Err((
            String::new(),
            "expected a mapping of boltdb options (file, permissions, interval)".into(),
        ));
    };
    for (key, value) in map {
        let key = key.as_str().unwrap_or_default();
        match key {
            "file" => match value.as_str() {
                Some(f) if !f.is_empty() => out.file = PathBuf::from(f),
                _ => return Err((key.into(), "expected a file path, e.g. rr.db".into())),
            },
            "permissions" => {
                out.permissions = parse_mode(value).map_err(|m| (key.to_string(), m))?
            }
            "interval" => {
                let secs = value.as_u64().ok_or_else(|| {
                    (
                        key.to_string(),
                        "expected whole seconds, e.g. 60".to_string(),
                    )
                })?;
                out.interval = Duration::from_secs(if secs == 0 { 60 } else { secs });
            }
            "bucket" => {} // RoadRunner ignores it too: there is one bucket per file.
            other => tracing::warn!(key = other, "unknown boltdb option ignored"),
        }
    }
    Ok(out)
}

/// A file mode as RoadRunner users write it: `0666`, `0755` or plain `644` all mean octal.
fn parse_mode(value: &serde_norway::Value) -> Result<u32, String> {
    let text = match value {
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::String(s) => s.trim().to_string(),
        _ => return Err("expected a file mode such as 0644".into()),
    };
    let digits = text.trim_start_matches("0o").trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not a file mode: write it in octal, e.g. 0644"
        )),
    }
}

/// Why a file cannot be used, checked before redb touches it.
fn check_file(path: &Path) -> Result<(), String> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let mut head = [0u8; 20];
    let n = read_up_to(&mut file, &mut head)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if n == 0 || head[..n.min(9)] == REDB_MAGIC[..n.min(9)] && n >= 9 {
        return Ok(());
    }
    if n >= 20 && u32::from_le_bytes([head[16], head[17], head[18], head[19]]) == BBOLT_MAGIC {
        return Err(format!(
            "{} is a BoltDB (bbolt) file, as RoadRunner writes; rrkv keeps boltdb storages in redb's format and \
             cannot read it. Left untouched: point `file` at a new path.",
            path.display()
        ));
    }
    Err(format!(
        "{} is not a redb database (it does not start with redb's magic bytes); left untouched: point `file` at a new path",
        path.display()
    ))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Opens (or creates, with `permissions`) the database file.
pub fn open(options: &BoltOptions) -> Result<Database, String> {
    check_file(&options.file)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(options.permissions)
        .open(&options.file)
        .map_err(|e| format!("cannot open {}: {e}", options.file.display()))?;
    redb::Database::builder().create_file(file).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => format!(
            "{} is already open in another process (or by another storage): only one may use a file",
            options.file.display()
        ),
        other => format!("cannot open {} as a redb database: {other}", options.file.display()),
    })
}

fn encode(deadline: Option<DeadlineMs>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&deadline.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// `(deadline, value)` of a stored record; a record too short to hold a deadline is damaged
/// and treated as absent.
fn decode(record: &[u8]) -> Option<(Option<DeadlineMs>, &[u8])> {
    let (head, value) = record.split_at_checked(8)?;
    let deadline = u64::from_le_bytes(head.try_into().ok()?);
    Some(((deadline != 0).then_some(deadline), value))
}

/// The deadline of a record a table handed back: `None` if there was no (readable) record,
/// `Some(None)` if it never expires.
fn deadline_of(record: Option<redb::AccessGuard<'_, &'static [u8]>>) -> Option<Option<DeadlineMs>> {
    record.and_then(|g| decode(g.value()).map(|(d, _)| d))
}

fn live(deadline: Option<DeadlineMs>, now: DeadlineMs) -> bool {
    deadline.is_none_or(|d| d > now)
}

/// One write, as the writer thread receives it.
enum Write {
    Set(Vec<SetItem>),
    Expire(Vec<(String, DeadlineMs)>),
    Delete(Vec<String>),
    Clear,
    Sweep,
}

struct Job {
    write: Write,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// A durable storage in one redb file.
pub struct BoltStorage {
    db: Arc<Database>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    writer: Mutex<Option<(mpsc::Sender<Job>, JoinHandle<()>)>>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn backend(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl BoltStorage {
    /// Opens the file and starts the writer thread and the periodic sweep.
    pub fn open(options: &BoltOptions, clock: Arc<dyn Clock>) -> Result<BoltStorage, String> {
        let db = Arc::new(open(options)?);
        {
            // Create both tables now, so readers never meet a missing table.
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(EXPIRY).map_err(backend)?;
            txn.commit().map_err(backend)?;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_db = db.clone();
        let writer_clock = clock.clone();
        let path = options.file.clone();
        let thread = std::thread::Builder::new()
            .name("rrkv-boltdb-writer".into())
            .spawn(move || writer(writer_db, writer_clock, rx))
            .map_err(|e| format!("cannot start the writer thread: {e}"))?;
        let storage = BoltStorage {
            db,
            path,
            clock,
            writer: Mutex::new(Some((tx.clone(), thread))),
            sweeper: Mutex::new(None),
        };
        // The first sweep runs at once, so keys that expired while the server was down go.
        let interval = options.interval;
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if tx
                    .send(Job {
                        write: Write::Sweep,
                        done: None,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        *storage.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(sweeper);
        Ok(storage)
    }

    fn fail(&self, e: impl std::fmt::Display) -> StorageError {
        StorageError::Backend(format!("{}: {e}", self.path.display()))
    }

    async fn write(&self, write: Write) -> Result<(), StorageError> {
        let (done, acked) = oneshot::channel();
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(tx, _)| tx.clone())
            .ok_or_else(|| self.fail("storage is closed"))?;
        sender
            .send(Job {
                write,
                done: Some(done),
            })
            .map_err(|_| self.fail("the writer thread has stopped"))?;
        acked
            .await
            .map_err(|_| self.fail("the writer thread has stopped"))?
            .map_err(|e| self.fail(e))
    }

    /// Calls `pick` with each key that is stored and live at now, its deadline and its value,
    /// in one read transaction, and collects the results. Reads run inline (see the module
    /// documentation).
    fn read_live<T>(
        &self,
        keys: &[String],
        pick: impl Fn(&String, Option<DeadlineMs>, &[u8]) -> T,
    ) -> Result<Vec<T>, StorageError> {
        let now = self.clock.now_ms();
        let read = || -> Result<Vec<T>, String> {
            let txn = self.db.begin_read().map_err(backend)?;
            let table = txn.open_table(KV).map_err(backend)?;
            let mut out = Vec::new();
            for key in keys {
                if let Some(record) = table.get(key.as_str()).map_err(backend)? {
                    match decode(record.value()) {
                        Some((deadline, value)) if live(deadline, now) => {
                            out.push(pick(key, deadline, value))
                        }
                        _ => {}
                    }
                }
            }
            Ok(out)
        };
        read().map_err(|e| self.fail(e))
    }
}

/// The writer thread: group commit. See the module documentation.
fn writer(db: Arc<Database>, clock: Arc<dyn Clock>, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = apply(&db, clock.now_ms(), &group);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = group.len(), "boltdb transaction failed; nothing in it was applied");
        }
        for job in group {
            if let Some(done) = job.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// Applies a group of writes in one transaction and commits it durably.
fn apply(db: &Database, now: DeadlineMs, group: &[Job]) -> Result<(), String> {
    let txn = db.begin_write().map_err(backend)?;
    let mut more_to_sweep = false;
    let mut rest = group;
    while !rest.is_empty() {
        // Clear drops both tables whole, which frees their pages at once; deleting entry by
        // entry would copy every page it touches and grow the file.
        if matches!(rest[0].write, Write::Clear) {
            txn.delete_table(KV).map_err(backend)?;
            txn.delete_table(EXPIRY).map_err(backend)?;
            rest = &rest[1..];
            continue;
        }
        let run = rest
            .iter()
            .position(|j| matches!(j.write, Write::Clear))
            .unwrap_or(rest.len());
        let (jobs, tail) = rest.split_at(run);
        rest = tail;
        let mut kv = txn.open_table(KV).map_err(backend)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(backend)?;
        for job in jobs {
            match &job.write {
                Write::Set(items) => {
                    for item in items {
                        let key = item.key.as_str();
                        // One B-tree operation: insert (or remove) hands back the old record.
                        let old = if item.deadline.is_some_and(|d| d <= now) {
                            deadline_of(kv.remove(key).map_err(backend)?)
                        } else {
                            let record = encode(item.deadline, &item.value);
                            deadline_of(kv.insert(key, record.as_slice()).map_err(backend)?)
                        };
                        if let Some(Some(d)) = old {
                            expiry.remove((d, key)).map_err(backend)?;
                        }
                        if let Some(d) = item.deadline.filter(|&d| d > now) {
                            expiry.insert((d, key), ()).map_err(backend)?;
                        }
                    }
                }
                Write::Expire(items) => {
                    for (key, deadline) in items {
                        let Some((old, value)) = kv
                            .get(key.as_str())
                            .map_err(backend)?
                            .and_then(|g| decode(g.value()).map(|(d, v)| (d, v.to_vec())))
                        else {
                            continue;
                        };
                        if !live(old, now) {
                            continue; // expired: as good as missing, and MExpire creates nothing
                        }
                        if let Some(d) = old {
                            expiry.remove((d, key.as_str())).map_err(backend)?;
                        }
                        if *deadline <= now {
                            kv.remove(key.as_str()).map_err(backend)?;
                        } else {
                            kv.insert(key.as_str(), encode(Some(*deadline), &value).as_slice())
                                .map_err(backend)?;
                            expiry
                                .insert((*deadline, key.as_str()), ())
                                .map_err(backend)?;
                        }
                    }
                }
                Write::Delete(keys) => {
                    for key in keys {
                        let old = deadline_of(kv.remove(key.as_str()).map_err(backend)?);
                        if let Some(Some(d)) = old {
                            expiry.remove((d, key.as_str())).map_err(backend)?;
                        }
                    }
                }
                Write::Clear => {} // handled above, between runs of other writes
                Write::Sweep => {
                    let due: Vec<(u64, String)> = expiry
                        .range::<(u64, &str)>(..(now + 1, ""))
                        .map_err(backend)?
                        .take(SWEEP_BATCH)
                        .map(|entry| {
                            entry.map(|(k, _)| {
                                let (d, key) = k.value();
                                (d, key.to_string())
                            })
                        })
                        .collect::<Result<_, _>>()
                        .map_err(backend)?;
                    more_to_sweep |= due.len() == SWEEP_BATCH;
                    for (d, key) in due {
                        expiry.remove((d, key.as_str())).map_err(backend)?;
                        // Remove the key only if this is still its deadline.
                        let current = deadline_of(kv.get(key.as_str()).map_err(backend)?);
                        if current == Some(Some(d)) {
                            kv.remove(key.as_str()).map_err(backend)?;
                        }
                    }
                }
            }
        }
    }
    // Both tables exist after every commit, so readers never meet a missing one.
    txn.open_table(KV).map_err(backend)?;
    txn.open_table(EXPIRY).map_err(backend)?;
    txn.commit().map_err(backend)?;
    if more_to_sweep {
        // Bounded batches: the next batch runs in its own transaction, after waiting writers.
        return apply(
            db,
            now,
            &[Job {
                write: Write::Sweep,
                done: None,
            }],
        );
    }
    Ok(())
}

#[async_trait]
impl Storage for BoltStorage {
    fn driver(&self) -> &'static str {
        "boltdb"
    }

    async fn has(&self, keys: &[String]) -> Result<Vec<String>, StorageError> {
        self.read_live(keys, |key, _, _| key.clone())
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.read_live(keys, |key, _, value| {
            (key.clone(), Bytes::copy_from_slice(value))
        })
    }

    async fn set(&self, items: Vec<SetItem>) -> Result<(), StorageError> {
        self.write(Write::Set(items)).await
    }

    async fn mexpire(&self, items: Vec<(String, DeadlineMs)>) -> Result<(), StorageError> {
        self.write(Write::Expire(items)).await
    }

    async fn ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Option<DeadlineMs>)>, StorageError> {
        self.read_live(keys, |key, deadline, _| (key.clone(), deadline))
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        self.write(Write::Delete(keys.to_vec())).await
    }

    async fn clear(&self) -> Result<(), StorageError> {
        self.write(Write::Clear).await
    }

    async fn close(&self) -> Result<(), StorageError> {
        if let Some(sweeper) = self
            .sweeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            sweeper.abort();
        }
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((sender, thread)) = writer {
            // Dropping the last sender ends the writer loop once queued writes are done.
            drop(sender);
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| self.fail(e))?
                .map_err(|_| self.fail("the writer thread panicked"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(yaml: &str) -> Result<BoltOptions, (String, String)> {
        parse_options(&serde_norway::from_str(yaml).unwrap())
    }

    #[test]
    fn modes_are_octal_however_roadrunner_users_write_them() {
        for (text, mode) in [
            ("0666", 0o666),
            ("0755", 0o755),
            ("644", 0o644),
            ("'0o600'", 0o600),
            ("0600", 0o600),
        ] {
            let o = options(&format!("permissions: {text}")).unwrap();
            assert_eq!(o.permissions, mode, "{text}");
        }
        let (key, message) = options("permissions: 0999").unwrap_err();
        assert_eq!(key, "permissions");
        assert!(message.contains("octal"), "{message}");
    }

    #[test]
    fn defaults_and_interval() {
        assert_eq!(options("{}").unwrap(), BoltOptions::default());
        assert_eq!(
            options("interval: 0").unwrap().interval,
            Duration::from_secs(60)
        );
        assert_eq!(
            options("interval: 5\nfile: x.db").unwrap().interval,
            Duration::from_secs(5)
        );
        assert_eq!(options("interval: -1").unwrap_err().0, "interval");
        assert_eq!(options("file: ''").unwrap_err().0, "file");
    }

    #[test]
    fn records_carry_their_deadline() {
        assert_eq!(decode(&encode(Some(42), b"v")), Some((Some(42), &b"v"[..])));
        assert_eq!(decode(&encode(None, b"")), Some((None, &b""[..])));
        assert_eq!(decode(b"short"), None);
    }
}
