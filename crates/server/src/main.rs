//! The `rrkv` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rrkv::config::Config;
use rrkv::drivers::BuildContext;
use rrkv::server::ServeOptions;
use rrkv::Server;
use rrkv_protocol::Address;

/// jemalloc, because its background thread returns freed pages to the OS on a timer even
/// when the threads that freed them go idle: memory comes back after keys expire with no
/// client traffic at all.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: a background purging thread, dirty pages returned
/// after one second, and no lingering "muzzy" state (MADV_FREE pages still count in RSS).
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: ConfString =
    ConfString(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer that can live in a `static` (jemalloc reads `const char *malloc_conf`).
#[repr(transparent)]
pub struct ConfString(*const std::ffi::c_char);

// SAFETY: the pointer refers to a string literal, which is immutable and lives forever.
unsafe impl Sync for ConfString {}

/// A key-value server that speaks RoadRunner's KV RPC (goridge + kv.v1 protobuf).
///
/// PHP applications using spiral/roadrunner-kv work unchanged when pointed at it, and an
/// existing .rr.yaml (rpc.listen, kv storages) configures it.
#[derive(Parser, Debug)]
#[command(name = "rrkv", version, propagate_version = true)]
struct Cli {
    /// Log level: error, warn, info, debug or trace. RUST_LOG, when set, takes precedence
    /// and accepts per-module filters (e.g. RUST_LOG=rrkv=debug).
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    ///
    /// Reads a RoadRunner-style YAML file: the one given with -c, else .rr.yaml in the
    /// working directory if it exists. Without a file, serves one memory storage named
    /// "default" on tcp://127.0.0.1:6001.
    Serve(ServeArgs),

    /// Measure a running server (load and memory scenarios over loopback).
    #[command(subcommand)]
    Bench(BenchCommand),

    /// Talk to a running server, as the PHP client would: get, set, has, ttl, expire,
    /// delete, clear.
    Kv(KvArgs),
}

#[derive(clap::Args, Debug)]
struct KvArgs {
    /// Server address: tcp://host:port or unix:///path/to.sock.
    #[arg(long, default_value = rrkv::config::DEFAULT_LISTEN, value_name = "ADDRESS")]
    address: Address,

    /// Storage name (a key of the kv: section).
    #[arg(long, short = 's', default_value = "default")]
    storage: String,

    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Print `key<TAB>value` for each key that exists.
    Get {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Store a value, optionally with a TTL (e.g. 10s, 5m) or an RFC 3339 deadline.
    Set {
        key: String,
        value: String,
        #[arg(long, value_parser = parse_duration, conflicts_with = "deadline")]
        ttl: Option<Duration>,
        #[arg(long)]
        deadline: Option<String>,
    },
    /// Print each key that exists.
    Has {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print `key<TAB>deadline` for each key that exists (empty: no deadline).
    Ttl {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Give existing keys a new TTL.
    Expire {
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Delete keys (missing keys are fine).
    Delete {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Delete every key of the storage.
    Clear,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Throughput and latency: ops/s, items/s, p50/p99/p99.9/max, errors.
    Load(LoadArgs),
    /// Memory scenarios: RSS of the server process under TTL-heavy load.
    Memory(MemoryArgs),
    /// rrkv against Redis, alternating: the throughput matrix and the memory scenarios,
    /// written as a Markdown report with SVG charts (bench/compare runs this).
    Compare(CompareArgs),
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// The rrkv storage to measure.
    #[arg(long, default_value = "rrkv://127.0.0.1:6001/default")]
    rrkv: rrkv_bench::load::Target,

    /// Process id of that rrkv server (its RSS is read from /proc).
    #[arg(long)]
    rrkv_pid: u32,

    /// The Redis server to compare with (its pid comes from INFO).
    #[arg(long, default_value = "redis://127.0.0.1:6390")]
    redis: rrkv_bench::load::Target,

    /// Measured time per throughput case and target.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    duration: Duration,

    /// Warm-up per throughput case and target.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// Length of the churn scenario.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    churn: Duration,

    /// Keys in the memory scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    memory_keys: u64,

    /// Report file; charts are written beside it.
    #[arg(long)]
    out: PathBuf,

    /// Only the 50-connection cases.
    #[arg(long)]
    quick: bool,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// rrkv://host:port/storage, rrkv+unix:///path.sock#storage, redis://host:port, or memcached://host:port.
    #[arg(long, default_value = "rrkv://127.0.0.1:6001/default")]
    target: rrkv_bench::load::Target,

    /// Connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,

    /// Requests outstanding per connection (1 = request/response, as a PHP worker does).
    #[arg(long, default_value_t = 1)]
    inflight: usize,

    /// How long to measure, after the warm-up (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Stop after this many measured requests, if that comes before --duration.
    #[arg(long)]
    requests: Option<u64>,

    /// set, get, has, or mixed:P (P percent gets, the rest sets).
    #[arg(long, default_value = "mixed:90")]
    op: rrkv_bench::load::Op,

    /// Size of the key space; keys are chosen uniformly at random.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,

    /// Value size in bytes.
    #[arg(long, default_value_t = 32)]
    value_size: usize,

    /// TTL of written keys: none, a duration (10s), or a range (1s..3s).
    #[arg(long, default_value = "none")]
    ttl: rrkv_bench::load::Ttl,

    /// Items per request (kv.Set / kv.MGet items; MSET / MGET on Redis).
    #[arg(long, default_value_t = 1)]
    batch: usize,

    /// Target requests per second over all connections; latency then counts from the
    /// intended send time (coordinated omission correction). Unset: as fast as possible.
    #[arg(long)]
    rate: Option<f64>,

    /// Warm-up before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,

    /// Write every key once before the run, so reads hit.
    #[arg(long)]
    prefill: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: negative"))
}

#[derive(clap::Args, Debug)]
struct MemoryArgs {
    /// rrkv://host:port/storage, rrkv+unix:///path.sock#storage, or redis://host:port.
    #[arg(long, default_value = "rrkv://127.0.0.1:6001/default")]
    target: rrkv_bench::load::Target,

    /// Process id of the server, whose RSS is read from /proc (it must run on this machine).
    /// Found through INFO for Redis.
    #[arg(long)]
    pid: Option<u32>,

    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,

    /// Keys to write (Set calls for same-key).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,

    /// Connections the load is spread over.
    #[arg(long, default_value_t = 4)]
    conns: usize,

    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    inflight: usize,

    /// Items per request when writing distinct keys.
    #[arg(long, default_value_t = 100)]
    batch: usize,

    /// Length of the churn scenario.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    churn: Duration,

    /// Print JSON (with every RSS sample) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    SameKey,
    Distinct,
    Expiry,
    Churn,
    All,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Configuration file (RoadRunner .rr.yaml format: rpc.listen and kv sections are read,
    /// other sections ignored).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Listen address, overriding rpc.listen: tcp://host:port or unix:///path/to.sock.
    #[arg(long, value_name = "ADDRESS")]
    listen: Option<Address>,

    /// Largest frame payload accepted, in bytes; a larger frame closes its connection.
    #[arg(long, value_name = "BYTES", default_value_t = rrkv_protocol::frame::DEFAULT_MAX_PAYLOAD)]
    max_frame_size: usize,

    /// Calls one connection may have running at once; reading pauses beyond it.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_inflight: usize,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9180; any path, such as
    /// /metrics): requests and latency per method, connections, frame errors, keys per storage.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<std::net::SocketAddr>,

    /// Worker threads serving connections (default: one per core). On a machine shared with
    /// a busy client, fewer threads can mean fewer context switches.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Seconds that in-flight calls get to finish after SIGINT or SIGTERM.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    shutdown_timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(ServeArgs {
        threads: Some(threads),
        ..
    }) = &cli.command
    {
        builder.worker_threads((*threads).max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rrkv: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(BenchCommand::Memory(args)) => runtime.block_on(bench_memory(args)),
        Command::Kv(args) => runtime.block_on(kv(args)),
        Command::Bench(BenchCommand::Load(args)) => runtime.block_on(bench_load(args)),
        Command::Bench(BenchCommand::Compare(args)) => runtime.block_on(bench_compare(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rrkv: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(level),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None if Path::new(".rr.yaml").exists() => Config::load(Path::new(".rr.yaml"))?,
        None => {
            tracing::info!(
                "no configuration file (-c not given, no .rr.yaml here): serving one memory storage named \"default\""
            );
            Config::builtin_default()
        }
    };
    if let Some(path) = &config.source {
        tracing::info!(file = %path.display(), storages = config.storages.len(), "configuration loaded");
    }
    let listen = args.listen.clone().unwrap_or_else(|| config.listen.clone());
    if args.shutdown_timeout.is_nan() || args.shutdown_timeout < 0.0 {
        anyhow::bail!("--shutdown-timeout must be a number of seconds >= 0");
    }
    let options = ServeOptions {
        limits: rrkv::connection::Limits {
            max_payload: args.max_frame_size,
            max_inflight: args.max_inflight.max(1),
        },
        shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout),
    };
    if let Some(address) = args.metrics {
        rrkv::metrics::install_prometheus(address)?;
        tracing::info!(%address, "serving Prometheus metrics");
    }
    let server = Server::start(&config, &listen, &BuildContext::default(), options).await?;
    let gauges = rrkv::metrics::spawn_storage_gauges(server.dispatcher());
    tracing::info!(address = %server.local_address(), "listening");
    server.serve(shutdown_signal()).await;
    gauges.abort();
    Ok(())
}

fn refs(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

async fn kv(args: KvArgs) -> anyhow::Result<()> {
    use rrkv_client::{Client, Item};
    let deadline_in = |ttl: Duration| -> anyhow::Result<String> {
        let at = jiff::Timestamp::now() + jiff::SignedDuration::try_from(ttl)?;
        Ok(at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    };
    let mut client = Client::connect(&args.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.address))?;
    let storage = args.storage.as_str();
    match args.command {
        KvCommand::Get { keys } => {
            for (key, value) in client.mget(storage, &refs(&keys)).await? {
                println!("{key}\t{}", String::from_utf8_lossy(&value));
            }
        }
        KvCommand::Set {
            key,
            value,
            ttl,
            deadline,
        } => {
            let timeout = match (ttl, deadline) {
                (Some(ttl), _) => deadline_in(ttl)?,
                (None, Some(deadline)) => deadline,
                (None, None) => String::new(),
            };
            client
                .set(
                    storage,
                    vec![Item {
                        key,
                        value: value.into(),
                        timeout,
                    }],
                )
                .await?;
        }
        KvCommand::Has { keys } => {
            for key in client.has(storage, &refs(&keys)).await? {
                println!("{key}");
            }
        }
        KvCommand::Ttl { keys } => {
            for (key, timeout) in client.ttl(storage, &refs(&keys)).await? {
                println!("{key}\t{timeout}");
            }
        }
        KvCommand::Expire { keys, ttl } => {
            let deadline = deadline_in(ttl)?;
            let items: Vec<(&str, &str)> = keys
                .iter()
                .map(|k| (k.as_str(), deadline.as_str()))
                .collect();
            client.mexpire(storage, &items).await?;
        }
        KvCommand::Delete { keys } => client.delete(storage, &refs(&keys)).await?,
        KvCommand::Clear => client.clear(storage).await?,
    }
    Ok(())
}

async fn bench_load(args: LoadArgs) -> anyhow::Result<()> {
    let opts = rrkv_bench::load::LoadOptions {
        target: args.target,
        conns: args.conns.max(1),
        inflight: args.inflight.max(1),
        duration: args.duration,
        requests: args.requests,
        op: args.op,
        keys: args.keys,
        value_size: args.value_size,
        ttl: args.ttl,
        batch: args.batch,
        rate: args.rate,
        warmup: args.warmup,
        prefill: args.prefill,
        progress: !args.quiet && !args.json,
    };
    let report = rrkv_bench::load::run(opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

async fn bench_compare(args: CompareArgs) -> anyhow::Result<()> {
    let out = rrkv_bench::compare::run(rrkv_bench::compare::CompareOptions {
        rrkv: args.rrkv,
        rrkv_pid: args.rrkv_pid,
        redis: args.redis,
        duration: args.duration,
        warmup: args.warmup,
        churn: args.churn,
        memory_keys: args.memory_keys,
        out: args.out,
        quick: args.quick,
    })
    .await?;
    println!("{}", out.display());
    Ok(())
}

async fn bench_memory(args: MemoryArgs) -> anyhow::Result<()> {
    use rrkv_bench::memory;
    let opts = memory::MemoryOptions {
        target: args.target,
        pid: args.pid,
        keys: args.keys,
        conns: args.conns.max(1),
        inflight: args.inflight.max(1),
        batch: args.batch.max(1),
        churn: args.churn,
    };
    let run = |s: Scenario| args.scenario == Scenario::All || args.scenario == s;
    let mut reports = Vec::new();
    if run(Scenario::SameKey) {
        reports.push(memory::same_key(&opts).await?);
    }
    if run(Scenario::Distinct) {
        reports.push(memory::distinct_keys(&opts).await?);
    }
    if run(Scenario::Expiry) {
        reports.push(memory::expiry(&opts).await?);
    }
    if run(Scenario::Churn) {
        reports.push(memory::churn(&opts).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            print!("{}", report.human());
        }
    }
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
}
