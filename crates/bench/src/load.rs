//! The load generator: the same connections and scheduling for rrkv and Redis, so the only
//! difference between the two is the wire format ([`Wire`]).
//!
//! Each connection keeps up to `inflight` requests outstanding (1 = strict request/response,
//! as a PHP worker does). Latency is measured from when a request was *meant* to be sent:
//! with a target rate, a request that waits behind a slow one is charged the wait
//! (coordinated omission correction); without one, that is when it was sent.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};
use rrkv_client::{Address, Item, Request, Transport};
use rrkv_protocol::frame::{self, flags, Frame};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::target::RrkvTarget;

/// What the load is sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Rrkv(RrkvTarget),
    /// A Redis server, `redis://host:port`.
    Redis(String),
    /// A memcached server, `memcached://host:port` (meta protocol).
    Memcached(String),
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hostport) = s.strip_prefix("memcached://") {
            return match hostport.trim_end_matches('/') {
                hp if hp.contains(':') => Ok(Target::Memcached(hp.to_string())),
                _ => Err(format!(
                    "invalid target {s:?}: expected memcached://host:port"
                )),
            };
        }
        match s.strip_prefix("redis://") {
            Some(hostport) if hostport.contains(':') => {
                Ok(Target::Redis(hostport.trim_end_matches('/').to_string()))
            }
            Some(_) => Err(format!("invalid target {s:?}: expected redis://host:port")),
            None => s.parse().map(Target::Rrkv),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Rrkv(t) => match &t.address {
                Address::Tcp(hp) => write!(f, "rrkv://{hp}/{}", t.storage),
                Address::Unix(p) => write!(f, "rrkv+unix://{}#{}", p.display(), t.storage),
            },
            Target::Redis(hp) => write!(f, "redis://{hp}"),
            Target::Memcached(hp) => write!(f, "memcached://{hp}"),
        }
    }
}

/// Which requests to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Set,
    Get,
    Has,
    /// `read_percent` % gets, the rest sets.
    Mixed {
        read_percent: u8,
    },
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "set" => Ok(Op::Set),
            "get" => Ok(Op::Get),
            "has" => Ok(Op::Has),
            _ => match s.strip_prefix("mixed:").map(str::parse::<u8>) {
                Some(Ok(p)) if p <= 100 => Ok(Op::Mixed { read_percent: p }),
                _ => Err(format!(
                    "invalid op {s:?}: expected set, get, has or mixed:<read percent>"
                )),
            },
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Set => write!(f, "set"),
            Op::Get => write!(f, "get"),
            Op::Has => write!(f, "has"),
            Op::Mixed { read_percent } => write!(f, "mixed:{read_percent}"),
        }
    }
}

/// TTL of written keys: none, fixed, or uniform in a range (`1s..3s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    None,
    Fixed(Duration),
    Range(Duration, Duration),
}

fn duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: negative"))
}

impl FromStr for Ttl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Ttl::None);
        }
        match s.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (duration(lo)?, duration(hi)?);
                if lo > hi || lo.is_zero() {
                    return Err(format!(
                        "invalid TTL range {s:?}: expected low..high with 0 < low <= high"
                    ));
                }
                Ok(Ttl::Range(lo, hi))
            }
            None => {
                let d = duration(s)?;
                if d.is_zero() {
                    return Err("a TTL of 0 deletes; use none for no expiry".into());
                }
                Ok(Ttl::Fixed(d))
            }
        }
    }
}

