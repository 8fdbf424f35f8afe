//! `decode` with the scan for `type` against decoding the envelope first (as it always
//! did): the same message or the same error for every frame.

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
