//! The `redis` driver: a storage kept in Redis (one node, Sentinel, or Cluster).
//!
//! Client kind, as RoadRunner (go-redis UniversalClient) chooses it: `master_name` means
//! Sentinel; otherwise one address means a single node and several mean a Cluster.
//!
//! Connections are multiplexed (the `redis` crate's `ConnectionManager` and async cluster
//! connection): every call of every rrkv connection shares one socket per Redis node, and
//! calls that are in flight together are written together. So there is no pool to size, and
//! upstream's pool options are accepted and ignored. Connections are made lazily: rrkv starts
//! while Redis is down, each call fails with an error naming the backend, and calls succeed
//! again once Redis is back (the manager reconnects after a failed call).
//!
//! Semantics follow the memory storage wherever Redis allows: deadlines are absolute
//! milliseconds (`SET … PXAT`, `PEXPIREAT`), a deadline at or before now deletes the key,
//! MExpire of a missing key is a no-op, and TTL reads the absolute deadline back
//! (`PEXPIRETIME`, or `PTTL` on Redis before 7.0). Each request costs one round trip: one
//! pipeline (a `MULTI`/`EXEC` transaction for Set) on a single node, and concurrent commands on
//! a cluster, which the client groups per node.
//!
//! With `prefix`, keys live under that prefix, and Clear removes only keys that start with it
//! (SCAN + UNLINK in batches, on every primary of a cluster). Without it Clear is `FLUSHDB`,
//! as upstream: it empties the whole database, whoever wrote the keys.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    TlsCertificates, TlsMode, Value,
};
use rrkv_engine::Clock;

use super::options;
use crate::storage::{DeadlineMs, SetItem, Storage, StorageError};

/// Keys asked for per SCAN step, and deleted per UNLINK, by a prefixed Clear.
const CLEAR_BATCH: usize = 1000;

/// Options of a `redis` storage (`kv.<name>.config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    pub addrs: Vec<String>,
    pub db: i64,
    pub username: String,
    pub password: String,
    /// Set: the addresses are Sentinels and this names the monitored master.
    pub master_name: String,
    pub sentinel_password: String,
    pub dial_timeout: Duration,
    /// How long one command may wait for its reply (upstream read_timeout/write_timeout).
    pub response_timeout: Duration,
    /// Reconnection attempts after a connection is lost.
    pub max_retries: usize,
    pub min_retry_backoff: Duration,
    pub max_retry_backoff: Duration,
    /// Cluster: serve reads from replicas.
    pub read_only: bool,
    /// Stored keys are `prefix ++ key`; Clear removes only keys under it.
    pub prefix: String,
    /// Set: connect over TLS.
    pub tls: Option<TlsFiles>,
}

/// `tls:` of a redis storage: PEM files, read at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the servers' certificates.
    pub root_ca: PathBuf,
    /// A client certificate and its key, for servers that require one (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        // go-redis defaults.
        RedisOptions {
            addrs: vec!["127.0.0.1:6379".into()],
            db: 0,
            username: String::new(),
            password: String::new(),
            master_name: String::new(),
            sentinel_password: String::new(),
            dial_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(3),
            max_retries: 3,
            min_retry_backoff: Duration::from_millis(8),
            max_retry_backoff: Duration::from_millis(512),
            read_only: false,
            prefix: String::new(),
            tls: None,
        }
    }
}

/// Options RoadRunner reads that mean nothing for multiplexed connections.
const IGNORED: &[&str] = &[
    "pool_size",
    "min_idle_conns",
    "max_conn_age",
    "pool_timeout",
    "idle_timeout",
    "idle_check_freq",
    "route_by_latency",
    "route_randomly",
];

