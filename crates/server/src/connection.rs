//! One client connection: read frames, run calls concurrently, write replies in batches.
//!
//! A single task owns the socket. Decoded requests run as futures in a `FuturesUnordered`,
//! so pipelined calls proceed together and each reply is written as soon as it is ready
//! (replies may leave out of order; clients match them by seq). Replies that complete
//! together are encoded into one buffer and written with one syscall.
//!
//! A frame-level fault (bad CRC, wrong option count, bad method length, payload over the cap)
//! means the byte stream can no longer be trusted: the connection answers the calls it had
//! already accepted, logs the fault and closes. No other connection is affected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rrkv_protocol::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::rpc::{Dispatcher, Reply};

/// Per-connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest accepted frame payload; a larger frame closes the connection.
    pub max_payload: usize,
    /// Calls running at once on one connection; reading pauses at this many.
    pub max_inflight: usize,
}

/// Buffers above this size are released once empty, so one huge frame does not pin memory.
const KEEP_BUFFER: usize = 1024 * 1024;
const INITIAL_BUFFER: usize = 8 * 1024;

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, shutdown was signalled, or the socket failed.
    Normally,
    /// The client sent a malformed frame.
    FrameError,
}

/// Serves one connection until the client closes it, it misbehaves, or shutdown is signalled
/// (then calls already read are finished and answered first).
pub async fn serve<S>(
    mut stream: S,
    peer: &str,
    dispatcher: &Dispatcher,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut read_buf = BytesMut::with_capacity(INITIAL_BUFFER);
    let mut write_buf = BytesMut::with_capacity(INITIAL_BUFFER);
    let mut inflight: FuturesUnordered<Pin<Box<dyn Future<Output = Reply> + Send + '_>>> =
        FuturesUnordered::new();
    let mut reading = !*shutdown.borrow();
    let mut calls: u64 = 0;
    let mut closed = Closed::Normally;
    // Created once: re-creating it on every loop turn would register and unregister a
    // waiter on the watch channel for every request.
    let stopping = shutdown.changed();
    tokio::pin!(stopping);

    loop {
        while reading && inflight.len() < limits.max_inflight {
            match Frame::decode(&mut read_buf, limits.max_payload) {
                Ok(Some(frame)) => {
                    calls += 1;
                    // Most calls (all on the memory storage) finish on their first poll:
                    // answer those inline and queue only the ones that must wait.
                    let mut call = Box::pin(dispatcher.dispatch(frame));
                    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                        Poll::Ready(reply) => reply.encode(&mut write_buf),
                        // FuturesUnordered polls a pushed future again with its own waker.
                        Poll::Pending => inflight.push(call),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer, error = %e, "closing connection: malformed frame");
                    reading = false;
                    closed = Closed::FrameError;
                }
            }
        }
        if read_buf.is_empty() && read_buf.capacity() > KEEP_BUFFER {
            read_buf = BytesMut::with_capacity(INITIAL_BUFFER);
        }

        // Collect every reply that is ready now, then write them with one syscall.
        while let Some(Some(reply)) = inflight.next().now_or_never() {
            reply.encode(&mut write_buf);
        }
        if !write_buf.is_empty() {
            if let Err(e) = stream.write_all(&write_buf).await {
                tracing::debug!(peer, error = %e, "write failed; dropping connection");
                return closed;
            }
            write_buf.clear();
            if write_buf.capacity() > KEEP_BUFFER {
                write_buf = BytesMut::with_capacity(INITIAL_BUFFER);
            }
        }
        if !reading && inflight.is_empty() {
            break;
        }

        tokio::select! {
            read = stream.read_buf(&mut read_buf), if reading && inflight.len() < limits.max_inflight => {
                match read {
                    Ok(0) => reading = false,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer, error = %e, "read failed; dropping connection");
                        return closed;
                    }
                }
            }
            Some(reply) = inflight.next(), if !inflight.is_empty() => reply.encode(&mut write_buf),
            _ = &mut stopping, if reading => reading = false,
        }
    }
    let _ = stream.shutdown().await;
    tracing::debug!(peer, calls, "connection closed");
    closed
}
