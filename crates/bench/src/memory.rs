//! Memory scenarios: what a server's resident memory does under TTL-heavy load.
//!
//! Each scenario reads the server's RSS from `/proc/<pid>/status` (so the server must run on
//! this machine) before, during and after a load sent with the load generator, so rrkv and
//! Redis get exactly the same traffic. For Redis, `INFO memory`'s `used_memory` is reported
//! too, and the pid comes from `INFO server` when not given.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rrkv_client::Client;
use serde::Serialize;

use crate::load::{self, redis_command, LoadOptions, Op, Target, Ttl};
use crate::rss::{mib, rss_bytes};

/// Settings shared by the scenarios.
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    pub target: Target,
    /// The server's process id; found through `INFO server` for Redis when `None`.
    pub pid: Option<u32>,
    /// Keys (or Set calls, for the same-key scenario).
    pub keys: u64,
    /// Connections the load is spread over.
    pub conns: usize,
    /// Requests in flight per connection.
    pub inflight: usize,
    /// Items per request when writing distinct keys.
    pub batch: usize,
    /// Length of the churn scenario.
    pub churn: Duration,
}

/// One reading, `t` seconds after the scenario started.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub t: f64,
    pub rss: u64,
    /// Redis's `used_memory`, when the target is Redis.
    pub used_memory: Option<u64>,
}

/// What a scenario measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    /// Named figures, in the order they are printed.
    pub figures: Vec<(String, f64)>,
    pub samples: Vec<Sample>,
    /// The figures in one sentence.
    pub summary: String,
}

impl Report {
    /// The report as plain text.
    pub fn human(&self) -> String {
        let mut out = format!("== {} ({})\n", self.scenario, self.target);
        for (name, value) in &self.figures {
            out.push_str(&format!("  {name:<44} {value:>14.1}\n"));
        }
        out.push_str(&format!("  {}\n", self.summary));
        out
    }

    /// A figure by name.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Pause before a baseline reading, so memory freed by the previous step has been returned
/// (allocators hand pages back on a timer of about a second).
const SETTLE: Duration = Duration::from_secs(2);

/// A server being measured.
struct Server {
    target: Target,
    pid: u32,
}

impl Server {
    async fn new(opts: &MemoryOptions) -> anyhow::Result<Server> {
        let pid = match (opts.pid, &opts.target) {
            (Some(pid), _) => pid,
            (None, Target::Redis(hp)) => {
                let info = redis_command(hp, &["INFO", "server"]).await?;
                info_field(&info, "process_id").context("INFO server has no process_id")? as u32
            }
            (None, Target::Rrkv(_)) => anyhow::bail!("--pid is required for an rrkv target"),
            (_, Target::Memcached(_)) => {
                anyhow::bail!("memory scenarios run against rrkv or Redis targets, not memcached")
            }
        };
        rss_bytes(pid).with_context(|| {
            format!("read the RSS of pid {pid}: the server must run on this machine")
        })?;
        Ok(Server {
            target: opts.target.clone(),
            pid,
        })
    }

    async fn sample(&self, start: Instant) -> anyhow::Result<Sample> {
        let used_memory = match &self.target {
            Target::Redis(hp) => info_field(
                &redis_command(hp, &["INFO", "memory"]).await?,
                "used_memory",
            ),
            Target::Rrkv(_) | Target::Memcached(_) => None,
        };
        Ok(Sample {
            t: start.elapsed().as_secs_f64(),
            rss: rss_bytes(self.pid)?,
            used_memory,
        })
    }

    async fn clear(&self) -> anyhow::Result<()> {
        match &self.target {
            Target::Rrkv(t) => Client::connect(&t.address).await?.clear(&t.storage).await?,
            Target::Redis(hp) => {
                redis_command(hp, &["FLUSHALL"]).await?;
            }
            Target::Memcached(_) => unreachable!("refused in Server::new"),
        }
        Ok(())
    }

    /// Clears the server and waits for its memory to settle; returns the baseline.
    async fn baseline(&self, start: Instant) -> anyhow::Result<Sample> {
        self.clear().await?;
        tokio::time::sleep(SETTLE).await;
        self.sample(start).await
    }

    /// Samples every 100 ms in the background until stopped.
    fn sampler(self: &Arc<Self>, start: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (server, stopped) = (self.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                match server.sample(start).await {
                    Ok(sample) => samples.push(sample),
                    Err(_) => break,
                }
            }
            samples
        });
        Sampler { stop, task }
    }
}

fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
}

struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