/// Reads the driver's options; the error names the key.
pub fn parse_options(value: &serde_norway::Value) -> Result<RedisOptions, (String, String)> {
    let mut out = RedisOptions::default();
    let entries = options::mapping(
        value,
        "redis",
        "addrs, db, username, password, master_name, prefix, ...",
    )?;
    let mut read_timeout = None;
    let mut write_timeout = None;
    for (key, value) in entries {
        let at = |message: String| (key.to_string(), message);
        match key {
            "addrs" => out.addrs = options::addresses(value).map_err(at)?,
            "db" => {
                let db = options::unsigned(value).map_err(at)?;
                out.db = i64::try_from(db).map_err(|_| at("too large".into()))?;
            }
            "username" => out.username = options::text(value).map_err(at)?,
            "password" => out.password = options::text(value).map_err(at)?,
            "master_name" => out.master_name = options::text(value).map_err(at)?,
            "sentinel_password" => out.sentinel_password = options::text(value).map_err(at)?,
            "prefix" => out.prefix = options::text(value).map_err(at)?,
            "dial_timeout" => {
                if let Some(d) = options::go_duration(value).map_err(at)? {
                    out.dial_timeout = d;
                }
            }
            "read_timeout" => read_timeout = options::go_duration(value).map_err(at)?,
            "write_timeout" => write_timeout = options::go_duration(value).map_err(at)?,
            "min_retry_backoff" => {
                if let Some(d) = options::go_duration(value).map_err(at)? {
                    out.min_retry_backoff = d;
                }
            }
            "max_retry_backoff" => {
                if let Some(d) = options::go_duration(value).map_err(at)? {
                    out.max_retry_backoff = d;
                }
            }
            "max_retries" => {
                let n = options::unsigned(value).map_err(at)?;
                if n > 0 {
                    out.max_retries = n as usize;
                }
            }
            "read_only" => out.read_only = options::boolean(value).map_err(at)?,
            "tls" => out.tls = parse_tls(value)?,
            ignored if IGNORED.contains(&ignored) => {
                tracing::debug!(
                    key = ignored,
                    "redis option has no effect: connections are multiplexed"
                )
            }
            other => tracing::warn!(key = other, "unknown redis option ignored"),
        }
    }
    // One reply timeout covers both directions; the longer of the two wins.
    if let Some(d) = read_timeout.max(write_timeout) {
        out.response_timeout = d;
    }
    if out.addrs.len() > 1 && out.master_name.is_empty() && out.db != 0 {
        return Err((
            "db".into(),
            format!(
                "several addrs mean a Redis Cluster, which has only database 0, but db is {}",
                out.db
            ),
        ));
    }
    if out.max_retry_backoff < out.min_retry_backoff {
        out.max_retry_backoff = out.min_retry_backoff;
    }
    Ok(out)
}

/// Reads `tls: {root_ca, cert, key}`; errors name `tls.<key>`.
fn parse_tls(value: &serde_norway::Value) -> Result<Option<TlsFiles>, (String, String)> {
    if value.is_null() {
        return Ok(None);
    }
    let mut root_ca = None;
    let mut cert = None;
    let mut key = None;
    for (name, value) in options::mapping(value, "redis tls", "root_ca, cert, key")? {
        let at = |message: String| (format!("tls.{name}"), message);
        let path = options::text(value).map_err(at)?;
        let path = (!path.is_empty()).then(|| PathBuf::from(path));
        match name {
            "root_ca" => root_ca = path,
            "cert" => cert = path,
            "key" => key = path,
            "client_auth_type" => {} // in RoadRunner's schema, never read
            other => tracing::warn!(key = other, "unknown redis tls option ignored"),
        }
    }
    let Some(root_ca) = root_ca else {
        return Err((
            "tls.root_ca".into(),
            "the CA certificate (PEM) that signed the Redis servers' certificates is required"
                .into(),
        ));
    };
    if cert.is_some() != key.is_some() {
        let missing = if cert.is_none() {
            "tls.cert"
        } else {
            "tls.key"
        };
        return Err((
            missing.into(),
            "a client certificate needs both `cert` and `key`".into(),
        ));
    }
    Ok(Some(TlsFiles { root_ca, cert, key }))
}

/// The PEM files of `tls`, read; errors name the key and the file.
fn read_tls(files: &TlsFiles) -> Result<TlsCertificates, (String, String)> {
    let read = |key: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            (
                format!("tls.{key}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let client_tls = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("cert", cert)?,
            client_key: read("key", key)?,
        }),
        _ => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert: Some(read("root_ca", &files.root_ca)?),
    })
}

