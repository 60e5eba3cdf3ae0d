//! rrkv against Redis on the same machine, in one run, alternating between the two so that
//! machine noise hits both alike. Writes a Markdown report and SVG charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::chart::{rss_chart, Series};
use crate::load::{self, LoadOptions, LoadReport, Op, Target, Ttl};
use crate::memory::{self, MemoryOptions, Report};

/// What to compare and how long to spend.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    pub rrkv: Target,
    pub rrkv_pid: u32,
    pub redis: Target,
    pub duration: Duration,
    pub warmup: Duration,
    pub churn: Duration,
    pub memory_keys: u64,
    /// Where the report goes; charts are written beside it.
    pub out: PathBuf,
    /// A smaller matrix, for a quick look.
    pub quick: bool,
}

struct Row {
    conns: usize,
    inflight: usize,
    op: Op,
    batch: usize,
    rrkv: LoadReport,
    redis: LoadReport,
}

fn matrix(quick: bool) -> Vec<(usize, usize, Op, usize)> {
    let conns: &[usize] = if quick { &[50] } else { &[1, 8, 50] };
    let mut out = Vec::new();
    for &c in conns {
        for inflight in [1, 16] {
            for op in [Op::Set, Op::Get, Op::Mixed { read_percent: 90 }] {
                for batch in [1, 16] {
                    out.push((c, inflight, op, batch));
                }
            }
        }
    }
    out
}

fn load_options(
    target: &Target,
    opts: &CompareOptions,
    conns: usize,
    inflight: usize,
    op: Op,
    batch: usize,
) -> LoadOptions {
    LoadOptions {
        target: target.clone(),
        conns,
        inflight,
        duration: opts.duration,
        requests: None,
        op,
        keys: 100_000,
        value_size: 32,
        ttl: Ttl::None,
        batch,
        rate: None,
        warmup: opts.warmup,
        prefill: false,
        progress: false,
    }
}

