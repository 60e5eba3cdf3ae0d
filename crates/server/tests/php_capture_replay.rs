//! Replays the frames the real PHP client sent and compares rrkv's replies with the replies
//! that client accepted. The server runs on a manual clock set before the capture's deadline
//! (2026-12-04T16:32:00Z), so the replay does not depend on today's date.

mod common;

use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use prost::Message;
use rrkv::server::ServeOptions;
use rrkv_engine::ManualClock;
use rrkv_protocol::fixtures::php_client_frames;
use rrkv_protocol::frame::{flags, Frame, DEFAULT_MAX_PAYLOAD};
use rrkv_protocol::kv::Response;

fn decode(bytes: &[u8]) -> Frame {
    Frame::decode(&mut BytesMut::from(bytes), DEFAULT_MAX_PAYLOAD)
        .unwrap()
        .unwrap()
}

fn instant(rfc3339: &str) -> jiff::Timestamp {
    rfc3339.parse().unwrap()
}

#[tokio::test]
async fn replies_to_the_php_capture_match_what_the_client_accepted() {
    let clock = Arc::new(ManualClock::new(
        instant("2026-12-04T16:00:00Z").as_millisecond() as u64,
    ));
    let server = TestServer::start_at(
        TWO_MEMORY,
        "tcp://127.0.0.1:0",
        ctx_with_clock(clock),
        ServeOptions::default(),
    )
    .await;
    let mut kv = server.client().await;

    let frames = php_client_frames();
    let mut checked = 0;
    for request in frames.iter().filter(|f| f.request) {
        let expected = frames
            .iter()
            .find(|f| !f.request && f.seq == request.seq)
            .expect("a reply for every request");
        kv.send_raw(&request.bytes).await.unwrap();
        let ours = kv.read_frame().await.unwrap();
        let theirs = decode(&expected.bytes);
        assert_eq!(ours.seq, theirs.seq);
        assert_eq!(ours.flags, theirs.flags, "seq {}", ours.seq);
        assert_eq!(ours.method(), theirs.method(), "seq {}", ours.seq);
        match ours.seq {
            7 => {
                // The mock echoed the client's "+00:00"; rrkv answers in UTC with "Z".
                let ours = Response::decode(ours.body()).unwrap();
                let theirs = Response::decode(theirs.body()).unwrap();
                assert_eq!(ours.items.len(), 1);
                assert_eq!(ours.items[0].key, theirs.items[0].key);
                assert_eq!(ours.items[0].timeout, "2026-12-04T16:32:00Z");
                assert_eq!(
                    instant(&ours.items[0].timeout),
                    instant(&theirs.items[0].timeout)
                );
            }
            15 => {
                // The mock made its own error text up; rrkv's is RoadRunner's current one.
                assert_eq!(ours.flags, flags::CODEC_PROTO | flags::ERROR);
                assert_eq!(&ours.body()[..], b"no such storage: nosuch");
            }
            _ => assert_eq!(
                ours.to_bytes().as_ref(),
                &expected.bytes[..],
                "seq {} byte for byte",
                ours.seq
            ),
        }
        checked += 1;
    }
    assert_eq!(checked, 14);
    server.stop().await;
}
