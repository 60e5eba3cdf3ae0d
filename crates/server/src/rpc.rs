//! The RPC layer between frames and services: method lookup, codec check, body decoding,
//! and the reply frame. Mirrors Go's `net/rpc` so clients see the texts they expect.

use bytes::{Bytes, BytesMut};
use prost::Message;
use rrkv_protocol::frame::{self, Frame};
use rrkv_protocol::kv::{Request, Response};
use rrkv_protocol::rpc::{self as names, Codec};

use crate::kv::{KvService, Method};

/// The outcome of one call, ready to be written back.
pub struct Reply {
    seq: u32,
    codec: Codec,
    method: Bytes,
    result: Result<Response, String>,
}

impl Reply {
    /// Appends the reply frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match &self.result {
            Ok(response) => {
                frame::put_message(dst, self.codec.flag(), self.seq, &self.method, response)
            }
            Err(text) => frame::put_error(dst, self.codec.flag(), self.seq, &self.method, text),
        }
    }
}

/// Routes `service.Method` calls. rrkv registers one service, `kv`.
pub struct Dispatcher {
    kv: KvService,
}

/// A request that passed the RPC checks and waits to run.
pub enum Call {
    Kv(Method, Request),
    /// The RPC layer already knows the answer: an error text.
    Failed(String),
}

impl Dispatcher {
    pub fn new(kv: KvService) -> Dispatcher {
        Dispatcher { kv }
    }

    pub fn kv(&self) -> &KvService {
        &self.kv
    }

    /// Checks a request frame and decodes its body, without running it.
    pub fn prepare(&self, frame: &Frame) -> Call {
        let codec = Codec::from_flags(frame.flags);
        let (service, method) = match names::split_method(frame.method()) {
            Ok(parts) => parts,
            Err(text) => return Call::Failed(text),
        };
        if service != "kv" {
            return Call::Failed(names::no_such_service(&format!("{service}.{method}")));
        }
        let Some(method) = Method::from_name(method) else {
            return Call::Failed(names::no_such_method(&format!("{service}.{method}")));
        };
        if codec != Codec::Proto {
            return Call::Failed(names::unsupported_codec(codec));
        }
        match Request::decode(frame.body()) {
            Ok(request) => Call::Kv(method, request),
            Err(e) => Call::Failed(names::bad_body(e)),
        }
    }

    /// Runs one request frame to its reply.
    pub async fn dispatch(&self, frame: Frame) -> Reply {
        let result = match self.prepare(&frame) {
            Call::Kv(method, request) => self.kv.call(method, request).await,
            Call::Failed(text) => Err(text),
        };
        Reply {
            seq: frame.seq,
            codec: Codec::from_flags(frame.flags),
            method: frame.method_bytes(),
            result,
        }
    }
}
