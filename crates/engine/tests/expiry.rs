//! Deadline behaviour on a manual clock: exact, and never removing newer data.

use std::sync::Arc;

use rrkv_engine::{Engine, ManualClock};

const T0: u64 = 1_800_000_000_000;

fn engine() -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (Engine::with_clock(clock.clone(), 4), clock)
}

#[test]
fn key_lives_until_its_deadline_to_the_millisecond() {
    let (e, clock) = engine();
    e.set(b"k", b"v", Some(T0 + 1500));
    clock.set(T0 + 1499);
    assert_eq!(e.get(b"k").as_deref(), Some(&b"v"[..]));
    assert!(e.contains(b"k"));
    assert_eq!(e.deadline(b"k"), Some(Some(T0 + 1500)));
    clock.set(T0 + 1500);
    assert_eq!(
        e.get(b"k"),
        None,
        "expired at its deadline even before any sweep"
    );
    assert!(!e.contains(b"k"));
    assert_eq!(e.deadline(b"k"), None);
    assert_eq!(e.len(), 1, "still stored until the sweeper runs");
    assert_eq!(e.purge_expired().removed, 1);
    assert_eq!(e.len(), 0);
    e.check_invariants();
}

#[test]
fn sub_second_deadlines_expire() {
    let (e, clock) = engine();
    e.set(b"a", b"1", Some(T0 + 1));
    e.set(b"b", b"2", Some(T0 + 999));
    clock.advance(1);
    assert!(!e.contains(b"a"));
    assert!(e.contains(b"b"));
    clock.advance(998);
    assert!(!e.contains(b"b"));
}

#[test]
fn deadline_at_or_before_now_removes() {
    let (e, _clock) = engine();
    e.set(b"k", b"v", None);
    e.set(b"k", b"w", Some(T0));
    assert!(!e.contains(b"k"));
    assert_eq!(e.len(), 0, "removed, not stored expired");
    e.set(b"k", b"v", None);
    assert!(
        e.expire(b"k", T0 - 5_000),
        "the key was live, and is now removed"
    );
    assert!(!e.contains(b"k"));
    assert_eq!(e.len(), 0);
}

#[test]
fn overwrite_just_before_old_deadline_keeps_new_value() {
    let (e, clock) = engine();
    e.set(b"k", b"old", Some(T0 + 1000));
    clock.set(T0 + 999);
    e.set(b"k", b"new", Some(T0 + 5000));
    clock.set(T0 + 1000);
    assert_eq!(e.purge_expired().removed, 0, "the old deadline is gone");
    assert_eq!(e.get(b"k").as_deref(), Some(&b"new"[..]));
    clock.set(T0 + 4999);
    e.purge_expired();
    assert_eq!(e.get(b"k").as_deref(), Some(&b"new"[..]));
    clock.set(T0 + 5000);
    assert_eq!(e.get(b"k"), None);
    e.check_invariants();
}

#[test]
fn ttl_then_no_ttl_never_expires() {
    let (e, clock) = engine();
    e.set(b"k", b"v1", Some(T0 + 1000));
    e.set(b"k", b"v2", None);
    assert_eq!(e.deadline(b"k"), Some(None));
    assert_eq!(e.stats().index_entries, 0);
    clock.advance(10_000_000);
    assert_eq!(e.purge_expired().removed, 0);
    assert_eq!(e.get(b"k").as_deref(), Some(&b"v2"[..]));
}

#[test]
fn clear_then_set_keeps_the_new_value() {
    let (e, clock) = engine();
    for i in 0..100u32 {
        e.set(&i.to_be_bytes(), b"x", Some(T0 + 100));
    }
    e.clear();
    assert_eq!(e.len(), 0);
    e.set(&7u32.to_be_bytes(), b"after", None);
    e.set(&8u32.to_be_bytes(), b"after", Some(T0 + 10_000));
    clock.advance(100);
    assert_eq!(e.purge_expired().removed, 0);
    assert_eq!(e.get(&7u32.to_be_bytes()).as_deref(), Some(&b"after"[..]));
    assert_eq!(e.get(&8u32.to_be_bytes()).as_deref(), Some(&b"after"[..]));
}

#[test]
fn expire_changes_deadline_keeps_value_and_ignores_missing_keys() {
    let (e, clock) = engine();
    e.set(b"k", b"v", None);
    assert!(e.expire(b"k", T0 + 50));
    assert_eq!(e.deadline(b"k"), Some(Some(T0 + 50)));
    assert!(e.expire(b"k", T0 + 500), "extending works");
    assert!(e.expire(b"k", T0 + 200), "shortening works");
    assert!(!e.expire(b"missing", T0 + 50));
    assert!(!e.contains(b"missing"), "expire does not create keys");
    clock.set(T0 + 199);
    assert_eq!(e.get(b"k").as_deref(), Some(&b"v"[..]));
    clock.set(T0 + 200);
    assert!(!e.contains(b"k"));
    assert!(
        !e.expire(b"k", T0 + 10_000),
        "an expired key cannot be revived"
    );
    assert_eq!(e.stats().index_entries, 1);
    e.purge_expired();
    assert_eq!(e.stats().index_entries, 0);
    e.check_invariants();
}

