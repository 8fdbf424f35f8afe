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
    let json = br#"{"out":{},"status":"created","job_id":"j","dispatch":"queued","ev":{"submitted":1,"odd":"x","neg":-1,"list":[1]},"lat":{"dispatch":{},"pool":["p"]}}"#;
    let o = decode_reply::<SessionReply>("t", json, Vec::new()).expect("decodes");
    let created = SessionReply::Created {
        job_id: "j".into(),
        dispatch: "queued".into(),
    };
    assert_eq!(o.reply, created);
    assert!(o.out.is_empty(), "cjson's {{}} is an empty list");
    assert_eq!(
        o.events.ev.len(),
        1,
        "only counts are kept: {:?}",
        o.events.ev
    );
    assert_eq!(o.events.lat.pool, vec!["p".to_string()]);
    let o = decode_reply::<SessionReply>("t", br#"{"status":"too_far"}"#, Vec::new());
    assert_eq!(o.expect("decodes").reply, SessionReply::TooFar);
    let bad =
        decode_reply::<SessionReply>("t", br#"{"status":"ok","out":[{"k":"node"}]}"#, Vec::new());
    assert!(bad.is_err(), "a delivery without its fields is an error");
    let bad = decode_reply::<SessionReply>("t", br#"{"status":"ok","out":{"a":1}}"#, Vec::new());
    assert!(bad.is_err(), "a non-empty object is not a list");
}