impl std::fmt::Display for Ttl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ttl::None => write!(f, "none"),
            Ttl::Fixed(d) => write!(f, "{d:?}"),
            Ttl::Range(lo, hi) => write!(f, "{lo:?}..{hi:?}"),
        }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub target: Target,
    pub conns: usize,
    pub inflight: usize,
    pub duration: Duration,
    /// Stop after this many measured requests (whichever comes first with `duration`).
    pub requests: Option<u64>,
    pub op: Op,
    pub keys: u64,
    pub value_size: usize,
    pub ttl: Ttl,
    pub batch: usize,
    /// Target requests per second over all connections; `None` sends as fast as replies allow.
    pub rate: Option<f64>,
    pub warmup: Duration,
    /// Write every key once before the run (so reads hit).
    pub prefill: bool,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub op: String,
    pub conns: usize,
    pub inflight: usize,
    pub batch: usize,
    pub value_size: usize,
    pub keys: u64,
    pub ttl: String,
    pub seconds: f64,
    pub requests: u64,
    pub items: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub items_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LoadReport {
    /// A human-readable table.
    pub fn human(&self) -> String {
        format!(
            "target      {}\nload        op={} conns={} inflight={} batch={} value={}B keys={} ttl={}\n\
             measured    {:.1} s, {} requests, {} items, {} errors\n\
             throughput  {:>12.0} ops/s  {:>12.0} items/s\n\
             latency     p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us\n",
            self.target, self.op, self.conns, self.inflight, self.batch, self.value_size, self.keys, self.ttl,
            self.seconds, self.requests, self.items, self.errors,
            self.ops_per_sec, self.items_per_sec,
            self.p50_us, self.p99_us, self.p999_us, self.max_us,
        )
    }
}

/// One request as planned: what kind, which keys, which TTL.
struct Planned {
    kind: Kind,
    keys: Vec<u64>,
    ttl: Option<Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
    Has,
}

fn key_name(i: u64) -> String {
    format!("key:{i:012}")
}

/// The wire format: the only part that differs between rrkv and Redis.
trait Wire: Send {
    /// Appends request `id` to `buf`.
    fn encode(&mut self, id: u32, request: &Planned, value: &[u8], buf: &mut BytesMut);
    /// Takes one complete reply off `buf`: the id it answers and whether it succeeded.
    fn decode(&mut self, buf: &mut BytesMut) -> anyhow::Result<Option<(u32, bool)>>;
}

/// goridge frames with `kv.v1` protobuf; replies carry the request's seq, in any order.
struct RrkvWire {
    storage: String,
}

impl Wire for RrkvWire {
    fn encode(&mut self, id: u32, request: &Planned, value: &[u8], buf: &mut BytesMut) {
        let timeout = request.ttl.map(|ttl| {
            let at =
                jiff::Timestamp::now() + jiff::SignedDuration::try_from(ttl).unwrap_or_default();
            at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
        });
        let items = request
            .keys
            .iter()
            .map(|&k| Item {
                key: key_name(k),
                value: if request.kind == Kind::Write {
                    bytes::Bytes::copy_from_slice(value)
                } else {
                    Default::default()
                },
                timeout: timeout.clone().unwrap_or_default(),
            })
            .collect();
        let method = match request.kind {
            Kind::Write => "kv.Set",
            Kind::Read => "kv.MGet",
            Kind::Has => "kv.Has",
        };
        let message = Request {
            storage: self.storage.clone(),
            items,
        };
        frame::put_message(buf, flags::CODEC_PROTO, id, method.as_bytes(), &message);
    }

    fn decode(&mut self, buf: &mut BytesMut) -> anyhow::Result<Option<(u32, bool)>> {
        Ok(Frame::decode(buf, frame::DEFAULT_MAX_PAYLOAD)?
            .map(|f| (f.seq, f.flags & flags::ERROR == 0)))
    }
}

/// RESP2; replies come in request order. A batch of writes with a TTL is sent as pipelined
/// `SET .. PX` commands (MSET has no TTL) and counts as one request.
#[derive(Default)]
struct RedisWire {
    /// (id, replies still expected, all ok so far), oldest first.
    pending: VecDeque<(u32, usize, bool)>,
}

