//! The `rrkv` binary as a user runs it: startup errors, defaults, `.rr.yaml`, signals.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{connect_when_ready, item, rrkv};
use rrkv_client::Address;

/// Runs a command that must fail at startup; returns its stderr.
fn startup_failure(dir: &Path, args: &[&str]) -> String {
    let out: Output = rrkv(dir, args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    stderr
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(mut child: Child) -> (i32, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configurations_fail_startup_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();

    write("unknown.yaml", "kv:\n  sessions:\n    driver: mongo\n");
    let e = startup_failure(dir.path(), &["serve", "-c", "unknown.yaml"]);
    assert!(e.contains("unknown.yaml: kv.sessions.driver: unknown driver \"mongo\"; known drivers: memory, boltdb, redis, memcached"), "{e}");

    write("nodriver.yaml", "kv:\n  sessions:\n    config: {}\n");
    let e = startup_failure(dir.path(), &["serve", "-c", "nodriver.yaml"]);
    assert!(
        e.contains("nodriver.yaml: kv.sessions.driver: missing"),
        "{e}"
    );

    write(
        "listen.yaml",
        "rpc:\n  listen: localhost:6001\nkv:\n  a:\n    driver: memory\n",
    );
    let e = startup_failure(dir.path(), &["serve", "-c", "listen.yaml"]);
    assert!(
        e.contains("listen.yaml: rpc.listen: invalid socket DSN"),
        "{e}"
    );

    write("broken.yaml", "kv:\n  a: [unclosed\n");
    let e = startup_failure(dir.path(), &["serve", "-c", "broken.yaml"]);
    assert!(e.contains("broken.yaml: not valid YAML"), "{e}");

    let e = startup_failure(dir.path(), &["serve", "-c", "missing.yaml"]);
    assert!(
        e.contains("missing.yaml: cannot read the configuration file"),
        "{e}"
    );

    // A .rr.yaml in the working directory is read when -c is not given.
    write(".rr.yaml", "kv:\n  a:\n    driver: nosuch\n");
    let e = startup_failure(dir.path(), &["serve"]);
    assert!(e.contains(".rr.yaml: kv.a.driver: unknown driver"), "{e}");
}

#[test]
fn help_explains_every_option() {
    let out = rrkv(Path::new("."), &["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--config",
        "--listen",
        "--max-frame-size",
        "--max-inflight",
        "--shutdown-timeout",
        "--threads",
        "--metrics",
        "--log-level",
    ] {
        assert!(help.contains(option), "serve --help mentions {option}");
    }
    let out = rrkv(Path::new("."), &["--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
}

#[tokio::test]
async fn with_no_file_it_serves_memory_storage_default_on_6001_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // This test is about the default address, so it needs that port; say so if it is taken
    // rather than talk to whatever listens there.
    drop(
        std::net::TcpListener::bind("127.0.0.1:6001")
            .expect("port 6001 must be free for this test"),
    );
    let child = rrkv(dir.path(), &["serve"]).spawn().unwrap();
    let mut kv = connect_when_ready(&"tcp://127.0.0.1:6001".parse().unwrap()).await;
    kv.set("default", vec![item("k", "v", "")]).await.unwrap();
    assert_eq!(kv.has("default", &["k"]).await.unwrap(), ["k"]);
    terminate(&child);
    let (code, stderr) = wait_exit(child);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("serving one memory storage named \"default\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("listening") && stderr.contains("tcp://127.0.0.1:6001"),
        "{stderr}"
    );
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    // The idle connection was closed by the shutdown.
    assert!(kv.has("default", &["k"]).await.is_err());
}

#[tokio::test]
async fn rr_yaml_in_the_working_directory_configures_two_storages_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rr.sock");
    std::fs::write(
        dir.path().join(".rr.yaml"),
        "version: '3'\nserver:\n  command: php worker.php\nhttp:\n  address: 127.0.0.1:8080\n\
         rpc:\n  listen: unix://${RRKV_TEST_SOCK}\n\
         kv:\n  sessions:\n    driver: memory\n    config: {}\n  cache:\n    driver: memory\n    config:\n      interval: 10\n",
    )
    .unwrap();
    let child = rrkv(dir.path(), &["serve", "--log-level", "debug"])
        .env("RRKV_TEST_SOCK", &sock)
        .spawn()
        .unwrap();
    let mut kv = connect_when_ready(&Address::Unix(sock.clone())).await;
    kv.set("sessions", vec![item("s", "1", "")]).await.unwrap();
    assert_eq!(kv.has("sessions", &["s"]).await.unwrap(), ["s"]);
    assert!(kv.has("cache", &["s"]).await.unwrap().is_empty());
    terminate(&child);
    let (code, stderr) = wait_exit(child);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("configuration loaded"), "{stderr}");
    assert!(!sock.exists(), "socket removed on exit");
}

/// Runs an `rrkv bench ... --json` command that must succeed, and returns its JSON.
fn bench_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = rrkv(dir, args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test]
async fn bench_smoke_reports_figures_for_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("bench.sock");
    let listen = format!("unix://{}", sock.display());
    let server = rrkv(dir.path(), &["serve", "--listen", &listen])
        .spawn()
        .unwrap();
    drop(connect_when_ready(&Address::Unix(sock.clone())).await);
    let target = format!("rrkv+unix://{}#default", sock.display());
    let pid = server.id().to_string();

    let reports = bench_json(
        dir.path(),
        &[
            "bench",
            "memory",
            "--target",
            &target,
            "--pid",
            &pid,
            "--scenario",
            "distinct",
            "--keys",
            "20000",
            "--json",
        ],
    );
    let figures = reports[0]["figures"].as_array().unwrap();
    let per_key = figures.iter().find(|f| f[0] == "bytes per key").unwrap()[1]
        .as_f64()
        .unwrap();
    assert!(per_key.is_finite(), "bytes per key: {per_key}");

    let report = bench_json(
        dir.path(),
        &[
            "bench",
            "load",
            "--target",
            &target,
            "--conns",
            "4",
            "--inflight",
            "4",
            "--op",
            "mixed:50",
            "--batch",
            "3",
            "--ttl",
            "1s..3s",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--keys",
            "1000",
            "--prefill",
            "--json",
        ],
    );
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report}");
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    assert_eq!(report["items"].as_u64().unwrap(), 3 * requests);
    terminate(&server);
    assert_eq!(wait_exit(server).0, 0);
}