fn load_options(opts: &MemoryOptions, op: Op, keys: u64, ttl: Ttl, batch: usize) -> LoadOptions {
    LoadOptions {
        target: opts.target.clone(),
        conns: opts.conns,
        inflight: opts.inflight,
        duration: Duration::from_secs(24 * 3600),
        requests: None,
        op,
        keys,
        value_size: 32,
        ttl,
        batch,
        rate: None,
        warmup: Duration::ZERO,
        prefill: false,
        progress: false,
    }
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

fn used_memory_figures(
    figures: &mut Vec<(String, f64)>,
    before: &Sample,
    after: &Sample,
    per: Option<u64>,
) {
    if let (Some(b), Some(a)) = (before.used_memory, after.used_memory) {
        figures.push(("used_memory before (KiB)".into(), kib(b)));
        figures.push(("used_memory after (KiB)".into(), kib(a)));
        if let Some(n) = per {
            figures.push((
                "used_memory bytes per key".into(),
                (a as f64 - b as f64) / n as f64,
            ));
        }
    }
}

/// One key set with a TTL of 2000 s, `keys` times: RSS growth.
pub async fn same_key(opts: &MemoryOptions) -> anyhow::Result<Report> {
    let server = Arc::new(Server::new(opts).await?);
    let start = Instant::now();
    let mut load = load_options(opts, Op::Set, 1, Ttl::Fixed(Duration::from_secs(2000)), 1);
    // Warm up with 1% of the load, so buffers and allocator caches that any first traffic
    // creates are part of the baseline.
    load.requests = Some(opts.keys / 100);
    server.clear().await?;
    load::run(load.clone()).await?;
    tokio::time::sleep(SETTLE).await;
    let before = server.sample(start).await?;
    load.requests = Some(opts.keys);
    let report = load::run(load).await?;
    tokio::time::sleep(SETTLE).await;
    let after = server.sample(start).await?;
    let growth = after.rss as f64 - before.rss as f64;
    let mut figures = vec![
        ("sets".into(), report.requests as f64),
        ("seconds".into(), report.seconds),
        ("RSS before (KiB)".into(), kib(before.rss)),
        ("RSS after (KiB)".into(), kib(after.rss)),
        ("RSS growth (KiB)".into(), growth / 1024.0),
    ];
    used_memory_figures(&mut figures, &before, &after, None);
    Ok(Report {
        scenario: "same key, TTL 2000 s, set N times",
        target: opts.target.to_string(),
        figures,
        samples: vec![before, after],
        summary: format!(
            "{} sets in {:.1} s: RSS {} -> {} (growth {:.1} KiB)",
            report.requests,
            report.seconds,
            mib(before.rss),
            mib(after.rss),
            growth / 1024.0
        ),
    })
}

/// `keys` distinct 16-byte keys with 32-byte values and a 10-minute TTL: bytes per key over
/// the empty server.
pub async fn distinct_keys(opts: &MemoryOptions) -> anyhow::Result<Report> {
    let server = Arc::new(Server::new(opts).await?);
    let start = Instant::now();
    let before = server.baseline(start).await?;
    let report = load::fill(load_options(
        opts,
        Op::Set,
        opts.keys,
        Ttl::Fixed(Duration::from_secs(600)),
        opts.batch,
    ))
    .await?;
    tokio::time::sleep(SETTLE).await;
    let after = server.sample(start).await?;
    let per_key = (after.rss as f64 - before.rss as f64) / opts.keys as f64;
    let mut figures = vec![
        ("keys".into(), opts.keys as f64),
        ("seconds".into(), report.seconds),
        ("RSS before (KiB)".into(), kib(before.rss)),
        ("RSS after (KiB)".into(), kib(after.rss)),
        ("bytes per key".into(), per_key),
    ];
    used_memory_figures(&mut figures, &before, &after, Some(opts.keys));
    server.clear().await?;
    Ok(Report {
        scenario: "distinct 16-byte keys, 32-byte values, TTL 10 min",
        target: opts.target.to_string(),
        figures,
        samples: vec![before, after],
        summary: format!(
            "{} keys in {:.1} s: RSS {} -> {}, {per_key:.1} bytes per key",
            opts.keys,
            report.seconds,
            mib(before.rss),
            mib(after.rss)
        ),
    })
}

/// `keys` keys with a 2-second TTL, then no traffic: RSS every 100 ms until 10 s after the
/// last deadline.
pub async fn expiry(opts: &MemoryOptions) -> anyhow::Result<Report> {
    let server = Arc::new(Server::new(opts).await?);
    let start = Instant::now();
    let before = server.baseline(start).await?;
    let sampler = server.sampler(start);
    load::fill(load_options(
        opts,
        Op::Set,
        opts.keys,
        Ttl::Fixed(Duration::from_secs(2)),
        opts.batch,
    ))
    .await?;
    let last_deadline = start.elapsed().as_secs_f64() + 2.0;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let samples = sampler.stop().await;
    let at = |t: f64| samples.iter().find(|s| s.t >= t).copied().unwrap_or(before);
    let peak = samples.iter().map(|s| s.rss).max().unwrap_or(before.rss);
    let at5 = at(last_deadline + 5.0);
    let at10 = samples.last().copied().unwrap_or(before);
    let back = samples
        .iter()
        .find(|s| s.t >= last_deadline && s.rss as f64 <= before.rss as f64 * 1.10)
        .map(|s| s.t - last_deadline);
    let mut figures = vec![
        ("keys".into(), opts.keys as f64),
        ("last deadline (s after start)".into(), last_deadline),
        ("RSS before (KiB)".into(), kib(before.rss)),
        ("RSS peak (KiB)".into(), kib(peak)),
        ("RSS 5 s after last deadline (KiB)".into(), kib(at5.rss)),
        ("RSS 10 s after last deadline (KiB)".into(), kib(at10.rss)),
        (
            "RSS 5 s after vs before (%)".into(),
            (at5.rss as f64 / before.rss as f64 - 1.0) * 100.0,
        ),
        (
            "s after deadline until within 10% of before".into(),
            back.unwrap_or(f64::NAN),
        ),
    ];
    used_memory_figures(&mut figures, &before, &at5, None);
    Ok(Report {
        scenario: "keys with a 2 s TTL, then no traffic",
        target: opts.target.to_string(),
        figures,
        summary: format!(
            "RSS {} before, {} peak, {} 5 s after the last deadline ({:+.1}%), {} at 10 s",
            mib(before.rss),
            mib(peak),
            mib(at5.rss),
            (at5.rss as f64 / before.rss as f64 - 1.0) * 100.0,
            mib(at10.rss)
        ),
        samples,
    })
}

/// Random keys over a key space of `keys` with TTLs of 1-3 s for `opts.churn`: RSS must
/// plateau (the last 30 s within 5% of the level after the first 10 s).
pub async fn churn(opts: &MemoryOptions) -> anyhow::Result<Report> {
    let server = Arc::new(Server::new(opts).await?);
    let start = Instant::now();
    let before = server.baseline(start).await?;
    let sampler = server.sampler(start);
    let load_start = start.elapsed().as_secs_f64();
    let mut load = load_options(
        opts,
        Op::Set,
        opts.keys,
        Ttl::Range(Duration::from_secs(1), Duration::from_secs(3)),
        1,
    );
    load.duration = opts.churn;
    let report = load::run(load).await?;
    let samples = sampler.stop().await;
    let end = start.elapsed().as_secs_f64();
    let at10 = samples
        .iter()
        .find(|s| s.t >= load_start + 10.0)
        .copied()
        .unwrap_or(before);
    let tail: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= end - 30.0_f64.min(opts.churn.as_secs_f64() / 2.0))
        .collect();
    let tail_max = tail.iter().map(|s| s.rss).max().unwrap_or(0);
    let tail_mean = tail.iter().map(|s| s.rss as f64).sum::<f64>() / tail.len().max(1) as f64;
    let drift = (tail_max as f64 / at10.rss as f64 - 1.0) * 100.0;
    let figures = vec![
        ("seconds".into(), report.seconds),
        ("sets per second".into(), report.ops_per_sec),
        ("RSS before (KiB)".into(), kib(before.rss)),
        ("RSS 10 s into the load (KiB)".into(), kib(at10.rss)),
        (
            "RSS mean over the last 30 s (KiB)".into(),
            tail_mean / 1024.0,
        ),
        ("RSS max over the last 30 s (KiB)".into(), kib(tail_max)),
        ("last-30 s max vs 10 s level (%)".into(), drift),
    ];
    Ok(Report {
        scenario: "churn: random keys, TTL 1-3 s",
        target: opts.target.to_string(),
        figures,
        summary: format!(
            "{:.0} sets/s for {:.0} s: RSS {} at 10 s, last 30 s max {} ({drift:+.1}%)",
            report.ops_per_sec,
            report.seconds,
            mib(at10.rss),
            mib(tail_max)
        ),
        samples,
    })
}
