//! Real redis-server and memcached processes on loopback, started and killed by the tests.
//!
//! `.ci/run` installs both from Debian; a missing binary fails the test with a message
//! saying so instead of skipping it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A backend server process; killed when dropped.
pub struct Backend {
    program: &'static str,
    args: Vec<String>,
    pub port: u16,
    child: Option<Child>,
    /// Whether the server answers yet; a plain PING (or `version`) unless set.
    ready: Option<Box<dyn Fn(u16) -> bool + Send>>,
}

impl Backend {
    fn spawn(program: &'static str, args: Vec<String>, port: u16) -> Backend {
        let mut backend = Backend {
            program,
            args,
            port,
            child: None,
            ready: None,
        };
        backend.start();
        backend
    }

    /// Starts the process (again, after [`Backend::kill`]) on the same port, and waits
    /// until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.program);
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}. Install it (apt-get install -y redis-server memcached), as .ci/run does",
                    self.program
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (probe, expect): (&[u8], &[u8]) = if self.program == "memcached" {
            (b"version\r\n", b"VERSION")
        } else {
            (b"PING\r\n", b"+PONG")
        };
        let ready = |port| match &self.ready {
            Some(ready) => ready(port),
            None => answers(port, probe, expect),
        };
        while !ready(self.port) {
            assert!(
                Instant::now() < deadline,
                "{} on port {} did not answer within 10 s",
                self.program,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (e.g. SIGSTOP to make the backend hang, SIGCONT to wake it).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A stopped process must be woken to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// Whether something on `port` answers `probe` with a reply starting with `expect`.
fn answers(port: u16, probe: &[u8], expect: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(probe).is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    match stream.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(expect),
        Err(_) => false,
    }
}

/// A port that is free now (and, for cluster nodes, so is port + 10000 for the bus).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let port = 20_000 + fastrand::u16(0..20_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && (!with_bus || free(port + 10_000)) {
            return port;
        }
    }
}

/// A redis-server without persistence, on a free port.
pub fn redis_server() -> Backend {
    redis_server_at(free_port(false))
}

/// A redis-server without persistence, on `port`.
pub fn redis_server_at(port: u16) -> Backend {
    Backend::spawn("redis-server", redis_args(port, None), port)
}

/// A redis-server that answers PEXPIRETIME with "unknown command", as Redis before 7.0 does.
pub fn redis_server_without_pexpiretime() -> Backend {
    let port = free_port(false);
    let mut args = redis_args(port, None);
    args.extend(["--rename-command".into(), "PEXPIRETIME".into(), "".into()]);
    Backend::spawn("redis-server", args, port)
}

fn redis_args(port: u16, cluster_dir: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(dir) = cluster_dir {
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
                "--dir",
                &dir.display().to_string(),
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    }
    args
}

/// A redis-server replicating `master`.
pub fn redis_replica_of(master: u16) -> Backend {
    let port = free_port(false);
    let mut args = redis_args(port, None);
    args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
    Backend::spawn("redis-server", args, port)
}

/// A Sentinel (redis-server in sentinel mode) watching `master` under the name `mymaster`,
/// quick to declare it down. Sentinel rewrites its config file, so it lives in `dir`.
pub fn sentinel(master: u16, dir: &Path) -> Backend {
    let port = free_port(false);
    let config = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &config,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor mymaster 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 3000\n",
            dir.display()
        ),
    )
    .unwrap();
    Backend::spawn(
        "redis-server",
        vec![config.display().to_string(), "--sentinel".into()],
        port,
    )
}

/// Test certificates: a CA, a server certificate for 127.0.0.1 and a client certificate,
/// made with the openssl command-line tool in `dir`.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn test_certs(dir: &Path) -> TestCerts {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt-get install -y openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rrkv test CA",
    ]);
    openssl(&ca);
    // Extensions make X.509 v3 certificates, the only version rustls accepts.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    }
    TestCerts {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// A redis-server that accepts only TLS connections with a client certificate from the
/// test CA.
pub fn redis_tls_server(certs: &TestCerts) -> Backend {
    let port = free_port(false);
    let path = |p: &PathBuf| p.display().to_string();
    let args = vec![
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--tls-cert-file".into(),
        path(&certs.server_cert),
        "--tls-key-file".into(),
        path(&certs.server_key),
        "--tls-ca-cert-file".into(),
        path(&certs.ca),
        "--tls-auth-clients".into(),
        "yes".into(),
    ];
    let cli = vec![
        "--tls".to_string(),
        "--cacert".into(),
        path(&certs.ca),
        "--cert".into(),
        path(&certs.client_cert),
        "--key".into(),
        path(&certs.client_key),
    ];
    let mut backend = Backend {
        program: "redis-server",
        args,
        port,
        child: None,
        ready: Some(Box::new(move |port| {
            Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(&cli)
                .arg("ping")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        })),
    };
    backend.start();
    backend
}

/// A memcached on a free port.
pub fn memcached() -> Backend {
    memcached_at(free_port(false))
}

/// A memcached on `port`.
pub fn memcached_at(port: u16) -> Backend {
    let args = [
        "-p",
        &port.to_string(),
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-u",
        "root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Backend::spawn("memcached", args, port)
}

/// Runs `redis-cli -p port args…` and returns its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (from redis-tools) runs");
    assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three masters with no replicas, slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Backend>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().to_path_buf();
        let nodes: Vec<Backend> = (0..3)
            .map(|_| {
                let port = free_port(true);
                Backend::spawn("redis-server", redis_args(port, Some(&path)), port)
            })
            .collect();
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(nodes.iter().map(Backend::address));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "cluster create failed: {out:?}");
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            while !redis_cli(node.port, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(Backend::address).collect()
    }
}

/// `stats` of a memcached: the value of `curr_items`.
pub fn memcached_items(port: u16) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"stats\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.ends_with("END\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed the stats connection");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("STAT curr_items "))
        .and_then(|v| v.trim().parse().ok())
        .expect("curr_items in stats")
}
