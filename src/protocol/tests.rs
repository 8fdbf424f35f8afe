//! `decode` with the scan for `type` against decoding the envelope first (as it always
//! did): the same message or the same error for every frame. And an utterance's audio,
//! borrowed from the frame, against the owned `String` it was: the same answers.

use proptest::prelude::*;

use super::node::NodeInbound;
use super::session::SessionInbound;
use super::*;

fn same(text: &str) {
    let (a, b) = (
        decode::<SessionInbound>(text),
        envelope_first::<SessionInbound>(text),
    );
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "session: {text}");
    let (a, b) = (
        decode::<NodeInbound>(text),
        envelope_first::<NodeInbound>(text),
    );
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "node: {text}");
}

const FIXTURES: [&str; 17] = [
    include_str!("../../tests/fixtures/lingua/asr_partial.json"),
    include_str!("../../tests/fixtures/lingua/audio_chunk.json"),
    include_str!("../../tests/fixtures/lingua/audio_chunk_final_empty.json"),
    include_str!("../../tests/fixtures/lingua/client_heartbeat.json"),
    include_str!("../../tests/fixtures/lingua/job_ack.json"),
    include_str!("../../tests/fixtures/lingua/job_result_empty.json"),
    include_str!("../../tests/fixtures/lingua/job_result_model_not_available.json"),
    include_str!("../../tests/fixtures/lingua/job_result_processing_error.json"),
    include_str!("../../tests/fixtures/lingua/job_result_success.json"),
    include_str!("../../tests/fixtures/lingua/node_heartbeat.json"),
    include_str!("../../tests/fixtures/lingua/node_register_first.json"),
    include_str!("../../tests/fixtures/lingua/node_register_reconnect.json"),
    include_str!("../../tests/fixtures/lingua/session_close.json"),
    include_str!("../../tests/fixtures/lingua/session_init_one_way.json"),
    include_str!("../../tests/fixtures/lingua/session_init_two_way.json"),
    include_str!("../../tests/fixtures/lingua/tts_play_ended.json"),
    include_str!("../../tests/fixtures/lingua/utterance.json"),
];

#[test]
fn the_lingua_fixtures_decode_as_before_and_without_the_envelope() {
    for f in FIXTURES {
        same(f);
        let t = top_level_type(f).expect("a plain type");
        let env: Envelope = strict::from_str(f).expect("an envelope");
        assert_eq!(t, env.kind);
        // the same frame with its keys sorted (type last, after the audio)
        let sorted = serde_json::from_str::<serde_json::Value>(f)
            .expect("JSON")
            .to_string();
        same(&sorted);
        assert_eq!(top_level_type(&sorted), Some(env.kind.as_str()));
    }
}

#[test]
fn odd_frames_get_the_same_answer() {
    let cases = [
        "",
        "{}",
        "[]",
        "null",
        r#"{"type":"utterance"}"#,
        r#"{"type":"utterance","type":"utterance"}"#,
        r#"{"typ\u0065":"client_heartbeat"}"#,
        r#"{"type":"client_heart\u0062eat"}"#,
        r#"{"type":"client_heartbeat"} {"#,
        r#"{"type":"client_heartbeat",}"#,
        r#"{"type":"client_heartbeat" "x":1}"#,
        r#"{"a":{"type":"job_ack"},"type":"client_heartbeat"}"#,
        r#"{"a":"\"type\":\"x\"","b":[1,{"c":"]}"}],"type":"client_heartbeat","z":-1.5e3}"#,
        r#"{"x":"\\","type":"client_heartbeat"}"#,
        r#"{"x":"a\\\"b","type":"client_heartbeat","session_id":null}"#,
        r#"{"type":7}"#,
        r#"{"type":"room_join"}"#,
        r#"{"type":"job_ack","job_id":"j","attempt_id":1}"#,
        r#"{"type":"job_ack","job_id":"j","attempt_id":"1"}"#,
        r#"{"type":"job_ack","job_id":"j","attempt_id":1,"attempt_id":2}"#,
        r#" { "type" : "client_heartbeat" , "timestamp" : 5 } "#,
        r#"{"x":]"type":"client_heartbeat"}"#,
        r#"{"x":}"#,
        r#"{"x":[}],"type":"client_heartbeat"}"#,
        r#"{"type":"client_heartbeat","x":"unterminated}"#,
    ];
    for c in cases {
        same(c);
    }
}

