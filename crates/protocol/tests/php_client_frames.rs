//! Frames captured from the real PHP client (spiral/roadrunner-kv 4.3, goridge-php 4.2):
//! every request decodes to what the client meant, and our encoder reproduces it byte for
//! byte.

use bytes::{Bytes, BytesMut};
use prost::Message;
use rrkv_protocol::fixtures::php_client_frames;
use rrkv_protocol::frame::{self, flags, Frame, DEFAULT_MAX_PAYLOAD};
use rrkv_protocol::kv::{Item, Request, Response};

fn item(key: &str, value: &[u8], timeout: &str) -> Item {
    Item {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
        timeout: timeout.into(),
    }
}

fn req(items: Vec<Item>) -> Request {
    Request {
        storage: "memory".into(),
        items,
    }
}

/// What each captured call meant, from the client calls listed in the capture's header.
fn expected(seq: u32) -> (&'static str, Request) {
    let k = Item::key;
    match seq {
        1 => ("kv.Set", req(vec![item("foo", b"s:3:\"bar\";", "")])),
        2 => ("kv.MGet", req(vec![k("foo")])),
        3 => ("kv.Has", req(vec![k("foo")])),
        4 => ("kv.Has", req(vec![k("nope")])),
        5 => ("kv.MGet", req(vec![k("nope")])),
        6 => (
            "kv.Set",
            req(vec![item(
                "t",
                b"a:1:{s:1:\"a\";i:1;}",
                "2026-12-04T16:32:00+00:00",
            )]),
        ),
        7 => ("kv.TTL", req(vec![k("t")])),
        8 => ("kv.TTL", req(vec![k("foo")])),
        9 => (
            "kv.Set",
            req(vec![
                item("a", b"i:1;", ""),
                item("b", b"d:2.5;", ""),
                item("c", b"N;", ""),
            ]),
        ),
        10 => ("kv.MGet", req(vec![k("a"), k("b"), k("c"), k("zz")])),
        11 => ("kv.Delete", req(vec![k("a")])),
        12 => ("kv.Has", req(vec![k("a")])),
        13 => ("kv.Clear", req(vec![])),
        15 => (
            "kv.MGet",
            Request {
                storage: "nosuch".into(),
                items: vec![k("x")],
            },
        ),
        other => panic!("no expectation for seq {other}"),
    }
}

#[test]
fn every_request_decodes_to_the_client_call_and_re_encodes_byte_for_byte() {
    let requests: Vec<_> = php_client_frames()
        .into_iter()
        .filter(|l| l.request)
        .collect();
    assert_eq!(requests.len(), 14);
    for line in requests {
        let mut buf = BytesMut::from(&line.bytes[..]);
        let frame = Frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty(), "one frame per line");
        let (method, message) = expected(line.seq);
        assert_eq!(frame.seq, line.seq);
        assert_eq!(frame.flags, flags::CODEC_PROTO);
        assert_eq!(frame.method(), method.as_bytes());
        let decoded = Request::decode(frame.body()).unwrap();
        assert_eq!(decoded, message, "seq {}", line.seq);

        let mut ours = BytesMut::new();
        frame::put_message(
            &mut ours,
            flags::CODEC_PROTO,
            line.seq,
            method.as_bytes(),
            &message,
        );
        assert_eq!(
            ours.as_ref(),
            &line.bytes[..],
            "seq {} re-encoded",
            line.seq
        );
    }
}

#[test]
fn every_reply_the_client_accepted_is_a_valid_frame() {
    for line in php_client_frames().into_iter().filter(|l| !l.request) {
        let mut buf = BytesMut::from(&line.bytes[..]);
        let frame = Frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD)
            .unwrap()
            .unwrap();
        assert_eq!(frame.seq, line.seq);
        if frame.flags & flags::ERROR == 0 {
            Response::decode(frame.body()).unwrap();
        }
        // Re-encoding gives the same bytes: our header writer matches the mock's.
        assert_eq!(frame.to_bytes().as_ref(), &line.bytes[..]);
    }
}