#[tokio::test]
async fn kv_subcommand_talks_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kv.sock");
    let address = format!("unix://{}", sock.display());
    let server = rrkv(dir.path(), &["serve", "--listen", &address])
        .spawn()
        .unwrap();
    drop(connect_when_ready(&Address::Unix(sock.clone())).await);
    let kv = |args: &[&str]| {
        let mut all = vec!["kv", "--address", &address];
        all.extend_from_slice(args);
        let out = rrkv(dir.path(), &all).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(kv(&["set", "greeting", "hello", "--ttl", "1h"]).0, Some(0));
    assert_eq!(kv(&["set", "plain", "value"]).0, Some(0));
    assert_eq!(
        kv(&["get", "greeting", "plain", "missing"]).1,
        "greeting\thello\nplain\tvalue\n"
    );
    assert_eq!(kv(&["has", "greeting", "missing"]).1, "greeting\n");
    let ttl = kv(&["ttl", "greeting", "plain"]).1;
    assert!(
        ttl.starts_with("greeting\t20") && ttl.ends_with("Z\nplain\t\n"),
        "{ttl}"
    );
    assert_eq!(kv(&["delete", "greeting"]).0, Some(0));
    assert_eq!(kv(&["has", "greeting"]).1, "");
    let (code, _, stderr) = kv(&["--storage", "nosuch", "get", "x"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no such storage: nosuch"), "{stderr}");
    assert_eq!(kv(&["clear"]).0, Some(0));
    assert_eq!(kv(&["has", "plain"]).1, "");
    terminate(&server);
    assert_eq!(wait_exit(server).0, 0);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test]
async fn metrics_count_requests_connections_and_frame_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (rpc, metrics) = (free_port(), free_port());
    let listen = format!("tcp://127.0.0.1:{rpc}");
    let metrics_address = format!("127.0.0.1:{metrics}");
    let server = rrkv(
        dir.path(),
        &["serve", "--listen", &listen, "--metrics", &metrics_address],
    )
    .spawn()
    .unwrap();
    let mut kv = connect_when_ready(&listen.parse().unwrap()).await;
    kv.set("default", vec![item("k", "v", "")]).await.unwrap();
    kv.mget("default", &["k"]).await.unwrap();
    assert!(kv.has("nosuch", &["k"]).await.is_err());
    let mut bad = tokio::net::TcpStream::connect(("127.0.0.1", rpc))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut bad, b"definitely not a goridge frame")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut bad, &mut sink).await; // closed by the server
    let expected = [
        "rrkv_requests_total{method=\"Set\",outcome=\"ok\"} 1",
        "rrkv_requests_total{method=\"MGet\",outcome=\"ok\"} 1",
        "rrkv_requests_total{method=\"Has\",outcome=\"error\"} 1",
        "rrkv_frame_errors_total 1",
        "rrkv_connections_total 2",
        "rrkv_request_duration_seconds_count{method=\"Set\"} 1",
    ];
    // The frame-error counter moves when the server has finished closing that connection,
    // which may be a moment after the client sees the close: poll briefly.
    let started = std::time::Instant::now();
    loop {
        let body = http_get(&metrics_address);
        let missing: Vec<_> = expected
            .iter()
            .filter(|e| !body.lines().any(|l| l == **e))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "missing {missing:?} in:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(&server);
    assert_eq!(wait_exit(server).0, 0);
}

