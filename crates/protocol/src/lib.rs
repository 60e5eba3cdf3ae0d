//! RoadRunner's KV RPC on the wire, with no knowledge of storage or sockets.
//!
//! * [`frame`]: the goridge frame (header, CRC, the two RPC options, payload cap).
//! * [`kv`]: the `kv.v1` protobuf messages.
//! * [`rpc`]: Go `net/rpc` conventions on top of frames: method names, codecs, error texts.
//! * [`addr`]: `tcp://host:port` and `unix:///path` addresses as RoadRunner writes them.

pub mod addr;
#[doc(hidden)]
pub mod fixtures;
pub mod frame;
pub mod kv;
pub mod rpc;

pub use addr::Address;
pub use frame::{Frame, FrameError};
