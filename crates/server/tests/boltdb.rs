//! The `boltdb` driver (redb file): upstream's cases, restarts, crashes, file handling.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rrkv::drivers::BuildContext;
use rrkv::server::ServeOptions;
use rrkv_client::Address;

const S: &str = "boltdb-rr";

fn yaml(file: &Path) -> String {
    format!(
        "kv:\n  {S}:\n    driver: boltdb\n    config:\n      file: {}\n      permissions: 0600\n      interval: 1\n  memory:\n    driver: memory\n",
        file.display()
    )
}

async fn start(file: &Path) -> TestServer {
    TestServer::start_at(
        &yaml(file),
        "tcp://127.0.0.1:0",
        BuildContext::default(),
        ServeOptions::default(),
    )
    .await
}

#[tokio::test]
async fn upstream_boltdb_cases() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("rr.db")).await;
    let mut kv = server.client().await;

    // TestKVSetAndHas
    kv.clear(S).await.unwrap();
    kv.set(S, vec![item("a", "1", ""), item("b", "2", "")])
        .await
        .unwrap();
    assert_eq!(
        sorted(kv.has(S, &["a", "b", "missing"]).await.unwrap()),
        ["a", "b"]
    );
    // TestKVMGetReturnsStoredValues
    let got = kv.mget(S, &["a", "b", "missing"]).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got.contains(&("a".to_string(), "1".into()))
            && got.contains(&("b".to_string(), "2".into()))
    );
    // TestKVDeleteRemovesOnlyTheNamedKey
    kv.delete(S, &["a", "never-existed"]).await.unwrap();
    assert_eq!(kv.has(S, &["a", "b"]).await.unwrap(), ["b"]);
    // TestKVClearEmptiesTheStorage (and only this storage)
    kv.set("memory", vec![item("b", "m", "")]).await.unwrap();
    kv.clear(S).await.unwrap();
    assert!(kv.has(S, &["b"]).await.unwrap().is_empty());
    assert_eq!(kv.has("memory", &["b"]).await.unwrap(), ["b"]);
    // TestKVTTLReportsRemainingLifetime: the TTL'd key has a future deadline; the permanent
    // key is reported with an empty timeout, as the memory storage does.
    kv.set(
        S,
        vec![item("perm", "p", ""), item("ttl", "t", &in_ms(60_000))],
    )
    .await
    .unwrap();
    let mut ttl = kv.ttl(S, &["perm", "ttl"]).await.unwrap();
    ttl.sort();
    assert_eq!(ttl[0], ("perm".to_string(), String::new()));
    let deadline: jiff::Timestamp = ttl[1].1.parse().unwrap();
    assert!(deadline > jiff::Timestamp::now() + jiff::SignedDuration::from_secs(55));
    // TestKVKeyExpiresAfterTTL, to the millisecond rather than within 30 s
    let short = in_ms(1500);
    kv.set(S, vec![item("short", "s", &short)]).await.unwrap();
    assert_eq!(kv.has(S, &["short"]).await.unwrap(), ["short"]);
    sleep_past(&short).await;
    assert!(kv.has(S, &["short"]).await.unwrap().is_empty());
    assert!(kv.mget(S, &["short"]).await.unwrap().is_empty());
    assert_eq!(kv.has(S, &["perm"]).await.unwrap(), ["perm"]);
    // TestKVMExpireAppliesTTLToExistingKeys
    let soon = in_ms(1500);
    kv.mexpire(S, &[("perm", &soon), ("ttl", &soon), ("ghost", &soon)])
        .await
        .unwrap();
    assert_eq!(
        kv.mget(S, &["perm"]).await.unwrap()[0].1,
        "p",
        "MExpire keeps the value"
    );
    sleep_past(&soon).await;
    assert!(kv
        .has(S, &["perm", "ttl", "ghost"])
        .await
        .unwrap()
        .is_empty());
    // TestKVUnknownStorageIsRejected
    assert_eq!(
        server_error(kv.has("boltdb-nope", &["x"]).await),
        "no such storage: boltdb-nope"
    );
    // Past deadlines delete; Set without timeout drops an old deadline; Delete drops it too.
    let old_deadline = in_ms(500);
    kv.set(S, vec![item("k", "v", &old_deadline)])
        .await
        .unwrap();
    kv.set(S, vec![item("k", "v2", "")]).await.unwrap();
    kv.set(S, vec![item("gone", "x", "")]).await.unwrap();
    kv.set(S, vec![item("gone", "x", "2001-01-01T00:00:00Z")])
        .await
        .unwrap();
    sleep_past(&old_deadline).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // and a sweep (interval 1 s)
    assert_eq!(kv.mget(S, &["k"]).await.unwrap()[0].1, "v2");
    assert_eq!(kv.ttl(S, &["k"]).await.unwrap()[0].1, "");
    assert!(kv.has(S, &["gone"]).await.unwrap().is_empty());
    // All or nothing.
    server_error(
        kv.set(S, vec![item("ok", "1", ""), item("bad", "2", "garbage")])
            .await,
    );
    assert!(kv.has(S, &["ok"]).await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn large_values_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("big.db")).await;
    let mut kv = server.client().await;
    let big = "x".repeat(16 * 1024 * 1024);
    kv.set(S, vec![item("big", &big, "")]).await.unwrap();
    assert_eq!(kv.mget(S, &["big"]).await.unwrap()[0].1.len(), big.len());
    server.stop().await;
}

