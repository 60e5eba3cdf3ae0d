//! The goridge frame, as RoadRunner's RPC uses it (spec §1).
//!
//! ```text
//! 0      1     2..6          6..10        10     11     12..20            20..
//! ver|HL flags payload_len   CRC32(0..6)  byte10 byte11 seq, method_len   method ++ body
//! ```
//! All integers are little-endian; the CRC covers bytes 0..6 only. Every RPC frame carries
//! exactly two option words (HL = 5): the sequence id and the length of the method name at
//! the front of the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame flag bits (byte 1).
pub mod flags {
    /// Worker-protocol control frame; never set on RPC frames.
    pub const CONTROL: u8 = 0x01;
    /// Body is raw bytes.
    pub const CODEC_RAW: u8 = 0x04;
    /// Body is JSON.
    pub const CODEC_JSON: u8 = 0x08;
    /// Body is MessagePack.
    pub const CODEC_MSGPACK: u8 = 0x10;
    /// Body is Go gob (also assumed when no codec bit is set).
    pub const CODEC_GOB: u8 = 0x20;
    /// The reply is an error; the payload after the method name is its text.
    pub const ERROR: u8 = 0x40;
    /// Body is protobuf: the codec of the PHP KV client.
    pub const CODEC_PROTO: u8 = 0x80;
}

/// Bytes of the fixed header before the option words.
pub const BASE_HEADER_LEN: usize = 12;
/// Bytes of an RPC header: the base header and two option words.
pub const RPC_HEADER_LEN: usize = BASE_HEADER_LEN + 8;
/// Byte 0 of every RPC frame: version 1, header length 5 words.
pub const RPC_VERSION_HL: u8 = 0x15;
/// Default cap on a frame's payload: larger frames close the connection.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// One RPC frame: flags, sequence id, and a payload that starts with the method name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub seq: u32,
    method_len: usize,
    payload: Bytes,
}

/// A fault in the frame itself. The stream can no longer be trusted after one, so the
/// connection that sent it is closed (no reply can be addressed to a frame we cannot read).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame header CRC mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("frame has {0} option words; RPC frames must have 2 (SEQ_ID and METHOD_LEN)")]
    OptionCount(usize),
    #[error("frame method length {method_len} exceeds its payload length {payload_len}")]
    MethodTooLong {
        method_len: usize,
        payload_len: usize,
    },
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge { len: usize, max: usize },
}

impl Frame {
    /// A frame for `method` with `body` after it.
    pub fn new(flags: u8, seq: u32, method: &str, body: &[u8]) -> Frame {
        let mut payload = BytesMut::with_capacity(method.len() + body.len());
        payload.put_slice(method.as_bytes());
        payload.put_slice(body);
        Frame {
            flags,
            seq,
            method_len: method.len(),
            payload: payload.freeze(),
        }
    }

    /// The method name (`service.Method`) as sent; not necessarily UTF-8.
    pub fn method(&self) -> &[u8] {
        &self.payload[..self.method_len]
    }

    /// The method name as a cheap handle on the received bytes, for echoing in the reply.
    pub fn method_bytes(&self) -> Bytes {
        self.payload.slice(..self.method_len)
    }

    /// The body after the method name.
    pub fn body(&self) -> Bytes {
        self.payload.slice(self.method_len..)
    }

    /// Appends this frame's bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        put_header(
            dst,
            self.flags,
            self.seq,
            self.method_len,
            self.payload.len(),
        );
        dst.put_slice(&self.payload);
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(RPC_HEADER_LEN + self.payload.len());
        self.encode(&mut dst);
        dst.freeze()
    }

    /// Takes one whole frame off the front of `src`. `Ok(None)` means more bytes are needed
    /// (nothing is consumed). Header faults are reported as soon as the 12 base bytes are in,
    /// before the payload is awaited, so a bogus length never makes us buffer gigabytes.
    pub fn decode(src: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
        if src.len() < BASE_HEADER_LEN {
            return Ok(None);
        }
        let expected = u32::from_le_bytes([src[6], src[7], src[8], src[9]]);
        let actual = crc32fast::hash(&src[..6]);
        if expected != actual {
            return Err(FrameError::BadCrc { expected, actual });
        }
        let header_words = (src[0] & 0x0f) as usize;
        let options = header_words.saturating_sub(3);
        if header_words < 3 || options != 2 {
            return Err(FrameError::OptionCount(options));
        }
        let payload_len = u32::from_le_bytes([src[2], src[3], src[4], src[5]]) as usize;
        if payload_len > max_payload {
            return Err(FrameError::PayloadTooLarge {
                len: payload_len,
                max: max_payload,
            });
        }
        if src.len() < RPC_HEADER_LEN {
            return Ok(None);
        }
        let method_len = u32::from_le_bytes([src[16], src[17], src[18], src[19]]) as usize;
        if method_len > payload_len {
            return Err(FrameError::MethodTooLong {
                method_len,
                payload_len,
            });
        }
        if src.len() < RPC_HEADER_LEN + payload_len {
            // Make room for the rest, but at most 1 MiB ahead of what has arrived, so a header
            // that merely announces a large payload cannot make us allocate it.
            let missing = RPC_HEADER_LEN + payload_len - src.len();
            src.reserve(missing.min(1 << 20));
            return Ok(None);
        }
        let flags = src[1];
        let seq = u32::from_le_bytes([src[12], src[13], src[14], src[15]]);
        src.advance(RPC_HEADER_LEN);
        let payload = src.split_to(payload_len).freeze();
        Ok(Some(Frame {
            flags,
            seq,
            method_len,
            payload,
        }))
    }
}

