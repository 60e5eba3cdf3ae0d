//! The `memcached` driver against two real memcached processes.

mod common;

use common::backends::{free_port, memcached, memcached_at, memcached_items, Backend};
use common::scenarios;
use common::*;

const S: &str = "memcached-rr";

fn yaml(servers: &[&Backend]) -> String {
    let addr = servers
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "kv:\n  {S}:\n    driver: memcached\n    config:\n      addr: [{addr}]\n  memory:\n    driver: memory\n"
    )
}

#[tokio::test]
async fn upstream_memcached_scenario() {
    let (m1, m2) = (memcached(), memcached());
    let server = TestServer::start(&yaml(&[&m1, &m2])).await;
    let mut kv = server.client().await;

    scenarios::set_has_mget_delete(&mut kv, S).await;

    // kv.TTL fails with the text the PHP client maps to NotImplementedException.
    let e = server_error(kv.ttl(S, &["a"]).await);
    assert!(
        e.contains("rpc_ttl") && e.contains("memcached_plugin_ttl"),
        "{e}"
    );

    // Expiry: memcached counts whole seconds on a clock that ticks once a second, so a TTL of
    // n seconds ends n-1 to n seconds after the Set, depending on where in the tick it lands.
    // Keys set at five points of a second must each still be there 200 ms before their
    // deadline (TTLs of only the rounded-up seconds failed this) and be gone two seconds
    // after it.
    let mut deadlines = Vec::new();
    for i in 0..5 {
        let key = format!("soon{i}");
        let deadline = in_ms(1_900);
        kv.set(S, vec![item(&key, "x", &deadline)]).await.unwrap();
        deadlines.push((key, deadline));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for (key, deadline) in &deadlines {
        let at: jiff::Timestamp = deadline.parse().unwrap();
        let check = (at - jiff::SignedDuration::from_millis(300)).to_string();
        sleep_past(&check).await; // sleep_past adds 100 ms: 200 ms before the deadline
        assert_eq!(
            kv.has(S, &[key]).await.unwrap(),
            std::slice::from_ref(key),
            "{key} gone before its deadline {deadline}"
        );
    }
    let last: jiff::Timestamp = deadlines[4].1.parse().unwrap();
    sleep_past(&(last + jiff::SignedDuration::from_secs(2)).to_string()).await;
    let keys: Vec<&str> = deadlines.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kv.has(S, &keys).await.unwrap().is_empty());

    scenarios::past_deadline_deletes(&mut kv, S).await;
    // Within one Set, a later item with the same key wins, deletes included.
    let past = in_ms(-1_000);
    kv.set(
        S,
        vec![
            item("dup", "old", ""),
            item("dup", "x", &past),
            item("dup", "new", ""),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        kv.mget(S, &["dup"]).await.unwrap(),
        [("dup".to_string(), "new".into())]
    );
    kv.set(S, vec![item("dup", "newer", ""), item("dup", "x", &past)])
        .await
        .unwrap();
    assert!(kv.has(S, &["dup"]).await.unwrap().is_empty());
    // MExpire is touch, with the same rounding.
    scenarios::mexpire_keeps_value_then_expires(&mut kv, S, 1_000, 3_000).await;

    // Clear: flush_all on every server; other storages keep their keys.
    kv.set("memory", vec![item("b", "m", "")]).await.unwrap();
    kv.clear(S).await.unwrap();
    assert!(kv.has(S, &["b", "empty"]).await.unwrap().is_empty());
    assert_eq!(kv.has("memory", &["b"]).await.unwrap(), ["b"]);

    let e = server_error(kv.has("memcached-nope", &["a"]).await);
    assert!(e.contains("no such storage: memcached-nope"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn keys_spread_by_weight_and_bad_keys_fail_before_the_network() {
    let (m1, m2) = (memcached(), memcached());
    // m1 listed twice: about two thirds of the keys.
    let server = TestServer::start(&yaml(&[&m1, &m1, &m2])).await;
    let mut kv = server.client().await;
    let keys: Vec<String> = (0..3_000).map(|i| format!("session:{i}")).collect();
    kv.set(S, keys.iter().map(|k| item(k, "v", "")).collect())
        .await
        .unwrap();
    let (on1, on2) = (memcached_items(m1.port), memcached_items(m2.port));
    assert_eq!(on1 + on2, 3_000);
    assert!((1_700..2_500).contains(&on1), "m1 {on1}, m2 {on2}");
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(kv.mget(S, &refs).await.unwrap().len(), 3_000);
    server.stop().await;

    // Keys memcached cannot hold are refused before any call: this server is not running.
    let port = free_port(false);
    let server = TestServer::start(&format!(
        "kv:\n  {S}:\n    driver: memcached\n    config:\n      addr: [\"127.0.0.1:{port}\"]\n"
    ))
    .await;
    let mut kv = server.client().await;
    let long = "k".repeat(251);
    for (bad, says) in [
        ("has space", "space"),
        ("tab\tkey", "0x09"),
        (long.as_str(), "250 bytes"),
    ] {
        let e = server_error(kv.set(S, vec![item(bad, "v", "")]).await);
        assert!(e.contains(says) && !e.contains("refused"), "{e}");
        let e = server_error(kv.mget(S, &[bad]).await);
        assert!(e.contains(says), "{e}");
    }
    server.stop().await;
}

#[tokio::test]
async fn backend_down_at_start_killed_and_restarted() {
    let port = free_port(false);
    let server = TestServer::start(&format!(
        "kv:\n  {S}:\n    driver: memcached\n    config:\n      addr: [\"127.0.0.1:{port}\"]\n  memory:\n    driver: memory\n"
    ))
    .await;
    let mut kv = server.client().await;
    let e = server_error(kv.set(S, vec![item("k", "v", "")]).await);
    assert!(
        e.contains(&format!("memcached storage \"{S}\""))
            && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );

    let mut m = memcached_at(port);
    eventually!(
        "set after memcached started",
        kv.set(S, vec![item("k", "v1", "")])
    );

    m.kill();
    let e = server_error(kv.mget(S, &["k"]).await);
    assert!(
        e.contains("rpc_mget") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    kv.set("memory", vec![item("k", "v", "")]).await.unwrap();

    m.start();
    eventually!(
        "set after memcached restarted",
        kv.set(S, vec![item("k", "v2", "")])
    );
    assert_eq!(
        kv.mget(S, &["k"]).await.unwrap(),
        [("k".to_string(), "v2".into())]
    );
    server.stop().await;
}
