//! rrkv: a key-value server that speaks RoadRunner's KV RPC.
//!
//! The request path: socket → [`connection`] (frames) → [`rpc`] (method, codec, body) →
//! [`kv`] (validation, routing by storage name) → a [`storage::Storage`] driver.
//! [`config`] reads `.rr.yaml`; [`server`] listens and shuts down gracefully.

pub mod config;
pub mod connection;
pub mod drivers;
pub mod kv;
pub mod metrics;
pub mod rpc;
pub mod server;
pub mod storage;
pub mod timeout;

use std::future::Future;
use std::sync::Arc;

use rrkv_protocol::Address;

use crate::config::Config;
use crate::drivers::BuildContext;
use crate::kv::KvService;
use crate::rpc::Dispatcher;
use crate::server::{Listener, ServeOptions};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: Address,
        source: std::io::Error,
    },
}

/// Logs, in the background, whether a storage's remote backend answers. Startup does not
/// wait for it: a backend that is down must not keep rrkv (and the storages that work) from
/// serving, and its calls recover by themselves once it is back.
fn check_backend(name: String, storage: Arc<dyn storage::Storage>) {
    let Some(backend) = storage.backend().map(str::to_string) else {
        return;
    };
    tokio::spawn(async move {
        match tokio::time::timeout(std::time::Duration::from_secs(10), storage.check()).await {
            Ok(Ok(())) => tracing::info!(storage = %name, %backend, "backend reachable"),
            Ok(Err(e)) => tracing::warn!(
                storage = %name, %backend, error = %e,
                "backend unreachable; calls to this storage fail until it answers"
            ),
            Err(_) => tracing::warn!(
                storage = %name, %backend,
                "backend did not answer within 10 s; calls to this storage fail until it answers"
            ),
        }
    });
}

/// A server whose storages are built and whose socket is bound, ready to accept.
pub struct Server {
    listener: Listener,
    dispatcher: Arc<Dispatcher>,
    options: ServeOptions,
}

impl Server {
    /// Builds every storage, then binds the listener, so no connection is accepted before
    /// every storage exists (PHP workers may call `kv.*` the moment they boot).
    pub async fn start(
        config: &Config,
        listen: &Address,
        ctx: &BuildContext,
        options: ServeOptions,
    ) -> Result<Server, StartError> {
        drivers::check_conflicts(config)?;
        let mut storages = Vec::new();
        for storage in &config.storages {
            let built = match drivers::build(config, storage, ctx) {
                Ok(built) => built,
                Err(e) => {
                    KvService::new(storages).close_all().await;
                    return Err(e.into());
                }
            };
            tracing::info!(storage = %storage.name, driver = %storage.driver, "storage ready");
            check_backend(storage.name.clone(), built.clone());
            storages.push((storage.name.clone(), built));
        }
        Server::with_storages(storages, listen, options).await
    }

    /// A server over storages built by the caller (embedding, tests with custom drivers).
    /// The storages are closed if the listener cannot be bound.
    pub async fn with_storages(
        storages: Vec<(String, Arc<dyn storage::Storage>)>,
        listen: &Address,
        options: ServeOptions,
    ) -> Result<Server, StartError> {
        let kv = KvService::new(storages);
        let listener = match Listener::bind(listen).await {
            Ok(listener) => listener,
            Err(source) => {
                kv.close_all().await;
                return Err(StartError::Listen {
                    address: listen.clone(),
                    source,
                });
            }
        };
        Ok(Server {
            listener,
            dispatcher: Arc::new(Dispatcher::new(kv)),
            options,
        })
    }

    /// The request dispatcher, for metrics that read storage sizes.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        self.dispatcher.clone()
    }

    /// The bound address (with the real port if port 0 was asked for).
    pub fn local_address(&self) -> Address {
        self.listener.local_address()
    }

    /// Serves until `shutdown` completes; see [`server::serve`].
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        server::serve(self.listener, self.dispatcher, self.options, shutdown).await
    }
}
