//! Listening, accepting, and stopping gracefully.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rrkv_protocol::Address;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::connection::{self, Limits};
use crate::metrics::ConnectionMetrics;
use crate::rpc::Dispatcher;

/// How the server treats connections and shutdown.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub limits: Limits,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub shutdown_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            limits: Limits {
                max_payload: rrkv_protocol::frame::DEFAULT_MAX_PAYLOAD,
                max_inflight: 1024,
            },
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed again when the server stops.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `address`. A unix socket file left by a server that is gone is replaced; a file
    /// that is not a socket, or a socket someone still listens on, is an error.
    pub async fn bind(address: &Address) -> io::Result<Listener> {
        match address {
            Address::Tcp(hostport) => Ok(Listener::Tcp(TcpListener::bind(hostport).await?)),
            Address::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!(
                                "{} exists and is not a socket; refusing to replace it",
                                path.display()
                            ),
                        ));
                    }
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("another server is listening on {}", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                    tracing::info!(path = %path.display(), "replaced a stale socket file");
                }
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn local_address(&self) -> Address {
        match self {
            Listener::Tcp(l) => Address::Tcp(
                l.local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into()),
            ),
            Listener::Unix(_, path) => Address::Unix(path.clone()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Accepts connections until `shutdown` completes, then stops accepting, lets in-flight calls
/// finish (for at most `options.shutdown_timeout`) and closes every storage.
pub async fn serve(
    listener: Listener,
    dispatcher: Arc<Dispatcher>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let metrics = Arc::new(ConnectionMetrics::new());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let dispatcher = dispatcher.clone();
                let stop = stop_rx.clone();
                let metrics = metrics.clone();
                metrics.accepted.increment(1);
                metrics.open.increment(1.0);
                connections.spawn(async move {
                    tracing::debug!(peer, "connection opened");
                    let closed = match stream {
                        Stream::Tcp(s) => {
                            connection::serve(s, &peer, &dispatcher, options.limits, stop).await
                        }
                        Stream::Unix(s) => {
                            connection::serve(s, &peer, &dispatcher, options.limits, stop).await
                        }
                    };
                    if closed == connection::Closed::FrameError {
                        metrics.frame_errors.increment(1);
                    }
                    metrics.open.decrement(1.0);
                });
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    drop(listener);
    let _ = stop_tx.send(true);
    if !connections.is_empty() {
        tracing::info!(
            connections = connections.len(),
            "stopped accepting; finishing in-flight calls"
        );
    }
    let drained = tokio::time::timeout(options.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            timeout = ?options.shutdown_timeout,
            "calls still running at the shutdown timeout; closing their connections"
        );
        connections.shutdown().await;
    }
    dispatcher.kv().close_all().await;
    tracing::info!("stopped");
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Stream, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            // Replies are batched by the connection loop, so Nagle only adds latency.
            let _ = stream.set_nodelay(true);
            Ok((Stream::Tcp(stream), peer.to_string()))
        }
        Listener::Unix(l, path) => {
            let (stream, _) = l.accept().await?;
            Ok((Stream::Unix(stream), format!("unix:{}", path.display())))
        }
    }
}