#[tokio::test]
async fn data_and_deadlines_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rr.db");
    let server = start(&file).await;
    let mut kv = server.client().await;
    let deadline = in_ms(4000);
    kv.set(
        S,
        vec![item("forever", "f", ""), item("soon", "s", &deadline)],
    )
    .await
    .unwrap();
    drop(kv);
    server.stop().await;

    let server = start(&file).await;
    let mut kv = server.client().await;
    assert_eq!(
        sorted(kv.has(S, &["forever", "soon"]).await.unwrap()),
        ["forever", "soon"]
    );
    assert_eq!(
        kv.ttl(S, &["soon"]).await.unwrap().len(),
        1,
        "the deadline came back"
    );
    sleep_past(&deadline).await;
    assert_eq!(
        kv.has(S, &["forever", "soon"]).await.unwrap(),
        ["forever"],
        "expired on time after the restart"
    );
    server.stop().await;
}

#[test]
fn new_files_get_the_configured_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mode.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = start(&file).await;
        server.stop().await;
    });
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn foreign_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // A bbolt file: meta page header (16 bytes), then the magic 0xED0CDAED little-endian.
    let bolt = dir.path().join("bolt.db");
    let mut bytes = vec![0u8; 16];
    bytes.extend_from_slice(&0xED0C_DAEDu32.to_le_bytes());
    bytes.resize(4096, 7);
    std::fs::write(&bolt, &bytes).unwrap();
    let err = start_error(&yaml(&bolt), "tcp://127.0.0.1:0").await;
    let text = err;
    assert!(
        text.contains("kv.boltdb-rr.config.file") && text.contains("BoltDB (bbolt) file"),
        "{text}"
    );
    assert_eq!(std::fs::read(&bolt).unwrap(), bytes, "not touched");

    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "just some text, long enough").unwrap();
    let err = start_error(&yaml(&other), "tcp://127.0.0.1:0").await;
    assert!(err.contains("not a redb database"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "just some text, long enough"
    );
}

#[tokio::test]
async fn two_storages_on_one_file_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.db");
    let text = format!(
        "kv:\n  a:\n    driver: boltdb\n    config:\n      file: {0}\n  b:\n    driver: boltdb\n    config:\n      file: {0}\n",
        file.display()
    );
    let started = Instant::now();
    let err = start_error(&text, "tcp://127.0.0.1:0").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = err;
    assert!(
        text.contains("kv.b.config.file") && text.contains("both use"),
        "{text}"
    );
}

#[tokio::test]
async fn a_file_held_by_another_process_fails_startup_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "rr.yaml", "one.sock", "held.db");
    let mut first = rrkv_binary(dir.path(), &config);
    drop(connect_when_ready(&Address::Unix(dir.path().join("one.sock"))).await);

    let config2 = write_config(dir.path(), "rr2.yaml", "two.sock", "held.db");
    let started = Instant::now();
    let second = rrkv_binary(dir.path(), &config2)
        .wait_with_output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already open"), "{stderr}");
    first.kill().unwrap();
    first.wait().unwrap();
}

/// The server binary on `config`, listening on the unix socket `sock`, with the boltdb
/// storage on `file`; returns the config path for restarts.
fn write_config(dir: &Path, name: &str, sock: &str, file: &str) -> std::path::PathBuf {
    let config = dir.join(name);
    let text = format!(
        "rpc:\n  listen: unix://{}\n{}",
        dir.join(sock).display(),
        yaml(&dir.join(file))
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn rrkv_binary(dir: &Path, config: &Path) -> std::process::Child {
    rrkv(dir, &["serve", "-c", config.to_str().unwrap()])
        .spawn()
        .unwrap()
}

/// Streams acknowledged Sets, kills the server with SIGKILL at a random moment, restarts it
/// and checks that every acknowledged key is there. Twenty rounds.
#[tokio::test]
async fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "rr.yaml", "crash.sock", "crash.db");
    let address = Address::Unix(dir.path().join("crash.sock"));
    let mut acked: Vec<String> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..20 {
        let mut server = rrkv_binary(dir.path(), &config);
        let mut kv = connect_when_ready(&address).await;
        // Everything acknowledged so far is there, after the previous round's SIGKILL.
        for chunk in acked.chunks(500) {
            let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let found = kv.has(S, &keys).await.unwrap();
            assert_eq!(
                found.len(),
                keys.len(),
                "round {round}: acknowledged keys lost"
            );
        }
        let kill_after = Duration::from_millis(rng.u64(20..250));
        let writer = {
            let address = address.clone();
            let base = acked.len();
            tokio::spawn(async move {
                let mut done = Vec::new();
                // The server is up (the check above connected), but the kill may come first
                // on a loaded machine: then this round simply acknowledged nothing.
                let Ok(mut kv) = rrkv_client::Client::connect(&address).await else {
                    return done;
                };
                for i in 0.. {
                    let key = format!("r{round}-k{}", base + i);
                    match kv.set(S, vec![item(&key, "value", "")]).await {
                        Ok(()) => done.push(key),
                        Err(_) => break,
                    }
                }
                done
            })
        };
        tokio::time::sleep(kill_after).await;
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        acked.extend(writer.await.unwrap());
    }
    let mut server = rrkv_binary(dir.path(), &config);
    let mut kv = connect_when_ready(&address).await;
    for chunk in acked.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
        assert_eq!(kv.has(S, &keys).await.unwrap().len(), keys.len());
    }
    assert!(
        acked.len() > 100,
        "the test wrote something: {}",
        acked.len()
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