/// How calls reach Redis.
enum Backend {
    Single(ConnectionManager),
    Cluster(Box<ClusterBackend>),
    Sentinel(Box<SentinelBackend>),
}

/// A cluster connection, replaced by a fresh one after a connection-level failure.
///
/// The `redis` crate's async cluster connection does not always recover by itself: after a
/// primary is killed and restarted on the same address, every command to its slots timed
/// out for as long as we watched (60 s; see the `cluster_recovers…` test). A new connection
/// discovers the topology from the configured nodes and works at once. Rebuilds happen at
/// most once per [`CLUSTER_REBUILD_EVERY`], so a cluster that is really down is not hammered.
struct ClusterBackend {
    client: redis::cluster::ClusterClient,
    config: redis::cluster::ClusterConfig,
    connection: parking_lot::RwLock<ClusterConnection>,
    last_rebuild: parking_lot::Mutex<std::time::Instant>,
}

const CLUSTER_REBUILD_EVERY: Duration = Duration::from_secs(1);

impl ClusterBackend {
    fn rebuild(&self) {
        let mut last = self.last_rebuild.lock();
        if last.elapsed() < CLUSTER_REBUILD_EVERY {
            return;
        }
        *last = std::time::Instant::now();
        *self.connection.write() = self
            .client
            .get_pending_async_connection_with_config(self.config.clone());
    }
}