impl Wire for RedisWire {
    fn encode(&mut self, id: u32, request: &Planned, value: &[u8], buf: &mut BytesMut) {
        let keys: Vec<String> = request.keys.iter().map(|&k| key_name(k)).collect();
        let ttl_ms = request.ttl.map(|t| t.as_millis().max(1).to_string());
        let mut send = |args: &[&[u8]]| {
            let frames: Vec<BorrowedFrame> =
                args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
            extend_encode_borrowed(buf, &BorrowedFrame::Array(&frames), false)
                .expect("encode RESP");
        };
        let mut replies = 1;
        match (request.kind, keys.len(), &ttl_ms) {
            (Kind::Write, 1, None) => send(&[b"SET", keys[0].as_bytes(), value]),
            (Kind::Write, _, None) => {
                let mut args: Vec<&[u8]> = vec![b"MSET"];
                for k in &keys {
                    args.push(k.as_bytes());
                    args.push(value);
                }
                send(&args);
            }
            (Kind::Write, n, Some(ms)) => {
                for k in &keys {
                    send(&[b"SET", k.as_bytes(), value, b"PX", ms.as_bytes()]);
                }
                replies = n;
            }
            (Kind::Read, 1, _) => send(&[b"GET", keys[0].as_bytes()]),
            (Kind::Read, _, _) => {
                let mut args: Vec<&[u8]> = vec![b"MGET"];
                args.extend(keys.iter().map(|k| k.as_bytes()));
                send(&args);
            }
            (Kind::Has, _, _) => {
                let mut args: Vec<&[u8]> = vec![b"EXISTS"];
                args.extend(keys.iter().map(|k| k.as_bytes()));
                send(&args);
            }
        }
        self.pending.push_back((id, replies, true));
    }

    fn decode(&mut self, buf: &mut BytesMut) -> anyhow::Result<Option<(u32, bool)>> {
        while let Some((frame, len)) =
            decode_range(buf).map_err(|e| anyhow::anyhow!("bad RESP reply: {e:?}"))?
        {
            buf.advance(len);
            let front = self
                .pending
                .front_mut()
                .context("a RESP reply nobody asked for")?;
            front.1 -= 1;
            front.2 &= !matches!(frame, RangeFrame::Error(_));
            if front.1 == 0 {
                let (id, _, ok) = self.pending.pop_front().expect("front exists");
                return Ok(Some((id, ok)));
            }
        }
        Ok(None)
    }
}

/// memcached's meta protocol, commands built by the `memcache` crate: one `ms`/`mg` per key,
/// replies in request order, so a batch counts as one request of several replies.
#[derive(Default)]
struct MemcachedWire {
    /// (id, replies still expected, all ok so far), oldest first.
    pending: VecDeque<(u32, usize, bool)>,
}

impl Wire for MemcachedWire {
    fn encode(&mut self, id: u32, request: &Planned, value: &[u8], buf: &mut BytesMut) {
        use memcache::exp::{build_get, build_set, GetOptions, SetOptions};
        let ttl = request
            .ttl
            .map(|t| u32::try_from(t.as_millis().div_ceil(1000)).unwrap_or(u32::MAX));
        let mut bytes = Vec::new();
        for &k in &request.keys {
            let command = match request.kind {
                Kind::Write => {
                    let mut options = SetOptions::default();
                    options.ttl = ttl;
                    build_set(key_name(k), value, &options)
                }
                Kind::Read | Kind::Has => {
                    let mut options = GetOptions::default();
                    options.value = request.kind == Kind::Read;
                    build_get(key_name(k), &options)
                }
            };
            command
                .and_then(|c| c.encode_into(&mut bytes))
                .expect("a valid meta command");
        }
        buf.extend_from_slice(&bytes);
        self.pending.push_back((id, request.keys.len(), true));
    }

