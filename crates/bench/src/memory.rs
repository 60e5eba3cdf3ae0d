//! Memory scenarios: what the server's resident memory does under TTL-heavy load.
//!
//! Each scenario measures the server's RSS (from `/proc/<pid>/status`, so the server must run
//! on this machine) before, during and after a load it sends over loopback, and returns a
//! [`Report`] with the figures and the samples.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rrkv_client::{Client, Item, Request};
use serde::Serialize;

use crate::rss::{mib, rss_bytes};
use crate::target::RrkvTarget;

/// Settings shared by the scenarios.
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    pub target: RrkvTarget,
    /// The server's process id, whose RSS is read.
    pub pid: u32,
    /// Keys (or Set calls, for the same-key scenario).
    pub keys: u64,
    /// Connections the load is spread over.
    pub conns: usize,
    /// Calls in flight per connection.
    pub window: usize,
    /// Items per `kv.Set` when filling with distinct keys.
    pub batch: usize,
}

/// One RSS reading, `t` seconds after the scenario started.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub t: f64,
    pub rss: u64,
}

/// What a scenario measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// Named figures, in the order they are printed.
    pub figures: Vec<(String, f64)>,
    pub samples: Vec<Sample>,
    /// A one-paragraph reading of the figures.
    pub summary: String,
}

impl Report {
    /// The report as plain text.
    pub fn human(&self) -> String {
        let mut out = format!("== {}\n", self.scenario);
        for (name, value) in &self.figures {
            out.push_str(&format!("  {name:<40} {value:>14.1}\n"));
        }
        out.push_str(&format!("  {}\n", self.summary));
        out
    }
}

/// 16-byte keys, as in the scenarios' definition.
fn key(i: u64) -> String {
    format!("key:{i:012}")
}

