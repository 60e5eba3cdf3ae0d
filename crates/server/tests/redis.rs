//! The `redis` driver against real redis-server processes: a single node, a 3-master cluster,
//! prefixes, and a backend that dies, hangs and comes back.

mod common;

use bytes::BytesMut;
use common::backends::{redis_cli, redis_server, Backend, RedisCluster};
use common::scenarios;
use common::*;
use rrkv_client::{Item, Request};
use rrkv_protocol::frame::{self, flags};

const S: &str = "redis-rr";

fn single(redis: &Backend, extra: &str) -> String {
    format!(
        "kv:\n  {S}:\n    driver: redis\n    config:\n      addrs: [\"{}\"]\n{extra}  memory:\n    driver: memory\n",
        redis.address()
    )
}

/// Milliseconds since the epoch of an RFC 3339 instant.
fn ms_of(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

#[tokio::test]
async fn upstream_redis_cases_with_millisecond_deadlines() {
    let redis = redis_server();
    let server = TestServer::start(&single(&redis, "")).await;
    let mut kv = server.client().await;

    scenarios::set_has_mget_delete(&mut kv, S).await;

    // TestTTLReportsRemainingLifetime: the deadline is stored to the millisecond and read
    // back (PEXPIRETIME) as whole seconds rounded up; a key without one has an empty timeout.
    let deadline = in_ms(60_000);
    kv.set(S, vec![item("ttl", "x", &deadline)]).await.unwrap();
    let stored: i64 = redis_cli(redis.port, &["pexpiretime", "ttl"])
        .trim()
        .parse()
        .unwrap();
    let wanted = ms_of(&deadline);
    assert!(
        stored == wanted || stored == wanted + 1,
        "PEXPIRETIME {stored}, deadline {wanted} ({deadline})"
    );
    let ttl = kv.ttl(S, &["ttl", "b", "missing"]).await.unwrap();
    assert_eq!(ttl.len(), 2, "{ttl:?}");
    let reported = ttl.iter().find(|(k, _)| k == "ttl").unwrap().1.clone();
    assert!(
        reported.ends_with('Z') && !reported.contains('.'),
        "{reported}"
    );
    let reported = ms_of(&reported);
    assert!(
        reported >= wanted && reported - wanted < 1000,
        "{reported} vs {wanted}"
    );
    assert_eq!(
        ttl.iter().find(|(k, _)| k == "b").unwrap().1,
        "",
        "no deadline"
    );

    // TestKeyExpiresAfterTTL, with a deadline under a second away.
    let soon = in_ms(400);
    kv.set(S, vec![item("soon", "x", &soon), item("stays", "y", "")])
        .await
        .unwrap();
    assert_eq!(kv.has(S, &["soon"]).await.unwrap(), ["soon"]);
    sleep_past(&soon).await;
    assert_eq!(kv.has(S, &["soon", "stays"]).await.unwrap(), ["stays"]);

    scenarios::past_deadline_deletes(&mut kv, S).await;
    scenarios::mexpire_keeps_value_then_expires(&mut kv, S, 600, 600).await;

    // TestClearEmptiesTheStorage, and leaves other storages alone.
    kv.set("memory", vec![item("b", "m", "")]).await.unwrap();
    kv.clear(S).await.unwrap();
    assert!(kv.has(S, &["b", "bin", "stays"]).await.unwrap().is_empty());
    assert_eq!(kv.has("memory", &["b"]).await.unwrap(), ["b"]);

    // TestUnknownStorageIsRejected
    let e = server_error(kv.has("redis-nope", &["a"]).await);
    assert!(e.contains("no such storage: redis-nope"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn config_from_the_global_section_and_missing_config() {
    let redis = redis_server();
    // TestGlobalSectionSuppliesAddrs
    let yaml = format!(
        "kv:\n  {S}:\n    driver: redis\n{S}:\n  addrs: [\"{}\"]\n",
        redis.address()
    );
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;
    kv.set(S, vec![item("g", "1", "")]).await.unwrap();
    assert_eq!(redis_cli(redis.port, &["get", "g"]).trim(), "1");
    server.stop().await;

    // TestMissingConfigFailsToServe
    let e = start_error(
        &format!("kv:\n  {S}:\n    driver: redis\n"),
        "tcp://127.0.0.1:0",
    )
    .await;
    assert!(
        e.contains("test.yaml") && e.contains("kv.redis-rr.config") && e.contains("addrs"),
        "{e}"
    );
    // A bad option names its key.
    let e = start_error(
        &format!("kv:\n  {S}:\n    driver: redis\n    config:\n      addrs: [\"127.0.0.1:6379\"]\n      dial_timeout: soon\n"),
        "tcp://127.0.0.1:0",
    )
    .await;
    assert!(e.contains("kv.redis-rr.config.dial_timeout"), "{e}");
}

#[tokio::test]
async fn prefixes_isolate_storages_and_prefixed_clear_removes_only_its_keys() {
    let redis = redis_server();
    let addr = redis.address();
    let yaml = format!(
        "kv:\n  a:\n    driver: redis\n    config: {{ addrs: [\"{addr}\"], prefix: \"a:\" }}\n  \
         b:\n    driver: redis\n    config: {{ addrs: [\"{addr}\"], prefix: \"b:\" }}\n  \
         glob:\n    driver: redis\n    config: {{ addrs: [\"{addr}\"], prefix: \"g*[\" }}\n  \
         whole:\n    driver: redis\n    config: {{ addrs: [\"{addr}\"] }}\n"
    );
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;

    kv.set("a", vec![item("k", "from a", "")]).await.unwrap();
    kv.set("b", vec![item("k", "from b", "")]).await.unwrap();
    assert_eq!(
        kv.mget("a", &["k"]).await.unwrap(),
        [("k".to_string(), "from a".into())]
    );
    assert_eq!(
        kv.mget("b", &["k"]).await.unwrap(),
        [("k".to_string(), "from b".into())]
    );
    assert_eq!(redis_cli(redis.port, &["get", "a:k"]).trim(), "from a");

    // More keys than one SCAN batch, plus keys a glob would wrongly match.
    let many: Vec<Item> = (0..2_500)
        .map(|i| item(&format!("key-{i}"), "v", ""))
        .collect();
    kv.set("a", many).await.unwrap();
    kv.set("glob", vec![item("x", "1", "")]).await.unwrap();
    redis_cli(redis.port, &["set", "foreign", "1"]);
    redis_cli(redis.port, &["set", "gX", "1"]);
    redis_cli(redis.port, &["set", "a", "no colon"]);

    kv.clear("a").await.unwrap();
    assert_eq!(
        redis_cli(redis.port, &["dbsize"]).trim(),
        "5",
        "b:k, g*[x, foreign, gX and a remain"
    );
    assert_eq!(kv.has("b", &["k"]).await.unwrap(), ["k"]);
    kv.clear("glob").await.unwrap();
    assert_eq!(redis_cli(redis.port, &["exists", "gX"]).trim(), "1");
    assert!(kv.has("glob", &["x"]).await.unwrap().is_empty());

    // Without a prefix, Clear is FLUSHDB: it empties the database, as upstream does.
    kv.clear("whole").await.unwrap();
    assert_eq!(redis_cli(redis.port, &["dbsize"]).trim(), "0");
    server.stop().await;
}

#[tokio::test]
async fn cluster_spreads_keys_and_answers_multi_slot_requests() {
    let cluster = RedisCluster::start();
    let addrs = cluster
        .addresses()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "kv:\n  cl:\n    driver: redis\n    config: {{ addrs: [{addrs}] }}\n  \
         clp:\n    driver: redis\n    config: {{ addrs: [{addrs}], prefix: \"p:\" }}\n"
    );
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;

    let keys: Vec<String> = (0..300).map(|i| format!("user:{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    kv.set(
        "cl",
        keys.iter()
            .map(|k| item(k, &format!("value of {k}"), ""))
            .collect(),
    )
    .await
    .unwrap();
    for node in &cluster.nodes {
        let size: u64 = redis_cli(node.port, &["dbsize"]).trim().parse().unwrap();
        assert!(size > 0, "node {} holds no keys", node.port);
    }
    // One MGet over keys on many slots and all three nodes, in request order.
    let mut asked = key_refs.clone();
    asked.insert(150, "missing");
    let got = kv.mget("cl", &asked).await.unwrap();
    assert_eq!(got.len(), 300);
    for ((key, value), expected) in got.iter().zip(&keys) {
        assert_eq!(key, expected);
        assert_eq!(value, &format!("value of {expected}"));
    }
    assert_eq!(kv.has("cl", &asked).await.unwrap().len(), 300);

    // Deadlines across slots: MExpire, TTL, and expiry.
    let deadline = in_ms(700);
    let pairs: Vec<(&str, &str)> = key_refs[..100]
        .iter()
        .map(|k| (*k, deadline.as_str()))
        .collect();
    kv.mexpire("cl", &pairs).await.unwrap();
    let ttl = kv.ttl("cl", &key_refs[..110]).await.unwrap();
    assert_eq!(ttl.len(), 110);
    assert_eq!(ttl.iter().filter(|(_, t)| t.is_empty()).count(), 10);
    sleep_past(&deadline).await;
    assert_eq!(kv.has("cl", &key_refs).await.unwrap().len(), 200);

    // Delete across slots.
    kv.delete("cl", &key_refs[100..200]).await.unwrap();
    assert_eq!(kv.has("cl", &key_refs).await.unwrap().len(), 100);

    // A prefixed Clear scans every primary and removes only its own keys.
    kv.set(
        "clp",
        (0..200).map(|i| item(&format!("s{i}"), "v", "")).collect(),
    )
    .await
    .unwrap();
    kv.clear("clp").await.unwrap();
    assert!(kv
        .has("clp", &["s0", "s1", "s199"])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(kv.has("cl", &key_refs).await.unwrap().len(), 100);

    // Without a prefix, Clear flushes every primary.
    kv.clear("cl").await.unwrap();
    for node in &cluster.nodes {
        assert_eq!(redis_cli(node.port, &["dbsize"]).trim(), "0");
    }
    server.stop().await;
}

#[tokio::test]
async fn backend_down_at_start_killed_and_restarted() {
    // Redis is not running when rrkv starts: rrkv starts anyway.
    let port = common::backends::free_port(false);
    let yaml = format!(
        "kv:\n  {S}:\n    driver: redis\n    config:\n      addrs: [\"127.0.0.1:{port}\"]\n      dial_timeout: 1s\n  memory:\n    driver: memory\n"
    );
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;
    let e = server_error(kv.set(S, vec![item("k", "v", "")]).await);
    assert!(
        e.contains(&format!("redis storage \"{S}\"")) && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    kv.set("memory", vec![item("k", "v", "")]).await.unwrap();

    // It comes up: calls succeed without a restart of rrkv.
    let mut redis = common::backends::redis_server_at(port);
    eventually!(
        "set after redis started",
        kv.set(S, vec![item("k", "before kill", "")])
    );

    // Killed mid-test: calls fail with a clear error, other storages keep working.
    redis.kill();
    let e = server_error(kv.mget(S, &["k"]).await);
    assert!(
        e.contains("rpc_mget") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    assert_eq!(kv.has("memory", &["k"]).await.unwrap(), ["k"]);

    // Restarted (empty: no persistence): calls succeed again.
    redis.start();
    eventually!(
        "set after redis restarted",
        kv.set(S, vec![item("k", "after restart", "")])
    );
    assert_eq!(
        kv.mget(S, &["k"]).await.unwrap(),
        [("k".to_string(), "after restart".into())]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_hung_backend_stalls_neither_other_storages_nor_other_calls_on_the_connection() {
    let redis = redis_server();
    let yaml = single(&redis, "      read_timeout: 3s\n");
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;
    kv.set(S, vec![item("k", "v", "")]).await.unwrap();

    redis.signal("STOP");
    // On one connection: a call to the hung Redis, then one to the memory storage.
    let mut bytes = BytesMut::new();
    let ask = |storage: &str| Request {
        storage: storage.into(),
        items: vec![Item::key("k")],
    };
    let first = kv.next_seq();
    frame::put_message(&mut bytes, flags::CODEC_PROTO, first, b"kv.MGet", &ask(S));
    frame::put_message(
        &mut bytes,
        flags::CODEC_PROTO,
        first + 1,
        b"kv.Has",
        &ask("memory"),
    );
    kv.send_raw(&bytes).await.unwrap();
    let reply = kv.read_frame().await.unwrap();
    assert_eq!(reply.seq, first + 1, "the memory call is answered first");
    let reply = kv.read_frame().await.unwrap();
    assert_eq!(reply.seq, first);
    let text = String::from_utf8_lossy(&reply.body()).into_owned();
    assert!(
        text.contains("rpc_mget") && text.contains(&redis.address()),
        "{text}"
    );

    redis.signal("CONT");
    let mut kv = server.client().await;
    eventually!("mget after redis woke", kv.mget(S, &["k"]));
    server.stop().await;
}

#[tokio::test]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = redis_server();
    let replica = common::backends::redis_replica_of(master.port);
    let sentinel = common::backends::sentinel(master.port, dir.path());
    // Wait until the Sentinel has found the replica, so it can fail over to it.
    let began = std::time::Instant::now();
    while !redis_cli(sentinel.port, &["sentinel", "replicas", "mymaster"])
        .contains(&replica.port.to_string())
    {
        assert!(
            began.elapsed().as_secs() < 20,
            "sentinel never saw the replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let yaml = format!(
        "kv:\n  {S}:\n    driver: redis\n    config:\n      addrs: [\"{}\"]\n      master_name: mymaster\n      dial_timeout: 1s\n      read_timeout: 1s\n",
        sentinel.address()
    );
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;
    kv.set(S, vec![item("k", "v1", "")]).await.unwrap();
    assert_eq!(redis_cli(master.port, &["get", "k"]).trim(), "v1");

    // The master dies; the Sentinel promotes the replica, and rrkv writes to it.
    master.kill();
    eventually!("set after failover", kv.set(S, vec![item("k", "v2", "")]));
    assert_eq!(redis_cli(replica.port, &["get", "k"]).trim(), "v2");
    assert_eq!(
        kv.mget(S, &["k"]).await.unwrap(),
        [("k".to_string(), "v2".into())]
    );
    server.stop().await;
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::backends::test_certs(dir.path());
    let redis = common::backends::redis_tls_server(&certs);
    let yaml = format!(
        "kv:\n  {S}:\n    driver: redis\n    config:\n      addrs: [\"{}\"]\n      tls:\n        root_ca: {}\n        cert: {}\n        key: {}\n",
        redis.address(),
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    // TestTLSConnection: Set, Has and MGet over TLS.
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;
    kv.set(S, vec![item("secure", "yes", "")]).await.unwrap();
    assert_eq!(kv.has(S, &["secure"]).await.unwrap(), ["secure"]);
    assert_eq!(
        kv.mget(S, &["secure"]).await.unwrap(),
        [("secure".to_string(), "yes".into())]
    );
    server.stop().await;

    // Without the client certificate the server refuses the handshake: a clear error.
    let yaml = format!(
        "kv:\n  {S}:\n    driver: redis\n    config:\n      addrs: [\"{}\"]\n      tls: {{ root_ca: {} }}\n",
        redis.address(),
        certs.ca.display()
    );
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;
    let e = server_error(kv.has(S, &["secure"]).await);
    assert!(e.contains(&redis.address()), "{e}");
    server.stop().await;

    // A missing CA file fails startup, naming the key.
    let e = start_error(
        &format!("kv:\n  {S}:\n    driver: redis\n    config:\n      addrs: [\"{}\"]\n      tls: {{ root_ca: /nonexistent/ca.pem }}\n", redis.address()),
        "tcp://127.0.0.1:0",
    )
    .await;
    assert!(
        e.contains("kv.redis-rr.config.tls.root_ca") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
}

#[tokio::test]
async fn ttl_falls_back_to_pttl_on_redis_before_7() {
    let redis = common::backends::redis_server_without_pexpiretime();
    let server = TestServer::start(&single(&redis, "")).await;
    let mut kv = server.client().await;
    let deadline = in_ms(60_000);
    kv.set(S, vec![item("a", "1", &deadline), item("b", "2", "")])
        .await
        .unwrap();
    for keys in [&["a"][..], &["a", "b", "missing"][..]] {
        let ttl = kv.ttl(S, keys).await.unwrap();
        let reported = ms_of(&ttl.iter().find(|(k, _)| k == "a").unwrap().1);
        let wanted = ms_of(&deadline);
        assert!(
            reported >= wanted && reported - wanted < 2000,
            "{reported} vs {wanted}"
        );
        assert_eq!(ttl.len(), keys.len().min(2), "{ttl:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn cluster_recovers_when_a_killed_node_comes_back() {
    let mut cluster = RedisCluster::start();
    let addrs = cluster
        .addresses()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "kv:\n  cl:\n    driver: redis\n    config: {{ addrs: [{addrs}], dial_timeout: 1s, read_timeout: 1s }}\n  memory:\n    driver: memory\n"
    );
    let server = TestServer::start(&yaml).await;
    let mut kv = server.client().await;
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    kv.set("cl", keys.iter().map(|k| item(k, "v", "")).collect())
        .await
        .unwrap();

    // One primary dies (its slots have no replica): a request touching them fails with an
    // error naming the cluster, and other storages are unaffected.
    cluster.nodes[1].kill();
    let e = server_error(kv.mget("cl", &refs).await);
    assert!(e.contains("rpc_mget") && e.contains("redis cluster"), "{e}");
    kv.set("memory", vec![item("k", "v", "")]).await.unwrap();

    // It restarts with its node file (same id and slots, no data: no persistence); the
    // cluster is whole again and rrkv serves every slot without a restart.
    cluster.nodes[1].start();
    cluster.wait_ok();
    eventually!(
        "set on every slot after the node restarted",
        kv.set("cl", keys.iter().map(|k| item(k, "again", "")).collect())
    );
    let got = kv.mget("cl", &refs).await.unwrap();
    assert_eq!(got.len(), 60);
    assert!(got.iter().all(|(_, v)| v == "again"));
    server.stop().await;
}