    fn decode(&mut self, buf: &mut BytesMut) -> anyhow::Result<Option<(u32, bool)>> {
        use memcache::exp::{MetaResponse, ReturnCode};
        loop {
            let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let header = MetaResponse::parse_header(&buf[..end]);
            // A VA header announces a data block: wait until all of it is here.
            let mut len = end + 2;
            if let Ok(response) = &header {
                if response.rc() == ReturnCode::Va {
                    let size: usize = std::str::from_utf8(&buf[3..end])
                        .ok()
                        .and_then(|t| t.split(' ').next()?.parse().ok())
                        .context("a VA reply without a length")?;
                    len += size + 2;
                    if buf.len() < len {
                        return Ok(None);
                    }
                }
            }
            buf.advance(len);
            let front = self
                .pending
                .front_mut()
                .context("a memcached reply nobody asked for")?;
            front.1 -= 1;
            front.2 &= header.is_ok();
            if front.1 == 0 {
                let (id, _, ok) = self.pending.pop_front().expect("front exists");
                return Ok(Some((id, ok)));
            }
        }
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// State shared by the connections of one run.
struct Shared {
    phase: AtomicU8,
    /// Nanoseconds after `epoch` at which measuring began.
    measure_start_ns: AtomicU64,
    epoch: Instant,
    /// Measured requests started (for `--requests`).
    started: AtomicU64,
    completed: AtomicU64,
    /// Next key for sequential filling.
    next_fill: AtomicU64,
}

/// What one connection measured.
struct ConnResult {
    histogram: Histogram<u64>,
    requests: u64,
    items: u64,
    errors: u64,
}

async fn connect(
    target: &Target,
) -> anyhow::Result<(std::pin::Pin<Box<dyn Transport>>, Box<dyn Wire>)> {
    Ok(match target {
        Target::Rrkv(t) => {
            let stream: std::pin::Pin<Box<dyn Transport>> = match &t.address {
                Address::Tcp(hp) => {
                    let s = tokio::net::TcpStream::connect(hp)
                        .await
                        .with_context(|| format!("connect to {hp}"))?;
                    s.set_nodelay(true)?;
                    Box::pin(s)
                }
                Address::Unix(p) => Box::pin(
                    tokio::net::UnixStream::connect(p)
                        .await
                        .with_context(|| format!("connect to {}", p.display()))?,
                ),
            };
            (
                stream,
                Box::new(RrkvWire {
                    storage: t.storage.clone(),
                }),
            )
        }
        Target::Redis(hp) => {
            let s = tokio::net::TcpStream::connect(hp)
                .await
                .with_context(|| format!("connect to {hp}"))?;
            s.set_nodelay(true)?;
            (Box::pin(s), Box::new(RedisWire::default()))
        }
        Target::Memcached(hp) => {
            let s = tokio::net::TcpStream::connect(hp)
                .await
                .with_context(|| format!("connect to {hp}"))?;
            s.set_nodelay(true)?;
            (Box::pin(s), Box::new(MemcachedWire::default()))
        }
    })
}

/// Plans the next request.
fn plan(opts: &LoadOptions, rng: &mut fastrand::Rng, shared: &Shared, fill: bool) -> Planned {
    let kind = if fill {
        Kind::Write
    } else {
        match opts.op {
            Op::Set => Kind::Write,
            Op::Get => Kind::Read,
            Op::Has => Kind::Has,
            Op::Mixed { read_percent } => {
                if rng.u8(0..100) < read_percent {
                    Kind::Read
                } else {
                    Kind::Write
                }
            }
        }
    };
    let keys = if fill {
        let start = shared
            .next_fill
            .fetch_add(opts.batch as u64, Ordering::Relaxed);
        (start..(start + opts.batch as u64).min(opts.keys)).collect()
    } else {
        (0..opts.batch)
            .map(|_| rng.u64(0..opts.keys.max(1)))
            .collect()
    };
    let ttl = match (kind, opts.ttl) {
        (Kind::Write, Ttl::Fixed(d)) => Some(d),
        (Kind::Write, Ttl::Range(lo, hi)) => {
            let span = (hi - lo).as_millis() as u64;
            Some(lo + Duration::from_millis(if span == 0 { 0 } else { rng.u64(0..=span) }))
        }
        _ => None,
    };
    Planned { kind, keys, ttl }
}

/// Runs one connection until the phase is STOP and its replies are in.
async fn run_connection(
    opts: Arc<LoadOptions>,
    shared: Arc<Shared>,
    index: usize,
    fill: bool,
) -> anyhow::Result<ConnResult> {
    let (mut stream, mut wire) = connect(&opts.target).await?;
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ index as u64);
    let value = vec![b'v'; opts.value_size];
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut requests, mut items, mut errors) = (0u64, 0u64, 0u64);
    let inflight = opts.inflight.max(1);
    let mut free_ids: Vec<u32> = (0..inflight as u32).rev().collect();
    let mut sent_at = vec![(Instant::now(), 0usize, false); inflight];
    let mut read_buf = BytesMut::with_capacity(64 * 1024);
    let mut write_buf = BytesMut::with_capacity(64 * 1024);
    let per_conn_interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.conns as f64 / r));
    let mut next_send = Instant::now();

    loop {
        let phase = shared.phase.load(Ordering::Relaxed);
        if phase != STOP {
            while let Some(&id) = free_ids.last() {
                if fill && shared.next_fill.load(Ordering::Relaxed) >= opts.keys {
                    break;
                }
                if per_conn_interval.is_some() && Instant::now() < next_send {
                    break;
                }
                let measured = phase == MEASURE;
                if measured {
                    if let Some(limit) = opts.requests {
                        if shared.started.fetch_add(1, Ordering::Relaxed) >= limit {
                            shared.phase.store(STOP, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                free_ids.pop();
                let request = plan(&opts, &mut rng, &shared, fill);
                wire.encode(id, &request, &value, &mut write_buf);
                // With a target rate, latency counts from the intended send time.
                let intended = match per_conn_interval {
                    Some(interval) => {
                        let at = next_send;
                        next_send += interval;
                        at
                    }
                    None => Instant::now(),
                };
                sent_at[id as usize] = (intended, request.keys.len(), measured);
            }
        }
        if !write_buf.is_empty() {
            stream.write_all(&write_buf).await?;
            write_buf.clear();
        }
        let outstanding = inflight - free_ids.len();
        if outstanding == 0 {
            if shared.phase.load(Ordering::Relaxed) == STOP
                || (fill && shared.next_fill.load(Ordering::Relaxed) >= opts.keys)
            {
                break;
            }
            if per_conn_interval.is_some() {
                tokio::time::sleep_until(next_send.into()).await;
            }
            continue;
        }
        let read = match per_conn_interval {
            Some(_) if free_ids.is_empty() => stream.read_buf(&mut read_buf).await?,
            Some(_) => {
                match tokio::time::timeout_at(next_send.into(), stream.read_buf(&mut read_buf))
                    .await
                {
                    Ok(n) => n?,
                    Err(_) => continue,
                }
            }
            None => stream.read_buf(&mut read_buf).await?,
        };
        if read == 0 {
            anyhow::bail!("{} closed the connection", opts.target);
        }
        let now = Instant::now();
        while let Some((id, ok)) = wire.decode(&mut read_buf)? {
            let Some(&(at, n, measured)) = sent_at.get(id as usize) else {
                anyhow::bail!("reply for unknown request {id}");
            };
            free_ids.push(id);
            shared.completed.fetch_add(1, Ordering::Relaxed);
            if measured {
                requests += 1;
                items += n as u64;
                if !ok {
                    errors += 1;
                }
                histogram.saturating_record(now.duration_since(at).as_micros().max(1) as u64);
            }
        }
    }
    Ok(ConnResult {
        histogram,
        requests,
        items,
        errors,
    })
}

async fn run_phase(opts: Arc<LoadOptions>, fill: bool) -> anyhow::Result<LoadReport> {
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(if fill || opts.warmup.is_zero() {
            MEASURE
        } else {
            WARMUP
        }),
        measure_start_ns: AtomicU64::new(0),
        epoch: Instant::now(),
        started: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        next_fill: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for i in 0..opts.conns.max(1) {
        tasks.push(tokio::spawn(run_connection(
            opts.clone(),
            shared.clone(),
            i,
            fill,
        )));
    }
    let control = {
        let shared = shared.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            if shared.phase.load(Ordering::Relaxed) == WARMUP {
                tokio::time::sleep(opts.warmup).await;
                shared
                    .measure_start_ns
                    .store(shared.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                shared.phase.store(MEASURE, Ordering::Relaxed);
            }
            let start = Instant::now();
            let mut last = 0u64;
            while start.elapsed() < opts.duration && shared.phase.load(Ordering::Relaxed) != STOP {
                tokio::time::sleep(
                    Duration::from_secs(1).min(opts.duration.saturating_sub(start.elapsed())),
                )
                .await;
                if opts.progress && !fill {
                    let done = shared.completed.load(Ordering::Relaxed);
                    eprintln!(
                        "[{:>5.1}s] {:>10} ops/s",
                        start.elapsed().as_secs_f64(),
                        done - last
                    );
                    last = done;
                }
            }
            shared.phase.store(STOP, Ordering::Relaxed);
        })
    };
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut requests, mut items, mut errors) = (0, 0, 0);
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok(r) => {
                total.add(&r.histogram).expect("same bounds");
                requests += r.requests;
                items += r.items;
                errors += r.errors;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        if fill {
            // A fill ends when every key is written, whatever the clock says.
            shared.phase.store(STOP, Ordering::Relaxed);
        }
    }
    control.abort();
    if let Some(e) = first_error {
        return Err(e);
    }
    let measure_start = Duration::from_nanos(shared.measure_start_ns.load(Ordering::Relaxed));
    let seconds = (shared.epoch.elapsed() - measure_start).as_secs_f64();
    let q = |p: f64| {
        if total.is_empty() {
            0.0
        } else {
            total.value_at_quantile(p) as f64
        }
    };
    Ok(LoadReport {
        target: opts.target.to_string(),
        op: if fill {
            "set (prefill)".into()
        } else {
            opts.op.to_string()
        },
        conns: opts.conns,
        inflight: opts.inflight,
        batch: opts.batch,
        value_size: opts.value_size,
        keys: opts.keys,
        ttl: opts.ttl.to_string(),
        seconds,
        requests,
        items,
        errors,
        ops_per_sec: requests as f64 / seconds,
        items_per_sec: items as f64 / seconds,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if total.is_empty() {
            0.0
        } else {
            total.max() as f64
        },
    })
}

/// Runs the load (after the prefill, if asked) and reports what was measured.
pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        opts.batch >= 1 && opts.keys >= 1,
        "--batch and --keys must be at least 1"
    );
    if opts.prefill {
        let fill_opts = LoadOptions {
            batch: 100,
            inflight: 16,
            ..opts.clone()
        };
        fill(fill_opts).await.context("prefill")?;
    }
    run_phase(Arc::new(opts), false).await
}

