//! Bounds on the free-form fields of a session's frames that Switchyard keeps: a
//! `session_init`'s are stored with the session and copied into every job it cuts, a trace
//! id stays on a job's record for `jobs.record_ttl_ms` after it ended. Unbounded, one frame
//! would be multiplied by every small frame after it. A frame over a bound is refused
//! (`INVALID_MESSAGE`, naming the field) and changes nothing.

use super::session::{JobOptions, SessionInit, Utterance};
use super::{valid_id, valid_lang};

/// `client_version`, `platform` (bytes).
pub const MAX_CLIENT_TEXT: usize = 128;
/// `dialect`, `mode` (bytes).
pub const MAX_OPTION_TEXT: usize = 32;
/// Language codes in `auto_langs`.
pub const MAX_AUTO_LANGS: usize = 16;
/// `features`, as JSON text (bytes).
pub const MAX_FEATURES: usize = 2048;

/// A client's trace id, if it sent one: 1-64 of `[A-Za-z0-9_.-]` (a W3C trace id is 32 hex
/// digits; empty means none, and one is made).
fn trace_id(t: Option<&str>) -> Result<(), String> {
    match t {
        Some(t) if !t.is_empty() && !valid_id(t) => {
            Err("trace_id must be 1-64 of [A-Za-z0-9_.-] (32 hex digits for W3C)".into())
        }
        _ => Ok(()),
    }
}

fn text(name: &str, v: Option<&str>, max: usize) -> Result<(), String> {
    match v {
        Some(v) if v.len() > max => Err(format!("{name} must be at most {max} bytes")),
        _ => Ok(()),
    }
}

fn options(o: &JobOptions) -> Result<(), String> {
    text("dialect", o.dialect.as_deref(), MAX_OPTION_TEXT)?;
    text("mode", o.mode.as_deref(), MAX_OPTION_TEXT)?;
    if let Some(langs) = &o.auto_langs
        && (langs.len() > MAX_AUTO_LANGS || !langs.iter().all(|l| valid_lang(l)))
    {
        return Err(format!(
            "auto_langs must be at most {MAX_AUTO_LANGS} language codes (1-16 of [A-Za-z0-9_-])"
        ));
    }
    if let Some(f) = &o.features
        && serde_json::to_string(f).map_or(true, |s| s.len() > MAX_FEATURES)
    {
        return Err(format!(
            "features must be at most {MAX_FEATURES} bytes of JSON"
        ));
    }
    Ok(())
}

/// A `session_init` within the bounds, or why not.
pub fn session_init(i: &SessionInit) -> Result<(), String> {
    trace_id(i.trace_id.as_deref())?;
    text("client_version", Some(&i.client_version), MAX_CLIENT_TEXT)?;
    text("platform", Some(&i.platform), MAX_CLIENT_TEXT)?;
    options(&i.options)
}

/// An `utterance` within the bounds, or why not.
pub fn utterance(u: &Utterance<'_>) -> Result<(), String> {
    trace_id(u.trace_id.as_deref())?;
    options(&u.options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode;
    use crate::protocol::session::SessionInbound;

    fn init(extra: &str) -> Result<(), String> {
        let text = format!(
            r#"{{"type":"session_init","client_version":"web-client-v1.0","platform":"web","src_lang":"zh","tgt_lang":"en"{extra}}}"#
        );
        match decode::<SessionInbound>(&text).expect("decodes") {
            SessionInbound::SessionInit(i) => session_init(&i),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lingua_session_inits_are_within_the_bounds() {
        assert_eq!(init(r#","features":{},"mode":"one_way""#), Ok(()));
        assert_eq!(
            init(
                r#","mode":"two_way_auto","auto_langs":["zh","en"],"trace_id":"5b0c2f7e9a1d4c3b8e6f0a2b4c6d8e0f""#
            ),
            Ok(())
        );
        assert_eq!(init(r#","trace_id":"""#), Ok(()), "empty: one is made");
    }

    #[test]
    fn fields_over_their_bounds_are_named() {
        let long = "x".repeat(MAX_FEATURES);
        for (extra, field) in [
            (format!(r#","trace_id":"{}""#, "a".repeat(65)), "trace_id"),
            (r#","trace_id":"a b""#.to_string(), "trace_id"),
            (format!(r#","dialect":"{}""#, "d".repeat(33)), "dialect"),
            (format!(r#","mode":"{}""#, "m".repeat(33)), "mode"),
            (r#","auto_langs":["zh","x:y"]"#.to_string(), "auto_langs"),
            (
                format!(r#","auto_langs":[{}"en"]"#, r#""zh","#.repeat(16)),
                "auto_langs",
            ),
            (format!(r#","features":{{"k":"{long}"}}"#), "features"),
        ] {
            let e = init(&extra).expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}