#[tokio::test]
async fn an_unreachable_backend_is_logged_counted_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (rpc, metrics, redis_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("rr.yaml"),
        format!(
            "rpc:\n  listen: tcp://127.0.0.1:{rpc}\nkv:\n  cache:\n    driver: redis\n    config:\n      addrs: [\"127.0.0.1:{redis_port}\"]\n      dial_timeout: 1s\n  local:\n    driver: memory\n"
        ),
    )
    .unwrap();
    let metrics_address = format!("127.0.0.1:{metrics}");
    let server = rrkv(
        dir.path(),
        &["serve", "-c", "rr.yaml", "--metrics", &metrics_address],
    )
    .spawn()
    .unwrap();
    let mut kv = connect_when_ready(&format!("tcp://127.0.0.1:{rpc}").parse().unwrap()).await;
    assert!(kv.set("cache", vec![item("k", "v", "")]).await.is_err());
    assert!(kv.set("cache", vec![item("k", "v", "")]).await.is_err());
    kv.set("local", vec![item("k", "v", "")]).await.unwrap();
    let expected = "rrkv_storage_errors_total{storage=\"cache\",driver=\"redis\"} 2";
    let started = Instant::now();
    while !http_get(&metrics_address).lines().any(|l| l == expected) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {expected} in:\n{}",
            http_get(&metrics_address)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis comes up: the same storage works, without a restart.
    let _redis = common::backends::redis_server_at(redis_port);
    eventually!(
        "set after redis started",
        kv.set("cache", vec![item("k", "v", "")])
    );
    terminate(&server);
    let (code, stderr) = wait_exit(server);
    assert_eq!(code, 0, "{stderr}");
    let unreachable = stderr
        .lines()
        .find(|l| l.contains("backend unreachable"))
        .unwrap_or_else(|| panic!("no startup warning in:\n{stderr}"));
    assert!(
        unreachable.contains("cache") && unreachable.contains(&format!("127.0.0.1:{redis_port}")),
        "{unreachable}"
    );
    // Two failed calls, one log line: failures are logged at most every 10 s.
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("storage call failed"))
            .count(),
        1,
        "{stderr}"
    );
}
