//! Engine throughput: set, set with TTL, overwrite with TTL, get hit and miss, on one and two
//! threads, and sweeping 1,000,000 expired keys. `cargo bench -p rrkv-engine`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rrkv_engine::{Engine, ManualClock};

const KEYS: u64 = 100_000;
const VALUE: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const T0: u64 = 1_800_000_000_000;

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"key:000000000000";
    let digits = format!("{i:012}");
    k[4..].copy_from_slice(digits.as_bytes());
    k
}

fn keys() -> Vec<[u8; 16]> {
    (0..KEYS).map(key).collect()
}

/// Runs `op` for `iters` operations spread over `threads` threads, each over its own
/// stride of the key list; returns the wall time.
fn timed(
    threads: usize,
    iters: u64,
    keys: &[[u8; 16]],
    op: &(dyn Fn(&[u8], u64) + Sync),
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut i = t as u64;
                for n in 0..iters / threads as u64 {
                    op(&keys[(i % KEYS) as usize], n);
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407 + t as u64);
                }
            });
        }
    });
    start.elapsed()
}

fn engine() -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (
        Engine::with_clock(clock.clone(), rrkv_engine::DEFAULT_SHARDS),
        clock,
    )
}

fn ops(c: &mut Criterion) {
    let keys = keys();
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("engine/{threads}-thread"));
        group.throughput(Throughput::Elements(1));

        let (e, _) = engine();
        group.bench_function("set", |b| {
            b.iter_custom(|iters| timed(threads, iters, &keys, &|k, _| e.set(k, VALUE, None)))
        });

        let (e, _) = engine();
        group.bench_function("set_with_ttl", |b| {
            b.iter_custom(|iters| {
                timed(threads, iters, &keys, &|k, n| {
                    e.set(k, VALUE, Some(T0 + 600_000 + n))
                })
            })
        });

        let (e, _) = engine();
        group.bench_function("overwrite_same_key_with_ttl", |b| {
            b.iter_custom(|iters| {
                timed(threads, iters, &keys, &|_, n| {
                    e.set(b"same-key", VALUE, Some(T0 + 600_000 + n))
                })
            })
        });

        let (e, _) = engine();
        for k in &keys {
            e.set(k, VALUE, Some(T0 + 600_000));
        }
        group.bench_function("get_hit", |b| {
            b.iter_custom(|iters| {
                timed(threads, iters, &keys, &|k, _| {
                    black_box(e.read(k, |v, _| v.len()));
                })
            })
        });
        group.bench_function("get_miss", |b| {
            b.iter_custom(|iters| {
                timed(threads, iters, &keys, &|k, _| {
                    let mut miss = *<&[u8; 16]>::try_from(k).unwrap();
                    miss[0] = b'K';
                    black_box(e.read(&miss, |v, _| v.len()));
                })
            })
        });
        group.finish();
    }
}

fn sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/sweep");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1_000_000));
    group.bench_function("expire_1m_keys", |b| {
        b.iter_batched(
            || {
                let (e, clock) = engine();
                for i in 0..1_000_000u64 {
                    e.set(&key(i), VALUE, Some(T0 + 1_000 + i % 1_000));
                }
                clock.advance(10_000);
                e
            },
            |e| {
                let report = e.purge_expired();
                assert_eq!(report.removed, 1_000_000);
                e
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, ops, sweep);
criterion_main!(benches);
