//! A server running inside the test process, on a free loopback port or a temp socket.

#![allow(dead_code)]

pub mod backends;
pub mod scenarios;

/// Repeats a fallible call for up to 15 s until it succeeds, and gives its value.
#[macro_export]
macro_rules! eventually {
    ($what:expr, $call:expr) => {{
        let start = std::time::Instant::now();
        loop {
            match $call.await {
                Ok(value) => break value,
                Err(_) if start.elapsed() < std::time::Duration::from_secs(15) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("{} still failing after 15 s: {e}", $what),
            }
        }
    }};
}

use std::sync::Arc;

use rrkv::config::Config;
use rrkv::drivers::BuildContext;
use rrkv::server::ServeOptions;
use rrkv::Server;
use rrkv_client::{Address, Client};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub address: Address,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server for `yaml` (its rpc.listen is replaced by `listen`).
    pub async fn start_at(
        yaml: &str,
        listen: &str,
        ctx: BuildContext,
        options: ServeOptions,
    ) -> TestServer {
        let config = Config::parse(yaml, "test.yaml", &|_| None).expect("test config");
        let server = Server::start(&config, &listen.parse().unwrap(), &ctx, options)
            .await
            .expect("server starts");
        let address = server.local_address();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        TestServer {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A server for `yaml` on a free TCP port, with the real clock and default options.
    pub async fn start(yaml: &str) -> TestServer {
        TestServer::start_at(
            yaml,
            "tcp://127.0.0.1:0",
            BuildContext::default(),
            ServeOptions::default(),
        )
        .await
    }

    /// Two memory storages, `memory` and `other`, on `listen`.
    pub async fn memory_at(listen: &str) -> TestServer {
        TestServer::start_at(
            TWO_MEMORY,
            listen,
            BuildContext::default(),
            ServeOptions::default(),
        )
        .await
    }

    /// Two memory storages, `memory` and `other`, on a free TCP port.
    pub async fn memory() -> TestServer {
        TestServer::start_at(
            TWO_MEMORY,
            "tcp://127.0.0.1:0",
            BuildContext::default(),
            ServeOptions::default(),
        )
        .await
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.address).await.expect("connect")
    }

    /// Stops the server and waits until it has closed its storages.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

pub const TWO_MEMORY: &str =
    "kv:\n  memory:\n    driver: memory\n    config: {}\n  other:\n    driver: memory\n";

pub fn ctx_with_clock(clock: Arc<dyn rrkv_engine::Clock>) -> BuildContext {
    BuildContext { clock }
}

/// An RFC 3339 deadline `ms` milliseconds from now, with a fraction.
pub fn in_ms(ms: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_millis(ms)).to_string()
}

pub fn item(key: &str, value: &str, timeout: &str) -> rrkv_client::Item {
    rrkv_client::Item {
        key: key.into(),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        timeout: timeout.into(),
    }
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The text of a server error, or a panic if the call did not fail that way.
pub fn server_error<T: std::fmt::Debug>(r: Result<T, rrkv_client::Error>) -> String {
    match r {
        Err(rrkv_client::Error::Server { text, .. }) => text,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Sleeps until 100 ms past an RFC 3339 deadline made by [`in_ms`].
pub async fn sleep_past(deadline: &str) {
    let at: jiff::Timestamp = deadline.parse().expect("an RFC 3339 deadline");
    let wait = at.duration_since(jiff::Timestamp::now()) + jiff::SignedDuration::from_millis(100);
    tokio::time::sleep(std::time::Duration::try_from(wait).unwrap_or_default()).await;
}

/// The `rrkv` binary, run in `dir` with `args`, stdout and stderr captured.
pub fn rrkv(dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rrkv"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Connects as soon as the server accepts (it may still be starting), for up to 20 s.
pub async fn connect_when_ready(address: &Address) -> rrkv_client::Client {
    let start = std::time::Instant::now();
    loop {
        match rrkv_client::Client::connect(address).await {
            Ok(client) => return client,
            Err(_) if start.elapsed() < std::time::Duration::from_secs(20) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("server did not come up: {e}"),
        }
    }
}

/// Starts a server for `yaml` on `listen`, which must fail; returns the error text.
pub async fn start_error(yaml: &str, listen: &str) -> String {
    let config = Config::parse(yaml, "test.yaml", &|_| None).expect("test config");
    match Server::start(
        &config,
        &listen.parse().unwrap(),
        &BuildContext::default(),
        ServeOptions::default(),
    )
    .await
    {
        Ok(_) => panic!("the server started, but it should have refused"),
        Err(e) => e.to_string(),
    }
}
