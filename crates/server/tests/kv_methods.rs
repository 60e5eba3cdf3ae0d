//! The kv service end to end over TCP and unix sockets, with the client from `rrkv-client`.

mod common;

use common::*;
use rrkv_client::{Client, Item, Request};

/// The upstream memory driver's scenario (roadrunner-server/memory `testRPCMethodsInMemory`),
/// with deadlines of hundreds of milliseconds instead of seconds.
async fn upstream_memory_scenario(kv: &mut Client) {
    let s = "memory";
    // Deadlines leave a second of slack, so a slow CI machine cannot expire keys early.
    let c_deadline = in_ms(1000);
    kv.set(
        s,
        vec![
            item("a", "aa", ""),
            item("b", "bb", &in_ms(500_000)),
            item("c", "cc", &c_deadline),
            item("d", "dd", ""),
            item("e", "ee", ""),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        sorted(kv.has(s, &["a", "b", "c"]).await.unwrap()),
        ["a", "b", "c"]
    );
    sleep_past(&c_deadline).await;
    assert_eq!(
        sorted(kv.has(s, &["a", "b", "c"]).await.unwrap()),
        ["a", "b"]
    );
    let got = kv.mget(s, &["a", "b", "c"]).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&("a".to_string(), "aa".into())));
    assert!(got.contains(&("b".to_string(), "bb".into())));

    let deadline = in_ms(1000);
    kv.mexpire(s, &[("a", &deadline), ("b", &deadline), ("d", &deadline)])
        .await
        .unwrap();
    let ttl = kv.ttl(s, &["a", "b", "d"]).await.unwrap();
    assert_eq!(ttl.len(), 3);
    for (_, timeout) in &ttl {
        assert!(
            timeout.ends_with('Z') && !timeout.contains('.'),
            "{timeout}"
        );
    }
    sleep_past(&deadline).await;
    assert!(kv.has(s, &["a", "b", "d"]).await.unwrap().is_empty());

    kv.delete(s, &["e"]).await.unwrap();
    assert!(kv.has(s, &["e"]).await.unwrap().is_empty());

    let all = ["a", "b", "c", "d", "e"];
    kv.set(s, all.iter().map(|k| item(k, "v", "")).collect())
        .await
        .unwrap();
    assert_eq!(kv.has(s, &all).await.unwrap().len(), 5);
    kv.clear(s).await.unwrap();
    assert!(kv.has(s, &all).await.unwrap().is_empty());
    // Clear again, this time with items in the request: they are ignored.
    let request = Request {
        storage: s.into(),
        items: vec![Item::key("a")],
    };
    kv.call("kv.Clear", &request).await.unwrap();
}

#[tokio::test]
async fn upstream_memory_scenario_over_tcp() {
    let server = TestServer::memory().await;
    upstream_memory_scenario(&mut server.client().await).await;
    server.stop().await;
}

#[tokio::test]
async fn upstream_memory_scenario_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("unix://{}", dir.path().join("rr.sock").display());
    let server = TestServer::memory_at(&listen).await;
    upstream_memory_scenario(&mut server.client().await).await;
    server.stop().await;
    assert!(
        !dir.path().join("rr.sock").exists(),
        "socket file removed at shutdown"
    );
}

#[tokio::test]
async fn a_stale_unix_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a dead server left its socket file behind");
    let listen = format!("unix://{}", path.display());
    let server = TestServer::memory_at(&listen).await;
    let mut kv = server.client().await;
    kv.set("memory", vec![item("k", "v", "")]).await.unwrap();
    assert_eq!(kv.has("memory", &["k"]).await.unwrap(), ["k"]);
    server.stop().await;
}

#[tokio::test]
async fn a_live_socket_or_a_regular_file_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.txt");
    std::fs::write(&file, "precious").unwrap();
    let err = start_error(TWO_MEMORY, &format!("unix://{}", file.display())).await;
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    let live = format!("unix://{}", dir.path().join("live.sock").display());
    let first = TestServer::memory_at(&live).await;
    let err = start_error(TWO_MEMORY, &live).await;
    assert!(err.contains("another server is listening"), "{err}");
    first.stop().await;
}

