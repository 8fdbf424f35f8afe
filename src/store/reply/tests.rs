use super::*;
use crate::store::sessions::SessionReply;

/// The one-pass `ev` reader keeps what the buffered one kept (a map through
/// `serde_json::Value`, its counts by `as_u64` or a decimal string).
#[test]
fn ev_counts_are_read_as_the_buffered_reader_read_them() {
    #[derive(Deserialize)]
    struct Ev {
        #[serde(deserialize_with = "lua_map")]
        ev: BTreeMap<String, u64>,
    }
    let buffered = |ev: &str| -> BTreeMap<String, u64> {
        match serde_json::from_str::<serde_json::Value>(ev).expect("JSON") {
            serde_json::Value::Object(m) => m
                .into_iter()
                .filter_map(|(k, v)| {
                    v.as_u64()
                        .or_else(|| v.as_str()?.parse().ok())
                        .map(|n| (k, n))
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    for ev in [
        "{}",
        "[]",
        "[1, {\"a\": 2}]",
        "null",
        "3",
        "\"x\"",
        "true",
        r#"{"submitted": 1, "failed:X": "2", "odd": "x", "neg": -1, "f": 1.5, "list": [1]}"#,
        r#"{"a": 1, "a": "x"}"#,
        r#"{"a": "x", "a": 7}"#,
        r#"{"big": 18446744073709551615, "over": 18446744073709551616, "plus": "+3"}"#,
        r#"{"nested": {"b": 1}, "n": null, "t": true, "esc\"k": 4}"#,
    ] {
        let got: Ev = serde_json::from_str(&format!(r#"{{"ev": {ev}}}"#)).expect("decodes");
        assert_eq!(got.ev, buffered(ev), "{ev}");
    }
}

#[test]
fn a_tagged_reply_decodes_beside_out_ev_and_lat_in_one_pass() {
    let reply = packed(
        r#"{"out":{},"r":{"status":"created","job_id":"j","dispatch":"queued"},"ev":{"submitted":1,"odd":"x","neg":-1,"list":[1]},"lat":{"dispatch":[],"pool":["p"]}}"#,
    );
    let o = decode_reply::<SessionReply>("t", &reply, Vec::new()).expect("decodes");
    let created = SessionReply::Created {
        job_id: "j".into(),
        dispatch: "queued".into(),
    };
    assert_eq!(o.reply, created);
    assert!(o.out.is_empty(), "an empty map is an empty list");
    assert_eq!(
        o.events.ev.len(),
        1,
        "only counts are kept: {:?}",
        o.events.ev
    );
    assert_eq!(o.events.lat.pool, vec!["p".to_string()]);
    let o = decode_reply::<SessionReply>("t", &packed(r#"{"r":{"status":"too_far"}}"#), Vec::new());
    assert_eq!(o.expect("decodes").reply, SessionReply::TooFar);
    let bad = packed(r#"{"r":{"status":"ok"},"out":[{"k":"node"}]}"#);
    let bad = decode_reply::<SessionReply>("t", &bad, Vec::new());
    assert!(bad.is_err(), "a delivery without its fields is an error");
    let bad = packed(r#"{"r":{"status":"ok"},"out":{"a":1}}"#);
    let bad = decode_reply::<SessionReply>("t", &bad, Vec::new());
    assert!(bad.is_err(), "a non-empty map is not a list");
    let json = br#"{"r":{"status":"too_far"}}"#;
    assert!(
        decode_reply::<SessionReply>("t", json, Vec::new()).is_err(),
        "a JSON reply (an earlier library's) is refused, not misread"
    );
}

/// What cmsgpack makes of a Lua reply: an empty table as an empty list, whole numbers as
/// integers, the nested `r`.
#[test]
fn a_reply_packed_by_lua_decodes() {
    // {r = {status = 'ok'}, out = {{k = 'node', id = 'n', owner = 'i', m = 1, seq = 300}},
    //  ev = {}, lat = {dispatch = {}, e2e = {2}, pool = {}}} as Redis 7.0's cmsgpack packs
    // it (map key order is Lua's table order: any)
    let mut b = vec![0x84];
    b.extend(b"\xa1r\x81\xa6status\xa2ok");
    b.extend(b"\xa3out\x91\x85\xa1k\xa4node\xa2id\xa1n\xa5owner\xa1i\xa1m\x01\xa3seq\xcd\x01\x2c");
    b.extend(b"\xa2ev\x90");
    b.extend(b"\xa3lat\x83\xa8dispatch\x90\xa3e2e\x91\x02\xa4pool\x90");
    let o = decode_reply::<serde_json::Value>("t", &b, vec![b"{}".to_vec()]).expect("decodes");
    assert_eq!(o.reply, serde_json::json!({"status": "ok"}));
    assert_eq!((o.out[0].msg.as_str(), o.out[0].seq), ("{}", Some(300)));
    assert!(o.events.ev.is_empty());
    assert_eq!(o.events.lat.e2e, vec![2.0]);
}
