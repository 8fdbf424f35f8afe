use serde::Deserialize;

use super::*;

#[derive(Debug, Default, Deserialize, PartialEq)]
struct Inner {
    #[serde(default)]
    a: Option<f64>,
    #[serde(default)]
    b: Option<f64>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Outer {
    #[serde(default)]
    inner: Option<Inner>,
    #[serde(default)]
    list: Vec<Inner>,
    #[serde(default)]
    any: Option<serde_json::Value>,
    #[serde(default)]
    n: Option<u32>,
}

#[test]
fn plain_serde_json_reads_a_struct_from_an_array_strict_does_not() {
    let text = r#"{"inner": [91.5, 12.0]}"#;
    let lenient: Outer = serde_json::from_str(text).expect("serde_json is lenient");
    assert_eq!(lenient.inner.map(|i| i.a), Some(Some(91.5)));
    let e = from_str::<Outer>(text).expect_err("strict refuses");
    assert_eq!(e.path, "inner");
    assert!(e.reason.contains("invalid type: sequence"), "{e}");
}

#[test]
fn the_path_names_nested_fields_and_elements() {
    let e = from_str::<Outer>(r#"{"list": [{"a": 1}, [2, 3]]}"#).expect_err("refused");
    assert_eq!(e.path, "list[1]");
    let e = from_str::<Outer>(r#"{"list": [{"a": "x"}]}"#).expect_err("refused");
    assert_eq!(e.path, "list[0].a");
    let e = from_str::<Outer>(r#"{"n": "7"}"#).expect_err("refused");
    assert_eq!(e.path, "n");
    assert_eq!(e.to_string().split(':').next(), Some("field `n`"));
}

#[test]
fn unknown_fields_nulls_arrays_and_values_stay_accepted() {
    let v: Outer = from_str(
        r#"{"inner": null, "list": [{"a": 1, "zzz": [1]}], "any": [[1], {"x": [2]}],
            "n": null, "extra": {"deep": [1, 2]}}"#,
    )
    .expect("accepted");
    assert_eq!(v.inner, None);
    assert_eq!(v.list[0].a, Some(1.0));
    assert_eq!(v.any, Some(serde_json::json!([[1], {"x": [2]}])));
}

#[test]
fn a_top_level_array_and_trailing_garbage_are_refused() {
    assert!(from_str::<Outer>("[null, [], null, 1]").is_err());
    assert!(from_str::<Outer>("{} x").is_err());
    assert!(from_str::<Outer>("{}").is_ok());
}

#[test]
fn a_lone_surrogate_in_an_ignored_field_passes_as_with_plain_serde_json() {
    // fuzz/decode_node finding (in the harness's oracle, not the decoder): serde_json checks
    // only the syntax of values it skips, so an unknown field may hold "\udf48"; strict
    // decoding skips it the same way, while reading it into a `Value` fails.
    let text = r#"{"n": 1, "unknown": {"k\udf48": 0}}"#;
    assert!(serde_json::from_str::<serde_json::Value>(text).is_err());
    let lenient: Outer = serde_json::from_str(text).expect("serde_json skips it");
    let strict: Outer = from_str(text).expect("so does strict");
    assert_eq!(lenient, strict);
}

/// `from_str` skips the path tracking unless the frame fails: both ways agree on every
/// frame, value and error alike.
#[test]
fn the_untracked_first_pass_agrees_with_the_tracked_decoding() {
    let frames = [
        r#"{"inner": {"a": 1, "b": 2}, "list": [{"a": 3}], "any": [1, {"x": null}], "n": 4}"#,
        r#"{"inner": null, "n": null}"#,
        r#"{}"#,
        r#"{"inner": [91.5, 12.0]}"#,
        r#"{"list": [{"a": 1}, [2, 3]]}"#,
        r#"{"n": -1}"#,
        r#"{"n": 1} x"#,
        r#"{"n": 1"#,
        r#"[]"#,
        r#"{"unknown": {"deep": [1, 2, {"a": "b"}]}, "n": 7}"#,
        "",
    ];
    for f in frames {
        assert_eq!(from_str::<Outer>(f), tracked::<Outer>(f), "{f}");
    }
}