/// Runs everything and writes the report; returns its path.
pub async fn run(opts: CompareOptions) -> anyhow::Result<PathBuf> {
    let started = jiff::Timestamp::now();
    // Both get the same 100,000 keys first, so reads hit.
    for target in [&opts.rrkv, &opts.redis] {
        let mut fill = load_options(target, &opts, 8, 16, Op::Set, 100);
        fill.warmup = Duration::ZERO;
        load::fill(fill).await?;
    }
    let mut rows = Vec::new();
    let cases = matrix(opts.quick);
    for (i, &(conns, inflight, op, batch)) in cases.iter().enumerate() {
        eprintln!(
            "[{}/{}] conns={conns} inflight={inflight} op={op} batch={batch}",
            i + 1,
            cases.len()
        );
        let rrkv = load::run(load_options(&opts.rrkv, &opts, conns, inflight, op, batch)).await?;
        let redis = load::run(load_options(&opts.redis, &opts, conns, inflight, op, batch)).await?;
        rows.push(Row {
            conns,
            inflight,
            op,
            batch,
            rrkv,
            redis,
        });
    }

    let memory_opts = |target: &Target, pid: Option<u32>| MemoryOptions {
        target: target.clone(),
        pid,
        keys: opts.memory_keys,
        conns: 4,
        inflight: 16,
        batch: 100,
        churn: opts.churn,
    };
    let rrkv_mem = memory_opts(&opts.rrkv, Some(opts.rrkv_pid));
    let redis_mem = memory_opts(&opts.redis, None);
    let mut memory_pairs: Vec<(Report, Report)> = Vec::new();
    eprintln!("memory: same key");
    memory_pairs.push((
        memory::same_key(&rrkv_mem).await?,
        memory::same_key(&redis_mem).await?,
    ));
    eprintln!("memory: distinct keys");
    memory_pairs.push((
        memory::distinct_keys(&rrkv_mem).await?,
        memory::distinct_keys(&redis_mem).await?,
    ));
    eprintln!("memory: expiry (a warm-up round each, then the measured one)");
    memory::expiry(&rrkv_mem).await?;
    memory::expiry(&redis_mem).await?;
    memory_pairs.push((
        memory::expiry(&rrkv_mem).await?,
        memory::expiry(&redis_mem).await?,
    ));
    eprintln!("memory: churn");
    memory_pairs.push((
        memory::churn(&rrkv_mem).await?,
        memory::churn(&redis_mem).await?,
    ));

    let stem = opts.out.with_extension("");
    let chart = |name: &str| PathBuf::from(format!("{}-{name}.svg", stem.display()));
    let expiry = &memory_pairs[2];
    rss_chart(
        &chart("expiry"),
        "1,000,000 keys with a 2 s TTL, then no traffic",
        &[
            Series {
                label: "rrkv",
                samples: &expiry.0.samples,
            },
            Series {
                label: "redis",
                samples: &expiry.1.samples,
            },
        ],
    )?;
    let churn = &memory_pairs[3];
    rss_chart(
        &chart("churn"),
        "churn: random keys over 1,000,000, TTL 1-3 s",
        &[
            Series {
                label: "rrkv",
                samples: &churn.0.samples,
            },
            Series {
                label: "redis",
                samples: &churn.1.samples,
            },
        ],
    )?;

    let redis_version = match &opts.redis {
        Target::Redis(hp) => load::redis_command(hp, &["INFO", "server"])
            .await
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
            })
            .unwrap_or_default(),
        Target::Rrkv(_) | Target::Memcached(_) => String::new(),
    };
    let report = markdown(
        &opts,
        started,
        &redis_version,
        &rows,
        &memory_pairs,
        &chart("expiry"),
        &chart("churn"),
    );
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, report)?;
    Ok(opts.out.clone())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn markdown(
    opts: &CompareOptions,
    started: jiff::Timestamp,
    redis_version: &str,
    rows: &[Row],
    memory_pairs: &[(Report, Report)],
    expiry_chart: &Path,
    churn_chart: &Path,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# rrkv vs Redis, {}\n",
        started.strftime("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        md,
        "Machine: {}. Redis {redis_version} (no persistence) and rrkv (memory storage), both on loopback, \
         driven by `rrkv bench` with the same connection and scheduling code; the two alternate for every case. \
         Values 32 bytes, 100,000 keys, {:?} measured after {:?} of warm-up per case.\n",
        machine(),
        opts.duration,
        opts.warmup
    );
    let _ = writeln!(md, "## Throughput\n");
    let _ = writeln!(md, "| conns | inflight | op | batch | rrkv ops/s | Redis ops/s | rrkv/Redis | rrkv p99 µs | Redis p99 µs |");
    let _ = writeln!(md, "|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            r.conns,
            r.inflight,
            r.op,
            r.batch,
            r.rrkv.ops_per_sec,
            r.redis.ops_per_sec,
            r.rrkv.ops_per_sec / r.redis.ops_per_sec.max(1.0),
            r.rrkv.p99_us,
            r.redis.p99_us
        );
    }
    let errors: u64 = rows.iter().map(|r| r.rrkv.errors + r.redis.errors).sum();
    let _ = writeln!(md, "\nErrors over all cases: {errors}.\n");

    let _ = writeln!(md, "## Memory\n");
    let _ = writeln!(md, "| scenario | figure | rrkv | Redis |");
    let _ = writeln!(md, "|---|---|---:|---:|");
    for (a, b) in memory_pairs {
        for (name, value) in &a.figures {
            let other = b.figure(name).map_or("".into(), |v| format!("{v:.1}"));
            let _ = writeln!(md, "| {} | {name} | {value:.1} | {other} |", a.scenario);
        }
        for (name, value) in b.figures.iter().filter(|(n, _)| a.figure(n).is_none()) {
            let _ = writeln!(md, "| {} | {name} |  | {value:.1} |", a.scenario);
        }
    }
    let _ = writeln!(
        md,
        "\n![RSS during expiry]({})\n\n![RSS during churn]({})\n",
        file_name(expiry_chart),
        file_name(churn_chart)
    );

    let _ = writeln!(md, "## Targets\n");
    let ratio = |op: Op, inflight: usize| {
        rows.iter()
            .find(|r| r.conns == 50 && r.inflight == inflight && r.op == op && r.batch == 1)
            .map(|r| r.rrkv.ops_per_sec / r.redis.ops_per_sec.max(1.0))
    };
    for inflight in [1, 16] {
        for op in [Op::Set, Op::Get, Op::Mixed { read_percent: 90 }] {
            if let Some(x) = ratio(op, inflight) {
                let _ = writeln!(
                    md,
                    "- 50 conns, inflight {inflight}, {op}: rrkv/Redis {x:.2} (target ≥ 1.0) {}",
                    if x >= 1.0 { "met" } else { "missed" }
                );
            }
        }
    }
    let fig = |i: usize, name: &str| {
        (
            memory_pairs[i].0.figure(name),
            memory_pairs[i].1.figure(name),
        )
    };
    if let (Some(a), Some(b)) = fig(1, "bytes per key") {
        let _ = writeln!(
            md,
            "- bytes per key: rrkv {a:.1}, Redis {b:.1} (target: at most Redis's) {}",
            if a <= b { "met" } else { "missed" }
        );
    }
    if let (Some(a), _) = fig(0, "RSS growth (KiB)") {
        let _ = writeln!(
            md,
            "- same key set 1,000,000 times: RSS growth {a:.0} KiB (target < 1024) {}",
            if a < 1024.0 { "met" } else { "missed" }
        );
    }
    if let (Some(a), b) = fig(2, "RSS 5 s after vs before (%)") {
        let _ = writeln!(
            md,
            "- expiry: RSS 5 s after the deadline {a:+.1}% of the level before the load (target within 10%) {}; Redis {}",
            if a.abs() <= 10.0 { "met" } else { "missed" },
            b.map_or("-".into(), |b| format!("{b:+.1}%"))
        );
    }
    if let (Some(a), b) = fig(3, "last-30 s max vs 10 s level (%)") {
        let _ = writeln!(
            md,
            "- churn: RSS max of the last 30 s vs the level after 10 s: {a:+.1}% (target within 5%) {}; Redis {}",
            if a.abs() <= 5.0 { "met" } else { "missed" },
            b.map_or("-".into(), |b| format!("{b:+.1}%"))
        );
    }
    let _ = writeln!(md, "\nReproduce: `bench/compare` from a checkout.");
    md
}
