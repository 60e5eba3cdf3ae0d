//! An async client for RoadRunner's KV RPC: what `spiral/roadrunner-kv` does in PHP, in Rust.
//!
//! One [`Client`] owns one connection. [`Client::call`] sends a request and waits for its
//! reply; [`Client::pipeline`] sends many before reading any, and matches replies by
//! sequence id, since a server may answer pipelined calls out of order.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rrkv_client::Error> {
//! let mut kv = rrkv_client::Client::connect(&"tcp://127.0.0.1:6001".parse().unwrap()).await?;
//! kv.set("default", vec![rrkv_client::Item { key: "k".into(), value: "v".into(), timeout: String::new() }]).await?;
//! assert_eq!(kv.has("default", &["k"]).await?, vec!["k".to_string()]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use rrkv_protocol::frame::{self, flags, Frame, FrameError, DEFAULT_MAX_PAYLOAD};
pub use rrkv_protocol::kv::{Item, Request, Response};
pub use rrkv_protocol::Address;

/// Anything a client can talk over: a TCP stream, a unix stream, or a test duplex.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// What can go wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    #[error("bad reply body from the server: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("reply for seq {got} while waiting for seq {want}")]
    SeqMismatch { want: u32, got: u32 },
    /// The server answered with an error frame; `text` is its message.
    #[error("server error from {method}: {text}")]
    Server { method: String, text: String },
}

/// One connection to a KV RPC server.
pub struct Client {
    stream: Pin<Box<dyn Transport>>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    next_seq: u32,
}

impl Client {
    /// Connects to `tcp://host:port` or `unix:///path`. TCP connections set `TCP_NODELAY`.
    pub async fn connect(address: &Address) -> Result<Client, Error> {
        Ok(match address {
            Address::Tcp(hostport) => {
                let stream = tokio::net::TcpStream::connect(hostport).await?;
                stream.set_nodelay(true)?;
                Client::new(stream)
            }
            Address::Unix(path) => Client::new(tokio::net::UnixStream::connect(path).await?),
        })
    }

    /// A client over an already-open transport.
    pub fn new(stream: impl Transport + 'static) -> Client {
        Client {
            stream: Box::pin(stream),
            read_buf: BytesMut::with_capacity(16 * 1024),
            write_buf: BytesMut::with_capacity(16 * 1024),
            next_seq: 1,
        }
    }

    /// The sequence id the next call will use.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// Sends raw bytes, for tests that need frames no well-behaved client would send.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next frame from the server.
    pub async fn read_frame(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) = Frame::decode(&mut self.read_buf, DEFAULT_MAX_PAYLOAD)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    fn queue(&mut self, method: &str, request: &Request) -> u32 {
        let seq = self.take_seq();
        frame::put_message(
            &mut self.write_buf,
            flags::CODEC_PROTO,
            seq,
            method.as_bytes(),
            request,
        );
        seq
    }

    async fn flush(&mut self) -> Result<(), Error> {
        self.stream.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Calls `method` (for example `kv.Set`) and waits for its reply.
    pub async fn call(&mut self, method: &str, request: &Request) -> Result<Response, Error> {
        let seq = self.queue(method, request);
        self.flush().await?;
        let frame = self.read_frame().await?;
        if frame.seq != seq {
            return Err(Error::SeqMismatch {
                want: seq,
                got: frame.seq,
            });
        }
        reply_of(frame)
    }

    /// Sends every call before reading any reply, then returns the replies in call order,
    /// matched by sequence id.
    pub async fn pipeline(
        &mut self,
        calls: &[(&str, Request)],
    ) -> Result<Vec<Result<Response, Error>>, Error> {
        let mut slot_of_seq = HashMap::with_capacity(calls.len());
        for (i, (method, request)) in calls.iter().enumerate() {
            slot_of_seq.insert(self.queue(method, request), i);
        }
        self.flush().await?;
        let mut replies: Vec<Option<Result<Response, Error>>> =
            calls.iter().map(|_| None).collect();
        for _ in 0..calls.len() {
            let frame = self.read_frame().await?;
            let Some(slot) = slot_of_seq.remove(&frame.seq) else {
                return Err(Error::SeqMismatch {
                    want: 0,
                    got: frame.seq,
                });
            };
            replies[slot] = Some(reply_of(frame));
        }
        Ok(replies
            .into_iter()
            .map(|r| r.expect("every seq answered"))
            .collect())
    }

    async fn keys_call(
        &mut self,
        method: &str,
        storage: &str,
        keys: &[&str],
    ) -> Result<Response, Error> {
        let request = Request {
            storage: storage.to_string(),
            items: keys.iter().map(|k| Item::key(*k)).collect(),
        };
        self.call(method, &request).await
    }

    /// `kv.Has`: the keys that exist.
    pub async fn has(&mut self, storage: &str, keys: &[&str]) -> Result<Vec<String>, Error> {
        let reply = self.keys_call("kv.Has", storage, keys).await?;
        Ok(reply.items.into_iter().map(|i| i.key).collect())
    }

    /// `kv.MGet`: `(key, value)` for the keys that exist.
    pub async fn mget(
        &mut self,
        storage: &str,
        keys: &[&str],
    ) -> Result<Vec<(String, Bytes)>, Error> {
        let reply = self.keys_call("kv.MGet", storage, keys).await?;
        Ok(reply.items.into_iter().map(|i| (i.key, i.value)).collect())
    }

    /// `kv.TTL`: `(key, timeout)` for the keys that exist; an empty timeout means none.
    pub async fn ttl(
        &mut self,
        storage: &str,
        keys: &[&str],
    ) -> Result<Vec<(String, String)>, Error> {
        let reply = self.keys_call("kv.TTL", storage, keys).await?;
        Ok(reply
            .items
            .into_iter()
            .map(|i| (i.key, i.timeout))
            .collect())
    }

    /// `kv.Set`.
    pub async fn set(&mut self, storage: &str, items: Vec<Item>) -> Result<(), Error> {
        let request = Request {
            storage: storage.to_string(),
            items,
        };
        self.call("kv.Set", &request).await.map(drop)
    }

    /// `kv.MExpire`: `(key, RFC 3339 deadline)` pairs.
    pub async fn mexpire(&mut self, storage: &str, items: &[(&str, &str)]) -> Result<(), Error> {
        let request = Request {
            storage: storage.to_string(),
            items: items
                .iter()
                .map(|(key, timeout)| Item {
                    key: key.to_string(),
                    timeout: timeout.to_string(),
                    ..Item::default()
                })
                .collect(),
        };
        self.call("kv.MExpire", &request).await.map(drop)
    }

    /// `kv.Delete`.
    pub async fn delete(&mut self, storage: &str, keys: &[&str]) -> Result<(), Error> {
        self.keys_call("kv.Delete", storage, keys).await.map(drop)
    }

    /// `kv.Clear`.
    pub async fn clear(&mut self, storage: &str) -> Result<(), Error> {
        self.keys_call("kv.Clear", storage, &[]).await.map(drop)
    }
}

fn reply_of(frame: Frame) -> Result<Response, Error> {
    if frame.flags & flags::ERROR != 0 {
        return Err(Error::Server {
            method: String::from_utf8_lossy(frame.method()).into_owned(),
            text: String::from_utf8_lossy(&frame.body()).into_owned(),
        });
    }
    Ok(Response::decode(frame.body())?)
}
