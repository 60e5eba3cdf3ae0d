//! The request cases every driver's suite shares (RoadRunner's driver tests, with rrkv's
//! choices where it differs), run against one storage of a running server.

use rrkv_client::{Client, Item};

use super::{in_ms, item, sleep_past, sorted};

/// TestSetAndHas, TestMGetReturnsStoredValues, TestDeleteRemovesOnlyTheNamedKey: values are
/// opaque bytes (binary, empty), MGet keeps request order and omits missing keys, Delete of a
/// missing key succeeds. Leaves `b`, `bin` and `empty` stored.
pub async fn set_has_mget_delete(kv: &mut Client, s: &str) {
    kv.set(s, vec![item("a", "1", ""), item("b", "2", "")])
        .await
        .unwrap();
    assert_eq!(
        sorted(kv.has(s, &["a", "b", "missing"]).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        kv.mget(s, &["a", "missing", "b"]).await.unwrap(),
        [("a".to_string(), "1".into()), ("b".to_string(), "2".into())]
    );
    // Binary and empty values round-trip; an empty value comes back as a key-only item.
    let binary = Item {
        key: "bin".into(),
        value: bytes::Bytes::from_static(b"\0\xff\r\n"),
        timeout: String::new(),
    };
    kv.set(s, vec![binary.clone(), item("empty", "", "")])
        .await
        .unwrap();
    assert_eq!(
        kv.mget(s, &["bin", "empty"]).await.unwrap(),
        [
            ("bin".to_string(), binary.value.clone()),
            ("empty".to_string(), bytes::Bytes::new())
        ]
    );
    kv.delete(s, &["a", "never-existed"]).await.unwrap();
    assert_eq!(kv.has(s, &["a", "b"]).await.unwrap(), ["b"]);
}

/// A deadline at or before now deletes the key, as in the memory storage.
pub async fn past_deadline_deletes(kv: &mut Client, s: &str) {
    kv.set(s, vec![item("gone", "x", "")]).await.unwrap();
    kv.set(s, vec![item("gone", "y", &in_ms(-1_000))])
        .await
        .unwrap();
    assert!(kv.has(s, &["gone"]).await.unwrap().is_empty());
}

/// TestMExpireAppliesTTLToExistingKeys: MExpire keeps the value, leaves a missing key missing,
/// and the key is gone once `after_ms` has passed (the deadline plus the backend's
/// resolution).
pub async fn mexpire_keeps_value_then_expires(
    kv: &mut Client,
    s: &str,
    expire_in_ms: i64,
    after_ms: i64,
) {
    kv.set(s, vec![item("m", "kept", "")]).await.unwrap();
    let expiry = in_ms(expire_in_ms);
    let gone_by = in_ms(after_ms);
    kv.mexpire(s, &[("m", &expiry), ("nosuch", &expiry)])
        .await
        .unwrap();
    assert_eq!(
        kv.mget(s, &["m", "nosuch"]).await.unwrap(),
        [("m".to_string(), "kept".into())]
    );
    sleep_past(&gone_by).await;
    assert!(kv.has(s, &["m"]).await.unwrap().is_empty());
}