#[test]
fn expire_racing_set_from_threads_never_loses_the_last_write() {
    // Writers race MExpire against Set on the same keys; whatever the interleaving, after
    // the dust settles a key holds the value of a Set and a deadline that some call gave it,
    // and the index has exactly one entry per key with a deadline.
    let (e, clock) = engine();
    let keys: Vec<Vec<u8>> = (0..64u32).map(|i| i.to_be_bytes().to_vec()).collect();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let e = &e;
            let keys = &keys;
            s.spawn(move || {
                for round in 0..2_000u64 {
                    for key in keys {
                        if (round + t) % 2 == 0 {
                            e.set(key, b"set", Some(T0 + 1_000 + round));
                        } else {
                            e.expire(key, T0 + 100_000 + round);
                        }
                    }
                }
            });
        }
    });
    e.check_invariants();
    let stats = e.stats();
    assert_eq!(stats.keys, 64);
    assert_eq!(stats.index_entries, 64);
    // Keys whose last word was an MExpire survive the Set deadlines; the rest expire.
    clock.set(T0 + 3_001);
    e.purge_expired();
    for key in &keys {
        if let Some(deadline) = e.deadline(key) {
            assert!(deadline.unwrap() >= T0 + 100_000);
            assert_eq!(e.get(key).as_deref(), Some(&b"set"[..]));
        }
    }
    clock.set(T0 + 200_000);
    e.purge_expired();
    assert_eq!(e.len(), 0);
    e.check_invariants();
}

#[test]
fn one_key_set_with_ttl_a_million_times_leaves_one_entry() {
    let (e, clock) = engine();
    for i in 0..1_000_000u64 {
        e.set(
            b"same-key",
            b"0123456789abcdef0123456789abcdef",
            Some(T0 + 2_000_000 + i),
        );
        if i % 100_000 == 0 {
            clock.advance(1);
        }
    }
    let stats = e.stats();
    assert_eq!(stats.keys, 1);
    assert_eq!(stats.index_entries, 1);
    assert!(
        stats.index_capacity <= 64,
        "index capacity {}",
        stats.index_capacity
    );
    assert_eq!(
        e.deadline(b"same-key"),
        Some(Some(T0 + 2_000_000 + 999_999))
    );
    e.check_invariants();
}

#[test]
fn tables_shrink_after_mass_expiry_and_delete() {
    let (e, clock) = engine();
    for i in 0..100_000u32 {
        e.set(format!("key:{i}").as_bytes(), &[0u8; 32], Some(T0 + 1_000));
    }
    let full = e.stats();
    assert!(full.slot_capacity >= 100_000);
    clock.advance(1_000);
    assert_eq!(e.purge_expired().removed, 100_000);
    let empty = e.stats();
    assert_eq!(
        (empty.keys, empty.index_entries, empty.data_bytes),
        (0, 0, 0)
    );
    assert!(empty.slot_capacity <= 4 * 64, "slots shrank: {empty:?}");
    assert!(empty.index_capacity <= 4 * 64, "index shrank: {empty:?}");
    assert!(
        empty.table_capacity < full.table_capacity / 16,
        "table shrank: {empty:?}"
    );

    for i in 0..100_000u32 {
        e.set(format!("key:{i}").as_bytes(), &[0u8; 32], None);
    }
    for i in 0..99_000u32 {
        assert!(e.remove(format!("key:{i}").as_bytes()));
    }
    let after = e.stats();
    assert_eq!(after.keys, 1_000);
    assert!(after.slot_capacity < full.slot_capacity / 8, "{after:?}");
    assert!(after.table_capacity < full.table_capacity / 8, "{after:?}");
    for i in 99_000..100_000u32 {
        assert!(e.contains(format!("key:{i}").as_bytes()));
    }
    e.check_invariants();
}

#[test]
fn sweeper_thread_reclaims_keys_nobody_reads() {
    let e = Engine::new();
    let sweeper = e.start_sweeper();
    let now = e.now_ms();
    for i in 0..10_000u32 {
        e.set(&i.to_be_bytes(), b"v", Some(now + 50));
    }
    e.set(b"forever", b"v", None);
    let start = std::time::Instant::now();
    while e.len() > 1 && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(e.len(), 1, "the sweeper removed the expired keys");
    assert!(e.contains(b"forever"));
    drop(sweeper);
}