fn deadline_in(ms: i64) -> String {
    let ts = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(ms);
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Pause before a baseline reading, so memory freed by the previous step has been returned
/// (allocators hand pages back on a timer of about a second).
const SETTLE: Duration = Duration::from_secs(2);

const VALUE: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// Sends `calls` `kv.Set` calls built by `make`, spread over connections, `window` in flight
/// per connection.
async fn send_sets(
    opts: &MemoryOptions,
    calls: u64,
    make: Arc<dyn Fn(u64) -> Vec<Item> + Send + Sync>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for conn in 0..opts.conns as u64 {
        let opts = opts.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&opts.target.address)
                .await
                .with_context(|| format!("connect to {}", opts.target.address))?;
            let mut call = conn;
            while call < calls {
                let mut window = Vec::with_capacity(opts.window);
                while window.len() < opts.window && call < calls {
                    let request = Request {
                        storage: opts.target.storage.clone(),
                        items: make(call),
                    };
                    window.push(("kv.Set", request));
                    call += opts.conns as u64;
                }
                for reply in client.pipeline(&window).await? {
                    reply.context("kv.Set failed")?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Reads a process's RSS every 100 ms in the background until stopped.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(pid: u32, start: Instant) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                match rss_bytes(pid) {
                    Ok(rss) => samples.push(Sample {
                        t: start.elapsed().as_secs_f64(),
                        rss,
                    }),
                    Err(_) => break,
                }
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

fn rss(opts: &MemoryOptions) -> anyhow::Result<u64> {
    rss_bytes(opts.pid).with_context(|| format!("read the RSS of pid {}", opts.pid))
}

async fn clear(opts: &MemoryOptions) -> anyhow::Result<()> {
    let mut client = Client::connect(&opts.target.address).await?;
    client.clear(&opts.target.storage).await?;
    Ok(())
}

/// One key set with a TTL of 2000 s, `keys` times: RSS growth (upstream grew a goroutine per call).
pub async fn same_key(opts: &MemoryOptions) -> anyhow::Result<Report> {
    clear(opts).await?;
    let deadline = deadline_in(2_000_000);
    let set_same = Arc::new(move |_| {
        vec![Item {
            key: "same-key".into(),
            value: Bytes::from_static(VALUE),
            timeout: deadline.clone(),
        }]
    });
    // Warm up with 1% of the load, so connection buffers and allocator caches that any
    // first traffic creates are in the baseline.
    send_sets(opts, opts.keys / 100, set_same.clone()).await?;
    tokio::time::sleep(SETTLE).await;
    let before = rss(opts)?;
    let start = Instant::now();
    send_sets(opts, opts.keys, set_same).await?;
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(opts)?;
    let growth = after as f64 - before as f64;
    Ok(Report {
        scenario: "same key, TTL 2000 s, set N times",
        figures: vec![
            ("sets".into(), opts.keys as f64),
            ("seconds".into(), secs),
            ("RSS before (KiB)".into(), before as f64 / 1024.0),
            ("RSS after (KiB)".into(), after as f64 / 1024.0),
            ("RSS growth (KiB)".into(), growth / 1024.0),
        ],
        samples: vec![],
        summary: format!(
            "{} sets in {secs:.1} s: RSS {} -> {} (growth {:.1} KiB)",
            opts.keys,
            mib(before),
            mib(after),
            growth / 1024.0
        ),
    })
}

/// `keys` distinct 16-byte keys with 32-byte values and a 10-minute TTL: bytes per key over
/// the empty server.
pub async fn distinct_keys(opts: &MemoryOptions) -> anyhow::Result<Report> {
    clear(opts).await?;
    tokio::time::sleep(SETTLE).await;
    let before = rss(opts)?;
    let batch = opts.batch.max(1) as u64;
    let calls = opts.keys.div_ceil(batch);
    let keys = opts.keys;
    let start = Instant::now();
    let deadline = deadline_in(600_000);
    send_sets(
        opts,
        calls,
        Arc::new(move |call| {
            (call * batch..((call + 1) * batch).min(keys))
                .map(|i| Item {
                    key: key(i),
                    value: Bytes::from_static(VALUE),
                    timeout: deadline.clone(),
                })
                .collect()
        }),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(opts)?;
    let per_key = (after as f64 - before as f64) / opts.keys as f64;
    clear(opts).await?;
    Ok(Report {
        scenario: "distinct 16-byte keys, 32-byte values, TTL 10 min",
        figures: vec![
            ("keys".into(), opts.keys as f64),
            ("seconds".into(), secs),
            ("RSS before (KiB)".into(), before as f64 / 1024.0),
            ("RSS after (KiB)".into(), after as f64 / 1024.0),
            ("bytes per key".into(), per_key),
        ],
        samples: vec![],
        summary: format!(
            "{} keys in {secs:.1} s: RSS {} -> {}, {per_key:.1} bytes per key",
            opts.keys,
            mib(before),
            mib(after)
        ),
    })
}

/// `keys` keys with a 2-second TTL, then no traffic: RSS every 100 ms until 10 s after the
/// last deadline.
pub async fn expiry(opts: &MemoryOptions) -> anyhow::Result<Report> {
    clear(opts).await?;
    tokio::time::sleep(SETTLE).await;
    let before = rss(opts)?;
    let batch = opts.batch.max(1) as u64;
    let calls = opts.keys.div_ceil(batch);
    let keys = opts.keys;
    let start = Instant::now();
    let sampler = Sampler::start(opts.pid, start);
    send_sets(
        opts,
        calls,
        // Each batch gets its deadline when it is built, so every key lives exactly 2 s.
        Arc::new(move |call| {
            let deadline = deadline_in(2_000);
            (call * batch..((call + 1) * batch).min(keys))
                .map(|i| Item {
                    key: key(i),
                    value: Bytes::from_static(VALUE),
                    timeout: deadline.clone(),
                })
                .collect()
        }),
    )
    .await?;
    let loaded = start.elapsed().as_secs_f64();
    let peak_after_load = rss(opts)?;
    let last_deadline = loaded + 2.0;
    tokio::time::sleep(Duration::from_secs_f64(2.0 + 10.0)).await;
    let samples = sampler.stop().await;
    let at = |t: f64| {
        samples
            .iter()
            .find(|s| s.t >= t)
            .map(|s| s.rss)
            .unwrap_or(0)
    };
    let peak = samples
        .iter()
        .map(|s| s.rss)
        .max()
        .unwrap_or(peak_after_load);
    let at5 = at(last_deadline + 5.0);
    let at10 = samples.last().map(|s| s.rss).unwrap_or(0);
    let back_within = samples
        .iter()
        .find(|s| s.t >= last_deadline && (s.rss as f64) <= before as f64 * 1.10)
        .map(|s| s.t - last_deadline);
    Ok(Report {
        scenario: "keys with a 2 s TTL, then no traffic",
        figures: vec![
            ("keys".into(), opts.keys as f64),
            ("load seconds".into(), loaded),
            ("RSS before (KiB)".into(), before as f64 / 1024.0),
            ("RSS peak (KiB)".into(), peak as f64 / 1024.0),
            ("RSS 5 s after last deadline (KiB)".into(), at5 as f64 / 1024.0),
            ("RSS 10 s after last deadline (KiB)".into(), at10 as f64 / 1024.0),
            ("s after deadline to within 10% of before".into(), back_within.unwrap_or(f64::NAN)),
        ],
        summary: format!(
            "RSS {} before, {} peak, {} 5 s after the last deadline ({:+.1}% of before), {} at 10 s",
            mib(before),
            mib(peak),
            mib(at5),
            (at5 as f64 / before as f64 - 1.0) * 100.0,
            mib(at10)
        ),
        samples,
    })
}
