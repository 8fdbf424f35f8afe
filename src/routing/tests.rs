use super::*;

#[test]
fn a_ui_entry_becomes_ui_event_json_with_its_strings_escaped() {
    let d: crate::store::Delivery = serde_json::from_str(
        r#"{"k":"ui","id":"s-\"1","owner":"i","job":"job-1","tr":"ab","ix":"3","el":"12","ev":"ASR_FINAL"}"#,
    )
    .expect("entry");
    let v: serde_json::Value =
        serde_json::from_str(&ui_event_json(&d, "ASR_FINAL")).expect("valid JSON");
    assert_eq!(
        v,
        serde_json::json!({"type": "ui_event", "trace_id": "ab", "session_id": "s-\"1",
            "job_id": "job-1", "utterance_index": 3, "event": "ASR_FINAL", "status": "ok",
            "elapsed_ms": 12})
    );
}

/// Strings are quoted without serde_json when nothing needs escaping: the same bytes.
#[test]
fn ui_event_strings_are_written_as_serde_json_writes_them() {
    let mut samples: Vec<String> = (0u8..=0x7f).map(|b| format!("a{}b", b as char)).collect();
    samples.extend(["", "job-1", "s-\"1", "back\\slash", "é中文🎉", "\u{7f}"].map(String::from));
    for s in samples {
        let d: crate::store::Delivery = serde_json::from_value(serde_json::json!({
            "k": "ui", "id": s, "owner": "i", "job": s, "tr": s, "ix": "1", "el": "2",
        }))
        .expect("entry");
        let want = format!(
            r#"{{"type":"ui_event","trace_id":{q},"session_id":{q},"job_id":{q},"utterance_index":1,"event":{q},"status":"ok","elapsed_ms":2}}"#,
            q = serde_json::to_string(&s).expect("a string")
        );
        assert_eq!(ui_event_json(&d, &s), want, "{s:?}");
    }
}

#[test]
fn audio_is_spliced_into_the_object() {
    let out = with_audio(r#"{"type":"job_assign","job_id":"j"}"#, Audio::Raw(b"abc"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["audio"], "YWJj");
    assert_eq!(v["job_id"], "j");
    let v: serde_json::Value = serde_json::from_str(&with_audio("{}", Audio::Raw(b""))).unwrap();
    assert_eq!(v["audio"], "");
}

/// The client's base64 text may stand in for the bytes: the decoder the gateway uses
/// accepts only canonical base64 (protocol::base64's tests), so text that decodes to
/// the bytes is their encoding.
#[test]
fn accepted_base64_is_the_encoding_of_its_bytes() {
    let msg = r#"{"type":"job_assign","job_id":"j"}"#;
    for len in 0..64usize {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        let text = base64::encode(&bytes);
        assert_eq!(base64::decode(text.as_bytes()), Ok(bytes.clone()));
        assert_eq!(
            with_audio(msg, Audio::Base64(&text)),
            with_audio(msg, Audio::Raw(&bytes))
        );
    }
}