/// Writes an RPC frame header; the caller appends `payload_len` bytes, method name first.
pub fn put_header(dst: &mut BytesMut, flags: u8, seq: u32, method_len: usize, payload_len: usize) {
    let mut head = [0u8; 6];
    head[0] = RPC_VERSION_HL;
    head[1] = flags;
    head[2..6].copy_from_slice(&(payload_len as u32).to_le_bytes());
    dst.reserve(RPC_HEADER_LEN + payload_len);
    dst.put_slice(&head);
    dst.put_u32_le(crc32fast::hash(&head));
    dst.put_u16(0);
    dst.put_u32_le(seq);
    dst.put_u32_le(method_len as u32);
}

/// Appends a frame whose body is a protobuf message, encoded straight into `dst`.
pub fn put_message<M: prost::Message>(
    dst: &mut BytesMut,
    flags: u8,
    seq: u32,
    method: &[u8],
    message: &M,
) {
    let body_len = message.encoded_len();
    put_header(dst, flags, seq, method.len(), method.len() + body_len);
    dst.put_slice(method);
    message
        .encode(dst)
        .expect("put_header reserved room for the whole body");
}

/// Appends an error reply: `codec|ERROR` flags, the method echoed, then the text.
pub fn put_error(dst: &mut BytesMut, codec: u8, seq: u32, method: &[u8], text: &str) {
    put_header(
        dst,
        codec | flags::ERROR,
        seq,
        method.len(),
        method.len() + text.len(),
    );
    dst.put_slice(method);
    dst.put_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn spec_example_has_request_round_trips() {
        // Spec §1.5 (a).
        let wire = hex("15 80 16 00 00 00 5A 8A 4D 26 00 00 01 00 00 00 06 00 00 00
            6B 76 2E 48 61 73 0A 07 64 65 66 61 75 6C 74 12 05 0A 03 66 6F 6F");
        let mut buf = BytesMut::from(&wire[..]);
        let frame = Frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            (frame.flags, frame.seq, frame.method()),
            (0x80, 1, &b"kv.Has"[..])
        );
        assert_eq!(frame.to_bytes().as_ref(), &wire[..]);
    }

    #[test]
    fn spec_example_error_reply_is_reproduced() {
        // Spec §1.5 (d) and (f).
        let mut dst = BytesMut::new();
        put_error(
            &mut dst,
            flags::CODEC_PROTO,
            1,
            b"kv.Has",
            "no such storage: ghost",
        );
        assert_eq!(
            dst.as_ref(),
            &hex("15 C0 1C 00 00 00 77 32 03 11 00 00 01 00 00 00 06 00 00 00
                6B 76 2E 48 61 73 6E 6F 20 73 75 63 68 20 73 74 6F 72 61 67 65 3A 20 67 68 6F 73 74")[..]
        );
        let mut dst = BytesMut::new();
        put_error(
            &mut dst,
            flags::CODEC_PROTO,
            7,
            b"kv.Get",
            "rpc: can't find method kv.Get",
        );
        assert_eq!(&dst[..10], &hex("15 C0 23 00 00 00 80 DA 4B B9")[..]);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let wire = Frame::new(0x80, 9, "kv.Set", b"body").to_bytes();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(Frame::decode(&mut buf, 1024), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn an_announced_payload_is_not_allocated_up_front() {
        let mut header = BytesMut::new();
        put_header(&mut header, 0x80, 1, 6, 60 * 1024 * 1024);
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(Frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD), Ok(None));
        assert!(
            buf.capacity() < 2 * 1024 * 1024,
            "capacity {}",
            buf.capacity()
        );
    }

    #[test]
    fn header_faults_are_reported() {
        let good = Frame::new(0x80, 1, "kv.Has", b"x").to_bytes();

        let mut bad_crc = BytesMut::from(&good[..]);
        bad_crc[6] ^= 1;
        assert!(matches!(
            Frame::decode(&mut bad_crc, 1024),
            Err(FrameError::BadCrc { .. })
        ));

        // Three option words, with a correct CRC.
        let mut three = BytesMut::from(&good[..]);
        three[0] = 0x16;
        let crc = crc32fast::hash(&three[..6]).to_le_bytes();
        three[6..10].copy_from_slice(&crc);
        assert_eq!(
            Frame::decode(&mut three, 1024),
            Err(FrameError::OptionCount(3))
        );

        let mut long_method = BytesMut::new();
        put_header(&mut long_method, 0x80, 1, 50, 7);
        long_method.put_slice(b"kv.Has!");
        assert_eq!(
            Frame::decode(&mut long_method, 1024),
            Err(FrameError::MethodTooLong {
                method_len: 50,
                payload_len: 7
            })
        );

        // The cap is checked from the base header alone, before the payload arrives.
        let mut huge = BytesMut::new();
        put_header(&mut huge, 0x80, 1, 6, 2048);
        huge.truncate(BASE_HEADER_LEN);
        assert_eq!(
            Frame::decode(&mut huge, 1024),
            Err(FrameError::PayloadTooLarge {
                len: 2048,
                max: 1024
            })
        );
    }
}
