//! Go `net/rpc` conventions over goridge (spec §2): codec choice, method names, error texts.
//!
//! The texts are byte-for-byte those of Go's `net/rpc`, because clients match on them
//! (the PHP client looks for `can't find method kv.Clear`).

use crate::frame::flags;

/// The body encoding a request asks for through its flag bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
    Raw,
    Msgpack,
    Gob,
}

impl Codec {
    /// The codec the server uses for a request, tested in RoadRunner's priority order:
    /// protobuf, JSON, raw, msgpack, gob; no codec bit at all means gob.
    pub fn from_flags(f: u8) -> Codec {
        if f & flags::CODEC_PROTO != 0 {
            Codec::Proto
        } else if f & flags::CODEC_JSON != 0 {
            Codec::Json
        } else if f & flags::CODEC_RAW != 0 {
            Codec::Raw
        } else if f & flags::CODEC_MSGPACK != 0 {
            Codec::Msgpack
        } else {
            Codec::Gob
        }
    }

    /// The flag bit a reply in this codec carries.
    pub fn flag(self) -> u8 {
        match self {
            Codec::Proto => flags::CODEC_PROTO,
            Codec::Json => flags::CODEC_JSON,
            Codec::Raw => flags::CODEC_RAW,
            Codec::Msgpack => flags::CODEC_MSGPACK,
            Codec::Gob => flags::CODEC_GOB,
        }
    }

    /// The codec's name, for error texts.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Proto => "protobuf",
            Codec::Json => "json",
            Codec::Raw => "raw",
            Codec::Msgpack => "msgpack",
            Codec::Gob => "gob",
        }
    }
}

/// Error text for a request in a codec the server does not speak.
pub fn unsupported_codec(codec: Codec) -> String {
    format!(
        "rrkv: the {} codec is not supported; use the protobuf codec (flag 0x80)",
        codec.name()
    )
}

/// Splits `service.Method` at the last dot, as `net/rpc` does. The error is the reply text.
pub fn split_method(name: &[u8]) -> Result<(&str, &str), String> {
    let text = std::str::from_utf8(name).map_err(|_| ill_formed(&String::from_utf8_lossy(name)))?;
    match text.rfind('.') {
        Some(dot) => Ok((&text[..dot], &text[dot + 1..])),
        None => Err(ill_formed(text)),
    }
}

fn ill_formed(name: &str) -> String {
    format!("rpc: service/method request ill-formed: {name}")
}

/// Reply text for a service that is not registered.
pub fn no_such_service(full_name: &str) -> String {
    format!("rpc: can't find service {full_name}")
}

/// Reply text for a method that the service does not have.
pub fn no_such_method(full_name: &str) -> String {
    format!("rpc: can't find method {full_name}")
}

/// Reply text for a body the codec could not decode.
pub fn bad_body(cause: impl std::fmt::Display) -> String {
    format!("goridge_read_request_body: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_priority_follows_roadrunner() {
        assert_eq!(Codec::from_flags(0x80), Codec::Proto);
        assert_eq!(
            Codec::from_flags(0xA0),
            Codec::Proto,
            "the Go client sends GOB|PROTO"
        );
        assert_eq!(Codec::from_flags(0x08 | 0x04), Codec::Json);
        assert_eq!(Codec::from_flags(0x14), Codec::Raw);
        assert_eq!(Codec::from_flags(0x10), Codec::Msgpack);
        assert_eq!(Codec::from_flags(0x00), Codec::Gob);
    }

    #[test]
    fn method_names_split_at_the_last_dot() {
        assert_eq!(split_method(b"kv.Has"), Ok(("kv", "Has")));
        assert_eq!(split_method(b"a.b.C"), Ok(("a.b", "C")));
        assert_eq!(
            split_method(b"nodot"),
            Err("rpc: service/method request ill-formed: nodot".to_string())
        );
        assert_eq!(no_such_method("kv.Get"), "rpc: can't find method kv.Get");
        assert_eq!(
            no_such_service("foo.Bar"),
            "rpc: can't find service foo.Bar"
        );
    }
}
