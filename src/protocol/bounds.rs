//! Bounds on the free-form fields peers send that Switchyard keeps or passes on. A
//! session's: a `session_init`'s are stored with the session and copied into every job it
//! cuts, a trace id stays on a job's record for `jobs.record_ttl_ms` after it ended;
//! unbounded, one frame would be multiplied by every small frame after it. A frame over a
//! bound is refused (`INVALID_MESSAGE`, naming the field) and changes nothing. A node's
//! failure: its code may not pose as the scheduler's, its message is kept to 1 KB.

use super::session::{JobOptions, SessionInit, Utterance};
use super::{valid_id, valid_lang};

/// `client_version`, `platform` (bytes).
pub const MAX_CLIENT_TEXT: usize = 128;
/// `dialect`, `mode`, an utterance's `audio_format` (bytes).
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

/// A language field, when given: a language code. `lang_a` / `lang_b` (only `two_way_auto`
/// routes by them) and `src_lang` / `tgt_lang` (only one-way routes by them) are kept with
/// the session and copied into every job either way.
fn lang(name: &str, v: Option<&str>) -> Result<(), String> {
    match v {
        Some(l) if !l.is_empty() && !valid_lang(l) => Err(format!(
            "{name} must be a language code (1-16 of [A-Za-z0-9_-])"
        )),
        _ => Ok(()),
    }
}

fn options(o: &JobOptions) -> Result<(), String> {
    text("dialect", o.dialect.as_deref(), MAX_OPTION_TEXT)?;
    text("mode", o.mode.as_deref(), MAX_OPTION_TEXT)?;
    lang("lang_a", o.lang_a.as_deref())?;
    lang("lang_b", o.lang_b.as_deref())?;
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

/// A `session_init` within the bounds, or why not. A resume that names no possible session
/// or index is refused, not taken for a new session.
pub fn session_init(i: &SessionInit) -> Result<(), String> {
    trace_id(i.trace_id.as_deref())?;
    if let Some(r) = i.resume_session_id.as_deref()
        && !r.is_empty()
        && !valid_id(r)
    {
        return Err("resume_session_id must be a session id (1-64 of [A-Za-z0-9_.-])".into());
    }
    if i.last_received_index.is_some_and(|l| l < -1) {
        return Err(
            "last_received_index must be an utterance index, or -1 when nothing was received"
                .into(),
        );
    }
    lang("src_lang", Some(&i.src_lang))?;
    lang("tgt_lang", Some(&i.tgt_lang))?;
    text("client_version", Some(&i.client_version), MAX_CLIENT_TEXT)?;
    text("platform", Some(&i.platform), MAX_CLIENT_TEXT)?;
    options(&i.options)
}

/// An `utterance` within the bounds, or why not.
pub fn utterance(u: &Utterance<'_>) -> Result<(), String> {
    trace_id(u.trace_id.as_deref())?;
    lang("src_lang", Some(u.src_lang.as_str()))?;
    lang("tgt_lang", Some(u.tgt_lang.as_str()))?;
    text("audio_format", u.audio_format.as_deref(), MAX_OPTION_TEXT)?;
    options(&u.options)
}

/// The codes a node's failure may not pass to a session: the scheduler's own, about the
/// session, the credential or routing (a node saying `SESSION_CLOSED` would mislead the
/// client). A node's failure carrying one of them, or a code that is not 1-64 of
/// `[A-Z0-9_]`, ends the job as `PROCESSING_ERROR`; its message keeps the node's words.
pub const SCHEDULER_CODES: &[&str] = &[
    "INVALID_MESSAGE",
    "INVALID_SESSION",
    "SESSION_CLOSED",
    "UNSUPPORTED_FEATURE",
    "INVALID_PAIRING_CODE",
    "NO_AVAILABLE_NODE",
    "NODE_ID_CONFLICT",
    "INVALID_CAPABILITY_SCHEMA",
    "SCHEDULER_DEPENDENCY_DOWN",
    "UNAUTHORIZED",
    "RATE_LIMITED",
];

/// The code a node's failed `job_result` ends its job with (see [`SCHEDULER_CODES`]).
pub fn failure_code(code: Option<&str>) -> &str {
    match code {
        Some(c)
            if !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !SCHEDULER_CODES.contains(&c) =>
        {
            c
        }
        _ => "PROCESSING_ERROR",
    }
}

/// A node's failure message as the job keeps it (its record, for `jobs.record_ttl_ms`, and
/// the session's `error`): at most [`MAX_FAILURE_MESSAGE`] bytes, cut at a character.
pub fn failure_message(message: &str) -> &str {
    cut(message, MAX_FAILURE_MESSAGE)
}

/// A node's `node_error` as it is logged: its code cut to 64 bytes and its message to
/// [`MAX_FAILURE_MESSAGE`], at a character. (Log them escaped, `str::escape_debug`: a
/// node's text cannot start a line of its own in a text log.)
pub fn node_error_text<'a>(code: &'a str, message: &'a str) -> (&'a str, &'a str) {
    (cut(code, 64), cut(message, MAX_FAILURE_MESSAGE))
}

/// The longest failure message of a node a job keeps (bytes).
pub const MAX_FAILURE_MESSAGE: usize = 1024;

/// The text of a node's `asr_partial` as the session gets it: at most
/// [`MAX_PARTIAL_TEXT`] bytes, cut at a character. A partial is not kept, but it is queued
/// for the session's socket (a queue counted in messages) and, for a session on another
/// instance, in that instance's inbox: a node sending 4 MiB partials grew an instance by a
/// gigabyte for one slow session (resource audit).
pub fn partial_text(text: &str) -> &str {
    cut(text, MAX_PARTIAL_TEXT)
}

/// The longest `asr_partial` text passed on (bytes): a sentence in progress is far shorter.
pub const MAX_PARTIAL_TEXT: usize = 4096;

/// `text`'s first `max` bytes at most, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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

    #[test]
    fn a_nodes_failure_code_is_its_own_or_processing_error() {
        assert_eq!(failure_code(Some("NMT_TIMEOUT")), "NMT_TIMEOUT");
        assert_eq!(failure_code(Some("ASR_FAILED_2")), "ASR_FAILED_2");
        for bad in [
            None,
            Some(""),
            Some("SESSION_CLOSED"),
            Some("RATE_LIMITED"),
            Some("a b"),
            Some("lower"),
            Some(&*"X".repeat(65)),
        ] {
            assert_eq!(failure_code(bad), "PROCESSING_ERROR", "{bad:?}");
        }
    }

    #[test]
    fn a_long_failure_message_is_cut_at_a_character() {
        let m = format!("{}é tail", "a".repeat(MAX_FAILURE_MESSAGE - 1));
        let cut = failure_message(&m);
        assert_eq!(
            cut.len(),
            MAX_FAILURE_MESSAGE - 1,
            "é would straddle the limit"
        );
        assert_eq!(failure_message("short"), "short");
    }
}
