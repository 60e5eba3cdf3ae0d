//! Error replies, the all-or-nothing rule, frame faults and pipelining, over real sockets.

mod common;

use bytes::BytesMut;
use common::*;
use rrkv::connection::Limits;
use rrkv::drivers::BuildContext;
use rrkv::server::ServeOptions;
use rrkv_client::{Error, Item, Request};
use rrkv_protocol::frame::{self, flags, Frame};

fn req(storage: &str, items: Vec<Item>) -> Request {
    Request {
        storage: storage.into(),
        items,
    }
}

const METHODS: [&str; 7] = [
    "kv.Has",
    "kv.Set",
    "kv.MGet",
    "kv.MExpire",
    "kv.TTL",
    "kv.Delete",
    "kv.Clear",
];

#[tokio::test]
async fn storage_errors_for_every_method() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    for method in METHODS {
        let ghost = kv.call(method, &req("ghost", vec![Item::key("k")])).await;
        assert_eq!(server_error(ghost), "no such storage: ghost", "{method}");
        let none = kv.call(method, &req("", vec![Item::key("k")])).await;
        assert_eq!(server_error(none), "no storage provided", "{method}");
        let case = kv.call(method, &req("Memory", vec![Item::key("k")])).await;
        assert_eq!(
            server_error(case),
            "no such storage: Memory",
            "names are case-sensitive"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn empty_or_blank_keys_are_refused_by_every_method_but_clear() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    for method in METHODS.into_iter().filter(|m| *m != "kv.Clear") {
        for key in ["", "   ", "\t\n"] {
            let item = item(key, "v", "2099-01-01T00:00:00Z");
            let text = server_error(kv.call(method, &req("memory", vec![item])).await);
            assert!(
                text.contains("key can't be empty string"),
                "{method} {key:?}: {text}"
            );
        }
    }
    kv.call("kv.Clear", &req("memory", vec![Item::key("")]))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn bad_timeouts_are_quoted_and_mexpire_needs_one() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    let text = server_error(kv.set("memory", vec![item("k", "v", "next tuesday")]).await);
    assert!(
        text.starts_with("rpc_set: key \"k\": invalid timeout \"next tuesday\""),
        "{text}"
    );
    let text = server_error(kv.mexpire("memory", &[("k", "2026-13-45T00:00:00Z")]).await);
    assert!(
        text.contains("invalid timeout \"2026-13-45T00:00:00Z\""),
        "{text}"
    );
    let no_timeout = req("memory", vec![Item::key("k")]);
    let text = server_error(kv.call("kv.MExpire", &no_timeout).await);
    assert!(text.contains("timeout for MExpire is empty"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_request_is_applied_all_or_nothing() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    // A bad timeout in the last item: the first is not stored.
    let bad = vec![item("first", "1", ""), item("second", "2", "garbage")];
    server_error(kv.set("memory", bad).await);
    assert!(kv
        .has("memory", &["first", "second"])
        .await
        .unwrap()
        .is_empty());
    // A blank key in the middle: nothing stored either.
    let bad = vec![
        item("first", "1", ""),
        item(" ", "2", ""),
        item("third", "3", ""),
    ];
    server_error(kv.set("memory", bad).await);
    assert!(kv
        .has("memory", &["first", "third"])
        .await
        .unwrap()
        .is_empty());

    kv.set("memory", vec![item("a", "1", ""), item("b", "2", "")])
        .await
        .unwrap();
    // MExpire with one bad item changes no deadline.
    let bad = req(
        "memory",
        vec![item("a", "", "2099-01-01T00:00:00Z"), item("b", "", "")],
    );
    server_error(kv.call("kv.MExpire", &bad).await);
    assert_eq!(
        kv.ttl("memory", &["a"]).await.unwrap()[0].1,
        "",
        "a kept no deadline"
    );
    // Delete with one blank key deletes nothing.
    server_error(kv.delete("memory", &["a", ""]).await);
    assert_eq!(
        sorted(kv.has("memory", &["a", "b"]).await.unwrap()),
        ["a", "b"]
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_methods_and_services_keep_the_connection_open() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    let r = req("memory", vec![Item::key("k")]);
    assert_eq!(
        server_error(kv.call("kv.Get", &r).await),
        "rpc: can't find method kv.Get"
    );
    assert_eq!(
        server_error(kv.call("kv.has", &r).await),
        "rpc: can't find method kv.has"
    );
    assert_eq!(
        server_error(kv.call("foo.Bar", &r).await),
        "rpc: can't find service foo.Bar"
    );
    assert_eq!(
        server_error(kv.call("nodot", &r).await),
        "rpc: service/method request ill-formed: nodot"
    );
    // The same connection still serves valid calls.
    kv.set("memory", vec![item("k", "v", "")]).await.unwrap();
    assert_eq!(kv.has("memory", &["k"]).await.unwrap(), ["k"]);
    server.stop().await;
}

#[tokio::test]
async fn other_codecs_and_garbage_bodies_get_error_replies() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    // JSON codec (flag 0x08): error reply in that codec, naming it.
    kv.send_raw(
        &Frame::new(flags::CODEC_JSON, 41, "kv.Has", b"{\"storage\":\"memory\"}").to_bytes(),
    )
    .await
    .unwrap();
    let reply = kv.read_frame().await.unwrap();
    assert_eq!(
        (reply.seq, reply.flags),
        (41, flags::CODEC_JSON | flags::ERROR)
    );
    let text = String::from_utf8(reply.body().to_vec()).unwrap();
    assert!(
        text.contains("json codec is not supported") && text.contains("protobuf"),
        "{text}"
    );
    // A protobuf body that does not decode.
    kv.send_raw(&Frame::new(flags::CODEC_PROTO, 42, "kv.Has", b"\xff\xff\xff").to_bytes())
        .await
        .unwrap();
    let reply = kv.read_frame().await.unwrap();
    assert_eq!(
        (reply.seq, reply.flags),
        (42, flags::CODEC_PROTO | flags::ERROR)
    );
    assert!(reply.body().starts_with(b"goridge_read_request_body: "));
    // A string field with invalid UTF-8 (storage = "\xff").
    kv.send_raw(&Frame::new(flags::CODEC_PROTO, 43, "kv.Has", b"\x0a\x01\xff").to_bytes())
        .await
        .unwrap();
    let reply = kv.read_frame().await.unwrap();
    assert_eq!(reply.flags, flags::CODEC_PROTO | flags::ERROR);
    // Still usable.
    assert!(kv.has("memory", &["x"]).await.unwrap().is_empty());
    server.stop().await;
}

/// Sends `bytes` on one connection and checks that the server closes it without a reply,
/// while a second connection keeps working.
async fn closes_only_this_connection(server: &TestServer, bytes: &[u8]) {
    let mut bystander = server.client().await;
    bystander
        .set("memory", vec![item("b", "1", "")])
        .await
        .unwrap();
    let mut offender = server.client().await;
    offender.send_raw(bytes).await.unwrap();
    match offender.read_frame().await {
        Err(Error::Closed) | Err(Error::Io(_)) => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
    assert_eq!(bystander.has("memory", &["b"]).await.unwrap(), ["b"]);
    let mut fresh = server.client().await;
    assert_eq!(fresh.has("memory", &["b"]).await.unwrap(), ["b"]);
}

#[tokio::test]
async fn frame_faults_close_only_their_connection() {
    let options = ServeOptions {
        limits: Limits {
            max_payload: 4096,
            max_inflight: 64,
        },
        ..ServeOptions::default()
    };
    let server = TestServer::start_at(
        TWO_MEMORY,
        "tcp://127.0.0.1:0",
        BuildContext::default(),
        options,
    )
    .await;
    let good = Frame::new(flags::CODEC_PROTO, 1, "kv.Has", b"\x0a\x06memory").to_bytes();

    let mut bad_crc = good.to_vec();
    bad_crc[7] ^= 0x55;
    closes_only_this_connection(&server, &bad_crc).await;

    let mut three_options = BytesMut::new();
    three_options.extend_from_slice(&good[..]);
    three_options[0] = 0x16;
    let crc = crc_of(three_options[..6].try_into().unwrap());
    three_options[6..10].copy_from_slice(&crc.to_le_bytes());
    closes_only_this_connection(&server, &three_options).await;

    let mut method_too_long = BytesMut::new();
    frame::put_header(&mut method_too_long, flags::CODEC_PROTO, 1, 100, 6);
    method_too_long.extend_from_slice(b"kv.Has");
    closes_only_this_connection(&server, &method_too_long).await;

    let mut too_big = BytesMut::new();
    frame::put_header(&mut too_big, flags::CODEC_PROTO, 1, 6, 5000);
    closes_only_this_connection(&server, &too_big).await;

    // Calls read before the bad frame are still answered.
    let mut kv = server.client().await;
    let mut pipelined = good.to_vec();
    pipelined.extend_from_slice(&bad_crc);
    kv.send_raw(&pipelined).await.unwrap();
    assert_eq!(kv.read_frame().await.unwrap().seq, 1);
    assert!(matches!(
        kv.read_frame().await,
        Err(Error::Closed) | Err(Error::Io(_))
    ));
    server.stop().await;
}

fn crc_of(bytes: &[u8; 6]) -> u32 {
    // Standard CRC-32 (IEEE), bitwise, so the test does not trust the code under test.
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn a_thousand_pipelined_requests_each_get_their_reply() {
    let server = TestServer::memory().await;
    let mut kv = server.client().await;
    let mut calls = Vec::new();
    for i in 0..500 {
        calls.push((
            "kv.Set",
            req("memory", vec![item(&format!("k{i}"), &format!("v{i}"), "")]),
        ));
        calls.push(("kv.MGet", req("memory", vec![Item::key(format!("k{i}"))])));
    }
    let first_seq = kv.next_seq();
    let replies = kv.pipeline(&calls).await.unwrap();
    assert_eq!(replies.len(), 1000);
    assert_eq!(kv.next_seq(), first_seq + 1000);
    for (i, pair) in replies.chunks(2).enumerate() {
        assert!(
            pair[0].as_ref().unwrap().items.is_empty(),
            "Set replies are empty"
        );
        let got = &pair[1].as_ref().unwrap().items;
        // The memory storage completes calls as they are read, so order is kept.
        assert_eq!(got.len(), 1, "MGet {i} sees the Set pipelined before it");
        assert_eq!(got[0].value, format!("v{i}").as_bytes());
    }
    server.stop().await;
}
