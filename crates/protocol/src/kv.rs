//! The `kv.v1` protobuf messages (RoadRunner's `kv/v1/kv.proto`, spec §3.2).
//!
//! ```proto
//! message Request  { string storage = 1; repeated Item items = 2; }
//! message Item     { string key = 1; bytes value = 2; string timeout = 3; }
//! message Response { repeated Item items = 1; }
//! ```
//! Written with prost's derive rather than generated, so building needs no `protoc`.
//! `value` is `Bytes`, so a decoded request borrows from the received frame instead of copying.

use bytes::Bytes;

/// A request to one storage: `kv.Has`, `kv.Set`, `kv.MGet`, `kv.MExpire`, `kv.TTL`,
/// `kv.Delete` and `kv.Clear` all take this message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// The storage's name: a key of the `kv:` section of the configuration.
    #[prost(string, tag = "1")]
    pub storage: String,
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<Item>,
}

/// One key, with a value and a deadline where the method uses them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// An RFC 3339 instant (an absolute deadline, not a duration); empty means no expiry.
    #[prost(string, tag = "3")]
    pub timeout: String,
}

/// The reply of every kv method; empty for the methods that only write.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<Item>,
}

impl Item {
    /// An item carrying only a key.
    pub fn key(key: impl Into<String>) -> Item {
        Item {
            key: key.into(),
            ..Item::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn set_request_encodes_as_the_spec_example() {
        // Spec §1.5 (e): the body after "kv.Set".
        let req = Request {
            storage: "default".into(),
            items: vec![Item {
                key: "foo".into(),
                value: Bytes::from_static(b"s:3:\"bar\";"),
                timeout: "2026-01-01T00:00:00+00:00".into(),
            }],
        };
        let body = req.encode_to_vec();
        assert_eq!(body.len(), 61 - 6);
        assert_eq!(&body[..11], b"\x0a\x07default\x12\x2c");
        assert_eq!(Request::decode(&body[..]).unwrap(), req);
    }
}