fn member() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "type",
        "session_id",
        "job_id",
        "attempt_id",
        "timestamp",
        "x",
        "typ\\u0065",
        "a\\\"b",
    ]);
    let value = prop::sample::select(vec![
        "\"client_heartbeat\"",
        "\"job_ack\"",
        "\"utterance\"",
        "\"s\"",
        "1",
        "-2.5e1",
        "null",
        "[1,{\"type\":\"job_ack\"}]",
        "{\"a\":\"]}\\\"\"}",
        "\"\\\\\"",
        "true",
        "\"job_\\u0061ck\"",
        "{",
        "]",
        "",
    ]);
    (key, value, prop::sample::select(vec!["", " ", "\n"]))
        .prop_map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
}

proptest! {
    #[test]
    fn random_frames_get_the_same_answer(
        members in prop::collection::vec(member(), 0..6),
        tail in prop::sample::select(vec!["}", "", "}x", ",}"]),
    ) {
        same(&format!("{{{}{tail}", members.join(",")));
    }
}

/// `Utterance` as it was before its audio was borrowed (`String`): the reference for the
/// accept/refuse answers and error texts of the borrowing decoder.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct OwnedUtterance {
    #[serde(default)]
    session_id: Option<String>,
    utterance_index: u64,
    #[serde(default, deserialize_with = "null_default")]
    manual_cut: bool,
    src_lang: String,
    tgt_lang: String,
    audio: String,
    #[serde(default)]
    audio_format: Option<String>,
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(flatten)]
    options: session::JobOptions,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    pipeline: Option<session::Pipeline>,
}

#[test]
fn an_utterances_audio_is_borrowed_from_the_frame_and_refused_as_before() {
    use std::borrow::Cow;
    let frame = |audio: &str| {
        format!(
            r#"{{"type":"utterance","utterance_index":1,"src_lang":"zh","tgt_lang":"en","audio":{audio},"mode":"one_way"}}"#
        )
    };
    let text = frame(r#""AAEC/w==""#);
    let Ok(SessionInbound::Utterance(u)) = decode::<SessionInbound>(&text) else {
        panic!("an utterance");
    };
    assert!(matches!(u.audio, Cow::Borrowed("AAEC/w==")));
    // an escape in the text: an owned copy, unescaped
    let text = frame(r#""AAEC\/w==""#);
    let Ok(SessionInbound::Utterance(u)) = decode::<SessionInbound>(&text) else {
        panic!("an utterance");
    };
    assert!(matches!(u.audio, Cow::Owned(ref a) if a == "AAEC/w=="));
    for audio in [
        r#""AAEC/w==""#,
        r#""\u0041""#,
        "5",
        "null",
        "[]",
        "{}",
        r#""\ud800""#,
    ] {
        let text = frame(audio);
        let owned = strict::from_str::<OwnedUtterance>(&text).map(|o| o.audio);
        let borrowed = decode::<SessionInbound>(&text).map(|m| match m {
            SessionInbound::Utterance(u) => u.audio.into_owned(),
            _ => String::new(),
        });
        match (owned, borrowed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(
                format!("malformed utterance: {a}"),
                b.to_string(),
                "{audio}"
            ),
            (a, b) => panic!("{audio}: {a:?} vs {b:?}"),
        }
    }
    // and without the member at all
    let text = r#"{"type":"utterance","utterance_index":1,"src_lang":"zh","tgt_lang":"en"}"#;
    let owned = strict::from_str::<OwnedUtterance>(text).map(|_| ());
    let borrowed = decode::<SessionInbound>(text).map(|_| ());
    assert_eq!(
        owned.map_err(|e| format!("malformed utterance: {e}")),
        borrowed.map_err(|e| e.to_string())
    );
}

#[test]
fn a_dropped_frame_is_peeked_for_an_utterance_index_only() {
    use super::session::utterance_index_of as peek;
    assert_eq!(
        peek(r#"{"type":"utterance","utterance_index":7,"audio":"AAAA"}"#),
        Some(7)
    );
    assert_eq!(peek(r#"{"utterance_index":7,"type":"utterance"}"#), Some(7));
    // another type, no index, a wrong type of index, not JSON, a repeated key: nothing
    assert_eq!(peek(r#"{"type":"audio_chunk","utterance_index":7}"#), None);
    assert_eq!(peek(r#"{"type":"utterance"}"#), None);
    assert_eq!(peek(r#"{"type":"utterance","utterance_index":"7"}"#), None);
    assert_eq!(peek(r#"{"type":"utterance","utterance_index":-1}"#), None);
    assert_eq!(peek("{not json"), None);
    assert_eq!(
        peek(r#"{"type":"utterance","utterance_index":1,"utterance_index":2}"#),
        None
    );
}