/// Whether `e` says the connection, not the command, failed.
fn connection_failed(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// A master found through Sentinel. The connection is dropped after a connection error or a
/// `READONLY` reply (a failover happened), and the next call asks the Sentinels again.
struct SentinelBackend {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    master: parking_lot::Mutex<Option<ConnectionManager>>,
    config: redis::aio::ConnectionManagerConfig,
    dial_timeout: Duration,
}

/// A storage whose keys live in Redis.
pub struct RedisStorage {
    backend: Backend,
    /// `"redis 127.0.0.1:6379"`, for error texts.
    describe: String,
    prefix: Vec<u8>,
    clock: Arc<dyn Clock>,
    /// Cleared when the server answers PEXPIRETIME with "unknown command" (Redis before 7.0).
    pexpiretime: AtomicBool,
}

impl RedisStorage {
    /// Builds the client without connecting: Redis may be down when rrkv starts. Errors
    /// name the option at fault (`""` for the section as a whole).
    pub fn new(
        options: &RedisOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<RedisStorage, (String, String)> {
        let certificates = options.tls.as_ref().map(read_tls).transpose()?;
        if certificates.is_some() {
            // rustls needs a process-wide crypto provider; a second install is a no-op error.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Self::build(options, certificates, clock).map_err(|message| (String::new(), message))
    }

    fn build(
        options: &RedisOptions,
        certificates: Option<TlsCertificates>,
        clock: Arc<dyn Clock>,
    ) -> Result<RedisStorage, String> {
        let settings = redis::RedisConnectionInfo::default().set_db(options.db);
        let settings = if options.username.is_empty() {
            settings
        } else {
            settings.set_username(&options.username)
        };
        let settings = if options.password.is_empty() {
            settings
        } else {
            settings.set_password(&options.password)
        };
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.dial_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.max_retries)
            .set_min_delay(options.min_retry_backoff)
            .set_max_delay(options.max_retry_backoff);
        let tls = certificates.is_some();
        let addrs = options
            .addrs
            .iter()
            .map(|a| tcp_addr(a, tls))
            .collect::<Result<Vec<_>, _>>()?;
        let (backend, kind) = if !options.master_name.is_empty() {
            let mut builder =
                SentinelClientBuilder::new(addrs, &options.master_name, SentinelServerType::Master)
                    .map_err(|e| e.to_string())?
                    .set_client_to_redis_db(options.db);
            if !options.username.is_empty() {
                builder = builder.set_client_to_redis_username(&options.username);
            }
            if !options.password.is_empty() {
                builder = builder.set_client_to_redis_password(&options.password);
            }
            if !options.sentinel_password.is_empty() {
                builder = builder.set_client_to_sentinel_password(&options.sentinel_password);
            }
            if let Some(certificates) = &certificates {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_certificates(certificates.clone());
            }
            let client = builder.build().map_err(|e| e.to_string())?;
            (
                Backend::Sentinel(Box::new(SentinelBackend {
                    sentinels: tokio::sync::Mutex::new(client),
                    master: parking_lot::Mutex::new(None),
                    config: manager_config,
                    dial_timeout: options.dial_timeout,
                })),
                format!(
                    "redis sentinel {} master {:?}",
                    options.addrs.join(","),
                    options.master_name
                ),
            )
        } else if addrs.len() > 1 {
            let nodes: Vec<ConnectionInfo> = addrs
                .into_iter()
                .map(|a| {
                    a.into_connection_info()
                        .map(|i| i.set_redis_settings(settings.clone()))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let mut builder = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(options.dial_timeout)
                .response_timeout(options.response_timeout)
                .retries(options.max_retries as u32)
                .min_retry_wait(options.min_retry_backoff.as_millis() as u64)
                .max_retry_wait(options.max_retry_backoff.as_millis() as u64);
            if let Some(certificates) = certificates {
                builder = builder.tls(TlsMode::Secure).certs(certificates);
            }
            if options.read_only {
                builder = builder
                    .read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy);
            }
            let client = builder.build().map_err(|e| e.to_string())?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(options.dial_timeout)
                .set_response_timeout(options.response_timeout);
            let connection = client.get_pending_async_connection_with_config(config.clone());
            (
                Backend::Cluster(Box::new(ClusterBackend {
                    client,
                    config,
                    connection: parking_lot::RwLock::new(connection),
                    last_rebuild: parking_lot::Mutex::new(std::time::Instant::now()),
                })),
                format!("redis cluster {}", options.addrs.join(",")),
            )
        } else {
            let info = addrs[0]
                .clone()
                .into_connection_info()
                .map_err(|e| e.to_string())?
                .set_redis_settings(settings);
            let client = match certificates {
                Some(certificates) => redis::Client::build_with_tls(info, certificates),
                None => redis::Client::open(info),
            }
            .map_err(|e| e.to_string())?;
            let manager = client
                .get_connection_manager_lazy(manager_config)
                .map_err(|e| e.to_string())?;
            (
                Backend::Single(manager),
                format!("redis {}", options.addrs[0]),
            )
        };
        Ok(RedisStorage {
            backend,
            describe: kind,
            prefix: options.prefix.as_bytes().to_vec(),
            clock,
            pexpiretime: AtomicBool::new(true),
        })
    }

    /// Appends `key`, under the prefix, as one argument of `command`; without a prefix the
    /// key is written as it is, with no intermediate copy.
    fn push_key(&self, command: &mut Cmd, key: &str) {
        if self.prefix.is_empty() {
            command.arg(key);
        } else {
            let mut stored = Vec::with_capacity(self.prefix.len() + key.len());
            stored.extend_from_slice(&self.prefix);
            stored.extend_from_slice(key.as_bytes());
            command.arg(stored);
        }
    }

    /// `name key`: a one-key command.
    fn key_command(&self, name: &str, key: &str) -> Cmd {
        let mut command = redis::cmd(name);
        self.push_key(&mut command, key);
        command
    }

    fn error(&self, e: RedisError) -> StorageError {
        StorageError::Backend(format!("{}: {e}", self.describe))
    }

    /// A connection to send commands on: the manager for a single node or the Sentinel
    /// master, the cluster connection otherwise. Cheap: both are handles to shared sockets.
    async fn connection(&self) -> Result<Connection, StorageError> {
        match &self.backend {
            Backend::Single(m) => Ok(Connection::Manager(m.clone())),
            Backend::Cluster(c) => Ok(Connection::Cluster(c.connection.read().clone())),
            Backend::Sentinel(s) => {
                if let Some(m) = s.master.lock().clone() {
                    return Ok(Connection::Manager(m));
                }
                let mut sentinels = s.sentinels.lock().await;
                if let Some(m) = s.master.lock().clone() {
                    return Ok(Connection::Manager(m)); // found while we waited for the lock
                }
                let client = tokio::time::timeout(s.dial_timeout, sentinels.async_get_client())
                    .await
                    .map_err(|_| {
                        StorageError::Backend(format!(
                            "{}: no Sentinel answered within {:?}",
                            self.describe, s.dial_timeout
                        ))
                    })?
                    .map_err(|e| self.error(e))?;
                let manager = client
                    .get_connection_manager_lazy(s.config.clone())
                    .map_err(|e| self.error(e))?;
                *s.master.lock() = Some(manager.clone());
                Ok(Connection::Manager(manager))
            }
        }
    }

    /// Notes a failed call: after a connection error (or a READONLY reply, for Sentinel), a
    /// Sentinel storage asks the Sentinels for the master again and a cluster storage
    /// replaces its connection.
    fn failed(&self, e: RedisError) -> StorageError {
        match &self.backend {
            Backend::Sentinel(s) if connection_failed(&e) || e.code() == Some("READONLY") => {
                s.master.lock().take();
            }
            Backend::Cluster(c) if connection_failed(&e) => c.rebuild(),
            _ => {}
        }
        self.error(e)
    }

    /// Runs one command per key and returns the replies in order, in one round trip: a
    /// pipeline on one node (a transaction when `atomic`), concurrent commands on a cluster,
    /// where a pipeline may not span slots.
    async fn per_key(&self, commands: Vec<Cmd>, atomic: bool) -> Result<Vec<Value>, StorageError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        if commands.len() == 1 {
            // One command is atomic by itself and needs no pipeline.
            let value = self.single::<Value>(&commands[0]).await?;
            return Ok(vec![value]);
        }
        let result = match self.connection().await? {
            Connection::Cluster(cluster) => {
                let calls = commands.into_iter().map(|command| {
                    let mut cluster = cluster.clone();
                    async move { command.query_async::<Value>(&mut cluster).await }
                });
                futures_util::future::try_join_all(calls).await
            }
            Connection::Manager(mut manager) => {
                let mut pipe = redis::pipe();
                if atomic {
                    pipe.atomic();
                }
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async::<Vec<Value>>(&mut manager).await
            }
        };
        result.map_err(|e| self.failed(e))
    }

    /// One command, routed by the client.
    async fn single<T: redis::FromRedisValue>(&self, command: &Cmd) -> Result<T, StorageError> {
        let result = match self.connection().await? {
            Connection::Cluster(mut c) => command.query_async(&mut c).await,
            Connection::Manager(mut m) => command.query_async(&mut m).await,
        };
        result.map_err(|e| self.failed(e))
    }

    /// Deadlines of `keys` via PEXPIRETIME (-2 missing, -1 none, else ms since epoch).
    async fn deadlines(&self, keys: &[String]) -> Result<Vec<i64>, StorageError> {
        if self.pexpiretime.load(Ordering::Relaxed) {
            let commands = keys
                .iter()
                .map(|k| self.key_command("PEXPIRETIME", k))
                .collect();
            let deadlines = self
                .per_key(commands, false)
                .await
                .and_then(|values| values.into_iter().map(|v| self.integer(v)).collect());
            match deadlines {
                Ok(deadlines) => return Ok(deadlines),
                Err(StorageError::Backend(text)) if is_unknown_command(&text) => {
                    tracing::info!(backend = %self.describe, "Redis before 7.0: TTL reads PTTL instead of PEXPIRETIME");
                    self.pexpiretime.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let commands = keys.iter().map(|k| self.key_command("PTTL", k)).collect();
        let now = self.clock.now_ms() as i64;
        self.per_key(commands, false)
            .await?
            .into_iter()
            .map(|v| {
                self.integer(v)
                    .map(|ms| if ms >= 0 { now + ms } else { ms })
            })
            .collect()
    }

    fn integer(&self, value: Value) -> Result<i64, StorageError> {
        match value {
            Value::Int(n) => Ok(n),
            Value::ServerError(e) => Err(self.error(e.into())),
            other => Err(StorageError::Backend(format!(
                "{}: expected an integer reply, got {other:?}",
                self.describe
            ))),
        }
    }

    /// Removes every key under the prefix on one node: SCAN MATCH then UNLINK, in batches.
    async fn clear_prefix_on(&self, node: Option<(String, u16)>) -> Result<(), StorageError> {
        let pattern = glob_escape(&self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(CLEAR_BATCH);
            let (next, keys): (u64, Vec<Vec<u8>>) = match (&node, self.connection().await?) {
                (Some((host, port)), Connection::Cluster(mut c)) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let value = c
                        .route_command(scan, routing)
                        .await
                        .map_err(|e| self.failed(e))?;
                    redis::from_redis_value(value).map_err(|e| self.error(e.into()))?
                }
                (_, Connection::Manager(mut m)) => {
                    scan.query_async(&mut m).await.map_err(|e| self.failed(e))?
                }
                (None, Connection::Cluster(_)) => unreachable!("cluster scans name their node"),
            };
            for chunk in keys.chunks(CLEAR_BATCH) {
                let mut unlink = redis::cmd("UNLINK");
                for key in chunk {
                    unlink.arg(key);
                }
                self.single::<i64>(&unlink).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The primaries of the cluster, from CLUSTER NODES.
    async fn cluster_primaries(&self) -> Result<Vec<(String, u16)>, StorageError> {
        let text: String = self.single(redis::cmd("CLUSTER").arg("NODES")).await?;
        let mut out = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            // ip:port@cport[,hostname]
            let addr = addr.split(['@', ',']).next().unwrap_or_default();
            if let Some((host, port)) = addr.rsplit_once(':') {
                if let Ok(port) = port.parse() {
                    out.push((host.to_string(), port));
                }
            }
        }
        if out.is_empty() {
            return Err(StorageError::Backend(format!(
                "{}: CLUSTER NODES listed no primaries",
                self.describe
            )));
        }
        Ok(out)
    }
}

/// A handle to send commands on.
enum Connection {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

fn tcp_addr(addr: &str, tls: bool) -> Result<ConnectionAddr, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not a host:port address"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{addr:?} is not a host:port address"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

fn is_unknown_command(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("unknown command") || lower.contains("err unknown")
}

/// A SCAN MATCH pattern for "starts with `prefix`": glob characters in it are escaped.
fn glob_escape(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'*');
    out
}

fn bytes_of(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s.into_bytes())),
        _ => None,
    }
}

#[async_trait]
impl Storage for RedisStorage {
    fn driver(&self) -> &'static str {
        "redis"
    }

    async fn has(&self, keys: &[String]) -> Result<Vec<String>, StorageError> {
        let commands = keys.iter().map(|k| self.key_command("EXISTS", k)).collect();
        let replies = self.per_key(commands, false).await?;
        let mut out = Vec::new();
        for (key, reply) in keys.iter().zip(replies) {
            if self.integer(reply)? > 0 {
                out.push(key.clone());
            }
        }
        Ok(out)
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError> {
        let mut mget = redis::cmd("MGET");
        for key in keys {
            self.push_key(&mut mget, key);
        }
        let values: Vec<Value> = self.single(&mget).await?;
        Ok(keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| bytes_of(v).map(|v| (k.clone(), v)))
            .collect())
    }

    async fn set(&self, items: Vec<SetItem>) -> Result<(), StorageError> {
        let now = self.clock.now_ms();
        let commands = items
            .into_iter()
            .map(|item| match item.deadline {
                Some(deadline) if deadline <= now => self.key_command("DEL", &item.key),
                deadline => {
                    let mut set = self.key_command("SET", &item.key);
                    set.arg(item.value.as_ref());
                    if let Some(deadline) = deadline {
                        set.arg("PXAT").arg(deadline);
                    }
                    set
                }
            })
            .collect();
        for reply in self.per_key(commands, true).await? {
            if let Value::ServerError(e) = reply {
                return Err(self.error(e.into()));
            }
        }
        Ok(())
    }

    async fn mexpire(&self, items: Vec<(String, DeadlineMs)>) -> Result<(), StorageError> {
        // PEXPIREAT on a missing key does nothing; one in the past deletes the key.
        let commands = items
            .iter()
            .map(|(key, deadline)| {
                let mut expire = self.key_command("PEXPIREAT", key);
                expire.arg(*deadline);
                expire
            })
            .collect();
        for reply in self.per_key(commands, true).await? {
            self.integer(reply)?;
        }
        Ok(())
    }

    async fn ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Option<DeadlineMs>)>, StorageError> {
        let deadlines = self.deadlines(keys).await?;
        Ok(keys
            .iter()
            .zip(deadlines)
            .filter_map(|(key, ms)| match ms {
                -2 => None,
                -1 => Some((key.clone(), None)),
                ms => Some((key.clone(), Some(ms.max(0) as DeadlineMs))),
            })
            .collect())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        let mut unlink = redis::cmd("UNLINK");
        for key in keys {
            self.push_key(&mut unlink, key);
        }
        self.single::<i64>(&unlink).await.map(|_| ())
    }

    async fn clear(&self) -> Result<(), StorageError> {
        if self.prefix.is_empty() {
            return self.single::<()>(&redis::cmd("FLUSHDB")).await;
        }
        match &self.backend {
            Backend::Cluster(_) => {
                for node in self.cluster_primaries().await? {
                    self.clear_prefix_on(Some(node)).await?;
                }
                Ok(())
            }
            _ => self.clear_prefix_on(None).await,
        }
    }

    async fn close(&self) -> Result<(), StorageError> {
        Ok(()) // connections close when the storage is dropped
    }

    fn backend(&self) -> Option<&str> {
        Some(&self.describe)
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.single::<redis::Value>(&redis::cmd("PING"))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RedisOptions, (String, String)> {
        parse_options(&serde_norway::from_str(text).unwrap())
    }

    #[test]
    fn upstream_options_are_read() {
        let o = parse(
            "addrs: ['10.0.0.1:6379']\ndb: 2\nusername: app\npassword: 1234\n\
             dial_timeout: 2s\nread_timeout: 500ms\nwrite_timeout: 1s\nmax_retries: 5\n\
             pool_size: 10\nidle_check_freq: 1m\nprefix: 'app:'\n",
        )
        .unwrap();
        assert_eq!(o.addrs, vec!["10.0.0.1:6379"]);
        assert_eq!(o.db, 2);
        assert_eq!(o.username, "app");
        assert_eq!(o.password, "1234");
        assert_eq!(o.dial_timeout, Duration::from_secs(2));
        assert_eq!(o.response_timeout, Duration::from_secs(1));
        assert_eq!(o.max_retries, 5);
        assert_eq!(o.prefix, "app:");
    }

    #[test]
    fn bad_options_name_their_key() {
        assert_eq!(parse("addrs: [nohost]").unwrap_err().0, "addrs");
        assert_eq!(parse("dial_timeout: 5").unwrap_err().0, "dial_timeout");
        assert_eq!(parse("db: -1").unwrap_err().0, "db");
        let (key, message) = parse("addrs: ['a:1', 'b:2']\ndb: 3").unwrap_err();
        assert_eq!(key, "db");
        assert!(message.contains("Cluster"), "{message}");
        let tls = parse("tls: {root_ca: ca.pem}").unwrap().tls.unwrap();
        assert_eq!(tls.root_ca, PathBuf::from("ca.pem"));
        assert_eq!(parse("tls: {cert: c.pem}").unwrap_err().0, "tls.root_ca");
        assert_eq!(
            parse("tls: {root_ca: ca.pem, cert: c.pem}").unwrap_err().0,
            "tls.key"
        );
    }

    #[test]
    fn clear_pattern_escapes_glob_characters() {
        assert_eq!(glob_escape(b"app:"), b"app:*".to_vec());
        assert_eq!(glob_escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\*".to_vec());
    }
}
