//! The one-pass reader against the decoding it replaced (the derive with a flattened
//! `Value` map, then the message built from that map): same acceptance, same error, same
//! message bytes.

use proptest::prelude::*;

use super::*;

/// The previous decoding, kept here as the reference.
mod reference {
    use serde_json::{Map, Value};

    use super::super::super::node::ResultBody;
    use super::super::super::strict::{FieldError, from_str};
    // the derive with the flattened map, which the fast reader falls back to
    use super::super::slow::JobResult;

    fn ms_value(v: &Value) -> Option<u64> {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .filter(|ms| *ms <= 1 << 53)
    }

    fn translation_result(mut m: Map<String, Value>) -> String {
        for key in [
            "type",
            "session_id",
            "utterance_index",
            "job_id",
            "trace_id",
            "node_id",
            "group_id",
            "part_index",
            "network_timings",
            "scheduler_sent_at_ms",
        ] {
            m.remove(key);
        }
        m.insert("type".into(), "translation_result".into());
        for (key, default) in [
            ("text_asr", ""),
            ("text_translated", ""),
            ("tts_audio", ""),
            ("tts_format", "opus"),
        ] {
            if m.get(key).is_none_or(Value::is_null) {
                m.insert(key.into(), default.into());
            }
        }
        if let Some(t) = m
            .get("extra")
            .and_then(|e| e.get("service_timings"))
            .cloned()
        {
            m.entry("service_timings").or_insert(t);
        }
        Value::Object(m).to_string()
    }

    /// (the decoded frame, its body when a success)
    pub fn decode(text: &str) -> Result<(JobResult, ResultBody), FieldError> {
        let mut r: JobResult = from_str(text)?;
        r.rest.remove("type");
        let rest = std::mem::take(&mut r.rest);
        let body = if r.success {
            let text = |k: &str| {
                let t = rest.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                t.trim().to_string()
            };
            let ms = |k: &str| rest.get(k).and_then(ms_value);
            ResultBody {
                text_asr: text("text_asr"),
                text_translated: text("text_translated"),
                node_completed_at_ms: ms("node_completed_at_ms"),
                processing_time_ms: ms("processing_time_ms"),
                message: translation_result(rest),
            }
        } else {
            ResultBody::default()
        };
        Ok((r, body))
    }
}

/// Both decoders agree on `text`; returns whether it was accepted.
fn same(text: &str) -> bool {
    let new = decode(text);
    match reference::decode(text) {
        Ok((old, body)) => {
            let new = new.unwrap_or_else(|e| panic!("refused {text:?}: {e}"));
            assert_eq!(new.job_id, old.job_id, "{text}");
            assert_eq!(new.attempt_id, old.attempt_id, "{text}");
            assert_eq!(new.node_id, old.node_id, "{text}");
            assert_eq!(new.session_id, old.session_id, "{text}");
            assert_eq!(new.utterance_index, old.utterance_index, "{text}");
            assert_eq!(new.success, old.success, "{text}");
            assert_eq!(new.trace_id, old.trace_id, "{text}");
            assert_eq!(
                format!("{:?}", new.error),
                format!("{:?}", old.error),
                "{text}"
            );
            assert_eq!(new.body, body, "{text}");
            assert!(fast(text).is_some(), "only the slow path accepts {text}");
            true
        }
        Err(e) => {
            assert_eq!(new.err(), Some(e), "{text}");
            false
        }
    }
}

#[test]
fn a_lingua_result_is_passed_on_as_before() {
    let text = r#"{"type": "job_result", "job_id": "job-1", "attempt_id": 1, "node_id": "n",
        "session_id": "s", "utterance_index": 3, "success": true, "trace_id": "t",
        "text_asr": "  我们开始测试 ", "text_translated": "Let's test", "tts_audio": "b3B1cw==",
        "tts_format": "pcm16", "processing_time_ms": 812.5, "node_completed_at_ms": 1700000000000,
        "extra": {"service_timings": {"asr_ms": 1, "nmt_ms": 2.0, "total_ms": 1e3}, "x": [1, 2]},
        "quality": {"asr": 0.91}, "group_id": "g", "network_timings": {"a": 1}}"#;
    assert!(same(text));
    let r = decode(text).expect("decodes");
    assert_eq!(r.body.text_asr, "我们开始测试");
    assert_eq!(
        (r.body.processing_time_ms, r.body.node_completed_at_ms),
        (Some(812), Some(1_700_000_000_000))
    );
    let m: Value = serde_json::from_str(&r.body.message).expect("JSON");
    assert_eq!(m["type"], "translation_result");
    assert_eq!(m["service_timings"]["total_ms"], 1000.0);
    assert!(m.get("group_id").is_none() && m.get("job_id").is_none());
}