#[tokio::test]
async fn storages_are_isolated_and_clear_empties_only_its_own() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    kv.set("memory", vec![item("shared", "in-memory", "")])
        .await
        .unwrap();
    kv.set(
        "other",
        vec![item("shared", "in-other", ""), item("only-other", "x", "")],
    )
    .await
    .unwrap();
    assert_eq!(
        kv.mget("memory", &["shared"]).await.unwrap()[0].1,
        "in-memory"
    );
    assert_eq!(
        kv.mget("other", &["shared"]).await.unwrap()[0].1,
        "in-other"
    );
    assert!(kv.has("memory", &["only-other"]).await.unwrap().is_empty());
    kv.clear("other").await.unwrap();
    assert!(kv
        .has("other", &["shared", "only-other"])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(kv.has("memory", &["shared"]).await.unwrap(), ["shared"]);
    server.stop().await;
}

#[tokio::test]
async fn ttl_reports_whole_utc_seconds_rounded_up_and_empty_for_no_deadline() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    kv.set(
        "memory",
        vec![
            item("frac", "v", "2099-06-01T10:00:00.250+02:00"),
            item("exact", "v", "2099-06-01T08:00:00Z"),
            item("forever", "v", ""),
        ],
    )
    .await
    .unwrap();
    let mut ttl = kv
        .ttl("memory", &["frac", "exact", "forever", "missing"])
        .await
        .unwrap();
    ttl.sort();
    assert_eq!(
        ttl,
        [
            ("exact".to_string(), "2099-06-01T08:00:00Z".to_string()),
            ("forever".to_string(), String::new()),
            ("frac".to_string(), "2099-06-01T08:00:01Z".to_string()),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn deadline_at_or_before_now_deletes_and_mexpire_keeps_values() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    kv.set("memory", vec![item("k", "v", ""), item("m", "keep", "")])
        .await
        .unwrap();
    kv.set("memory", vec![item("k", "v2", "2020-01-01T00:00:00+00:00")])
        .await
        .unwrap();
    assert!(
        kv.has("memory", &["k"]).await.unwrap().is_empty(),
        "past deadline deletes"
    );

    kv.mexpire(
        "memory",
        &[
            ("m", "2099-01-01T00:00:00Z"),
            ("ghost", "2099-01-01T00:00:00Z"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(kv.mget("memory", &["m"]).await.unwrap()[0].1, "keep");
    assert_eq!(
        kv.ttl("memory", &["m"]).await.unwrap()[0].1,
        "2099-01-01T00:00:00Z"
    );
    assert!(
        kv.has("memory", &["ghost"]).await.unwrap().is_empty(),
        "MExpire creates nothing"
    );
    kv.mexpire("memory", &[("m", "1999-01-01T00:00:00Z")])
        .await
        .unwrap();
    assert!(
        kv.has("memory", &["m"]).await.unwrap().is_empty(),
        "past MExpire deletes"
    );
    server.stop().await;
}

#[tokio::test]
async fn empty_item_lists_succeed_and_duplicates_collapse() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    for method in [
        "kv.Has",
        "kv.MGet",
        "kv.TTL",
        "kv.Set",
        "kv.MExpire",
        "kv.Delete",
    ] {
        let reply = kv
            .call(
                method,
                &Request {
                    storage: "memory".into(),
                    items: vec![],
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert!(reply.items.is_empty(), "{method}");
    }
    kv.set("memory", vec![item("k", "1", ""), item("k", "2", "")])
        .await
        .unwrap();
    assert_eq!(
        kv.mget("memory", &["k", "k"]).await.unwrap(),
        [("k".to_string(), "2".into())]
    );
    assert_eq!(kv.has("memory", &["k", "k", "k"]).await.unwrap(), ["k"]);
    server.stop().await;
}

#[tokio::test]
async fn empty_value_comes_back_as_key_only_item() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    kv.set("memory", vec![item("empty", "", "")]).await.unwrap();
    assert_eq!(
        kv.mget("memory", &["empty"]).await.unwrap(),
        [("empty".to_string(), "".into())]
    );
    server.stop().await;
}

#[tokio::test]
async fn large_values_round_trip() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    let big: String = "x".repeat(8 * 1024 * 1024);
    kv.set("memory", vec![item("big", &big, "")]).await.unwrap();
    let got = kv.mget("memory", &["big"]).await.unwrap();
    assert_eq!(got[0].1.len(), big.len());
    server.stop().await;
}