/// Writes every key `0..keys` once, `batch` keys per request, with `ttl`; the report's
/// `seconds` is how long that took.
pub async fn fill(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        opts.batch >= 1 && opts.keys >= 1,
        "--batch and --keys must be at least 1"
    );
    let opts = LoadOptions {
        batch: opts.batch.min(opts.keys as usize),
        duration: Duration::from_secs(24 * 3600),
        requests: None,
        warmup: Duration::ZERO,
        ..opts
    };
    run_phase(Arc::new(opts), true).await
}

/// Opens one connection to a Redis server and runs one command, returning its reply as
/// text (bulk strings) or its error. For the memory scenarios' INFO and FLUSHALL.
pub async fn redis_command(hostport: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(hostport)
        .await
        .with_context(|| format!("connect to {hostport}"))?;
    let frames: Vec<BorrowedFrame> = args
        .iter()
        .map(|a| BorrowedFrame::BulkString(a.as_bytes()))
        .collect();
    let mut buf = BytesMut::new();
    extend_encode_borrowed(&mut buf, &BorrowedFrame::Array(&frames), false)?;
    stream.write_all(&buf).await?;
    buf.clear();
    loop {
        if let Some((frame, _)) =
            decode_range(&buf).map_err(|e| anyhow::anyhow!("bad RESP: {e:?}"))?
        {
            let text = |r: &(usize, usize)| String::from_utf8_lossy(&buf[r.0..r.1]).into_owned();
            return match frame {
                RangeFrame::SimpleString(r) | RangeFrame::BulkString(r) => Ok(text(&r)),
                RangeFrame::Integer(i) => Ok(i.to_string()),
                RangeFrame::Error(r) => Err(anyhow::anyhow!("redis: {}", text(&r))),
                other => Ok(format!("{other:?}")),
            };
        }
        if stream.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("{hostport} closed the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        assert_eq!("mixed:90".parse(), Ok(Op::Mixed { read_percent: 90 }));
        assert!("mixed:101".parse::<Op>().is_err());
        assert_eq!("none".parse(), Ok(Ttl::None));
        assert_eq!("10s".parse(), Ok(Ttl::Fixed(Duration::from_secs(10))));
        assert_eq!(
            "1s..3s".parse(),
            Ok(Ttl::Range(Duration::from_secs(1), Duration::from_secs(3)))
        );
        assert!("3s..1s".parse::<Ttl>().is_err());
        assert_eq!(
            "redis://127.0.0.1:6379".parse(),
            Ok(Target::Redis("127.0.0.1:6379".into()))
        );
        assert!(matches!(
            "rrkv://127.0.0.1:6001/default".parse(),
            Ok(Target::Rrkv(_))
        ));
    }

    #[test]
    fn memcached_wire_waits_for_whole_values() {
        assert_eq!(
            "memcached://127.0.0.1:11211".parse(),
            Ok(Target::Memcached("127.0.0.1:11211".into()))
        );
        let mut wire = MemcachedWire::default();
        let mut buf = BytesMut::new();
        let planned = Planned {
            kind: Kind::Read,
            keys: vec![1, 2],
            ttl: None,
        };
        wire.encode(3, &planned, b"", &mut buf);
        assert!(buf.starts_with(b"mg "), "{buf:?}");
        let mut replies = BytesMut::from(&b"VA 5\r\nhel"[..]);
        assert_eq!(wire.decode(&mut replies).unwrap(), None, "value incomplete");
        replies.extend_from_slice(b"lo\r\nEN\r\n");
        assert_eq!(wire.decode(&mut replies).unwrap(), Some((3, true)));
        assert!(replies.is_empty());
        wire.encode(4, &planned, b"", &mut buf);
        replies.extend_from_slice(b"HD\r\nCLIENT_ERROR bad data chunk\r\n");
        assert_eq!(wire.decode(&mut replies).unwrap(), Some((4, false)));
    }

    #[test]
    fn redis_wire_counts_one_request_for_a_batch_of_ttl_sets() {
        let mut wire = RedisWire::default();
        let mut buf = BytesMut::new();
        let planned = Planned {
            kind: Kind::Write,
            keys: vec![1, 2, 3],
            ttl: Some(Duration::from_secs(5)),
        };
        wire.encode(7, &planned, b"v", &mut buf);
        assert_eq!(
            buf.iter().filter(|&&b| b == b'*').count(),
            3,
            "three SET commands"
        );
        let mut replies = BytesMut::from(&b"+OK\r\n+OK\r\n"[..]);
        assert_eq!(
            wire.decode(&mut replies).unwrap(),
            None,
            "two of three replies"
        );
        replies.extend_from_slice(b"-ERR boom\r\n");
        assert_eq!(wire.decode(&mut replies).unwrap(), Some((7, false)));
    }
}