/// A node's `null` for the four members the client always gets is their default, as an
/// absent one is: the web client builds its decoder from `tts_format` (protocol audit;
/// before, `"tts_format":null` reached it).
#[test]
fn null_text_and_audio_members_are_their_defaults() {
    let text = r#"{"job_id":"j","attempt_id":1,"success":true,"text_asr":null,
        "text_translated":null,"tts_audio":null,"tts_format":null}"#;
    assert!(same(text));
    let m: Value =
        serde_json::from_str(&decode(text).expect("decodes").body.message).expect("JSON");
    assert_eq!(
        (
            &m["text_asr"],
            &m["text_translated"],
            &m["tts_audio"],
            &m["tts_format"]
        ),
        (
            &serde_json::json!(""),
            &serde_json::json!(""),
            &serde_json::json!(""),
            &serde_json::json!("opus")
        ),
        "{m}"
    );
}

/// Audit finding: a timing beyond 2^53 reached the script, whose `%d` wrapped it into a
/// negative `scheduler_to_node_ms`. Such a value is now absent, as a negative one is.
#[test]
fn a_timing_beyond_what_the_script_counts_exactly_is_absent() {
    for (v, want) in [
        ("1e300", None),
        ("18446744073709551615", None),
        ("9007199254740993", None),
        ("9007199254740992", Some(1u64 << 53)),
        ("1700000000000.5", Some(1_700_000_000_000)),
    ] {
        let text = format!(
            r#"{{"job_id":"j","attempt_id":1,"success":true,"node_completed_at_ms":{v},"processing_time_ms":{v}}}"#
        );
        let b = decode(&text).expect("decodes").body;
        assert_eq!(
            (b.node_completed_at_ms, b.processing_time_ms),
            (want, want),
            "{v}"
        );
    }
}

#[test]
fn edge_cases_decode_as_before() {
    let cases = [
        r#"{"job_id":"j","attempt_id":1,"success":true}"#,
        r#"{"job_id":"j","attempt_id":1,"success":false,"error":{"code":"X","message":"m"}}"#,
        r#"{"job_id":"j","attempt_id":1,"success":false,"error":null}"#,
        r#"{"job_id":"j","attempt_id":1,"success":false,"error":["X","m"]}"#,
        r#"{"job_id":"j","attempt_id":1,"success":false,"error":{"code":null,"details":{"service_id":"nmt"}}}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"job_id":"k"}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"tts_audio":"a","tts_audio":"b"}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"text_asr":"a\"b\u00e9\/"}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"text_asr":"\ud800"}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"te\u0078t_asr":"x","job\u005fid":"j"}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"tts_audio":1e400}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"n":-0,"f":1.50,"g":1E2,"h":18446744073709551616}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"extra":"s","service_timings":null}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"extra":{"service_timings":null}}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"processing_time_ms":-5,"node_completed_at_ms":"7"}"#,
        r#"{"job_id":"j","attempt_id":1.0,"success":true}"#,
        r#"{"job_id":"j","attempt_id":"1","success":true}"#,
        r#"{"job_id":"j","attempt_id":4294967296,"success":true}"#,
        r#"{"job_id":7,"attempt_id":1,"success":true}"#,
        r#"{"job_id":"j","attempt_id":1,"success":"yes"}"#,
        r#"{"job_id":"j","attempt_id":1}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"node_id":null,"trace_id":null,"utterance_index":null}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"utterance_index":-1}"#,
        r#"{"job_id":"j","attempt_id":1,"success":true} x"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,}"#,
        r#"["j",1,true]"#,
        r#"{"job_id":"j","attempt_id":1,"success":true,"type":"job_result","a":{"b" : [ 1 , {"c":"d"} ]}}"#,
        "{\"job_id\":\"j\",\"attempt_id\":1,\"success\":true,\"t\":\"a\tb\"}",
        " \n{\"job_id\":\"j\",\"attempt_id\":1,\"success\":true}\n ",
        r#"{"job_id":"j","attempt_id":1,"success":true,"":"","é":"ü"}"#,
    ];
    for c in cases {
        same(c);
    }
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        Just("1.250".to_string()),
        Just("2e3".to_string()),
        "[a-z \\\\\"/é]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        "[A-Za-z0-9+/=]{0,40}".prop_map(|s| format!("\"{s}\"")),
        Just(r#""\u00e9\n""#.to_string()),
    ]
}

fn value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(" , "))),
            prop::collection::vec(("[a-z_]{1,4}", inner), 0..3).prop_map(|v| {
                let m: Vec<String> = v.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                format!("{{{}}}", m.join(","))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "job_id",
            "attempt_id",
            "success",
            "node_id",
            "session_id",
            "utterance_index",
            "trace_id",
            "error",
            "text_asr",
            "text_translated",
            "tts_audio",
            "tts_format",
            "extra",
            "service_timings",
            "processing_time_ms",
            "node_completed_at_ms",
            "group_id",
            "network_timings",
            "quality",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,6}",
    ]
}

proptest! {
    #[test]
    fn random_results_decode_as_before(
        members in prop::collection::vec((key(), value()), 0..10),
        base in any::<bool>(),
        ok in any::<bool>(),
    ) {
        let mut m: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        if base {
            m.insert(0, format!(r#""job_id":"j","attempt_id":2,"success":{ok}"#));
        }
        same(&format!("{{{}}}", m.join(",")));
    }
}
