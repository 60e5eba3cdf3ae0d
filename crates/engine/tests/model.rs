//! The engine against a plain `BTreeMap` model, under random operations and clock moves.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use rrkv_engine::{Engine, ManualClock};

const T0: u64 = 1_800_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Set {
        key: u8,
        value: u8,
        ttl: Option<i64>,
    },
    Expire {
        key: u8,
        ttl: i64,
    },
    Remove {
        key: u8,
    },
    Clear,
    Advance {
        ms: u64,
    },
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..24;
    let ttl = -20i64..200;
    prop_oneof![
        6 => (key.clone(), any::<u8>(), proptest::option::of(ttl.clone()))
            .prop_map(|(key, value, ttl)| Op::Set { key, value, ttl }),
        2 => (key.clone(), ttl).prop_map(|(key, ttl)| Op::Expire { key, ttl }),
        2 => key.prop_map(|key| Op::Remove { key }),
        1 => Just(Op::Clear),
        3 => (0u64..120).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Purge),
    ]
}

/// The model: key -> (value, deadline). Entries past their deadline are dropped eagerly,
/// which is what every observer of the engine must see.
#[derive(Default)]
struct Model {
    map: BTreeMap<u8, (Vec<u8>, Option<u64>)>,
}

impl Model {
    fn expire_all(&mut self, now: u64) {
        self.map.retain(|_, (_, d)| d.is_none_or(|d| d > now));
    }
}

fn key_bytes(k: u8) -> Vec<u8> {
    // Vary key lengths so slots of different sizes are moved around.
    vec![b'k'; 1 + (k as usize % 5)]
        .into_iter()
        .chain([k])
        .collect()
}

fn value_bytes(v: u8) -> Vec<u8> {
    vec![v; (v % 7) as usize]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..300)) {
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::with_clock(clock.clone(), 2);
        let mut model = Model::default();
        for op in ops {
            let now = clock.now_ms_for_test();
            match op {
                Op::Set { key, value, ttl } => {
                    let deadline = ttl.map(|t| (now as i64 + t) as u64);
                    engine.set(&key_bytes(key), &value_bytes(value), deadline);
                    if deadline.is_some_and(|d| d <= now) {
                        model.map.remove(&key);
                    } else {
                        model.map.insert(key, (value_bytes(value), deadline));
                    }
                }
                Op::Expire { key, ttl } => {
                    let deadline = (now as i64 + ttl) as u64;
                    let live = engine.expire(&key_bytes(key), deadline);
                    prop_assert_eq!(live, model.map.contains_key(&key));
                    if deadline <= now {
                        model.map.remove(&key);
                    } else if let Some(entry) = model.map.get_mut(&key) {
                        entry.1 = Some(deadline);
                    }
                }
                Op::Remove { key } => {
                    prop_assert_eq!(engine.remove(&key_bytes(key)), model.map.remove(&key).is_some());
                }
                Op::Clear => {
                    engine.clear();
                    model.map.clear();
                }
                Op::Advance { ms } => {
                    clock.advance(ms);
                    model.expire_all(clock.now_ms_for_test());
                }
                Op::Purge => {
                    engine.purge_expired();
                    prop_assert_eq!(engine.len(), model.map.len(), "after a purge only live keys remain");
                }
            }
            // Every observable agrees with the model after every step.
            for k in 0u8..24 {
                let want = model.map.get(&k);
                prop_assert_eq!(engine.get(&key_bytes(k)), want.map(|e| e.0.clone()));
                prop_assert_eq!(engine.deadline(&key_bytes(k)), want.map(|e| e.1));
            }
            let stats = engine.stats();
            prop_assert!(stats.keys >= model.map.len());
            prop_assert!(stats.index_entries <= stats.keys);
            engine.check_invariants();
        }
    }
}

/// `ManualClock` exposes time through the `Clock` trait; this keeps the test body short.
trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        rrkv_engine::Clock::now_ms(self)
    }
}
