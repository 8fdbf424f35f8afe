//! Session ↔ scheduler messages (PROTOCOL.md "Session ↔ scheduler").

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::strict::{FieldError, from_str};
use super::{Inbound, null_default};

/// Every message type a session may send that Switchyard handles.
pub const SESSION_TYPES: &[&str] = &[
    "session_init",
    "audio_chunk",
    "utterance",
    "client_heartbeat",
    "session_close",
    "tts_started",
    "tts_play_ended",
];

/// Old-system features Switchyard answers with `UNSUPPORTED_FEATURE`.
pub fn unsupported(kind: &str) -> bool {
    kind.starts_with("room_") || kind.starts_with("webrtc_")
}

/// A decoded session frame; `'a` is the frame's text, which an utterance's audio borrows.
#[derive(Debug)]
pub enum SessionInbound<'a> {
    SessionInit(Box<SessionInit>),
    AudioChunk(AudioChunk),
    Utterance(Box<Utterance<'a>>),
    ClientHeartbeat(SessionRef),
    SessionClose(SessionRef),
    TtsStarted(SessionRef),
    TtsPlayEnded(SessionRef),
}

/// Fields a job takes from the session or the utterance, passed on in `job_assign`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct JobOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang_a: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang_b: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_langs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_streaming_asr: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_update_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct SessionInit {
    pub client_version: String,
    pub platform: String,
    pub src_lang: String,
    pub tgt_lang: String,
    #[serde(flatten)]
    pub options: JobOptions,
    #[serde(default)]
    pub pairing_code: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Switchyard extension: reattach to a live session after a reconnect.
    #[serde(default)]
    pub resume_session_id: Option<String>,
    #[serde(default)]
    pub last_received_index: Option<i64>,
    /// Switchyard extension: the secret the session's last `session_init_ack` carried;
    /// without it a resume is refused (`UNAUTHORIZED`).
    #[serde(default)]
    pub resume_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AudioChunk {
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub is_final: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub payload: String,
    #[serde(default)]
    pub client_timestamp_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct Pipeline {
    #[serde(default = "yes")]
    pub use_asr: bool,
    #[serde(default = "yes")]
    pub use_nmt: bool,
    #[serde(default = "yes")]
    pub use_tts: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_semantic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_tone: Option<bool>,
}

fn yes() -> bool {
    true
}

impl Pipeline {
    /// The service types this pipeline uses, in a fixed order: each must be ready on the
    /// node a job of it runs on (PROTOCOL.md "Pool rule").
    pub fn services(&self) -> Vec<&'static str> {
        [
            (self.use_asr, "asr"),
            (self.use_nmt, "nmt"),
            (self.use_tts, "tts"),
            (self.use_semantic == Some(true), "semantic"),
            (self.use_tone == Some(true), "tone"),
        ]
        .into_iter()
        .filter_map(|(on, s)| on.then_some(s))
        .collect()
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            use_asr: true,
            use_nmt: true,
            use_tts: true,
            use_semantic: None,
            use_tone: None,
        }
    }
}

/// The `utterance_index` of a frame that is an `utterance`, read without validating the rest
/// (what a frame dropped unread was about). None for any other frame or a malformed one.
pub fn utterance_index_of(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        utterance_index: Option<u64>,
    }
    let p: Peek = serde_json::from_str(text).ok()?;
    p.utterance_index
        .filter(|_| p.kind.as_deref() == Some("utterance"))
}

#[derive(Debug, Deserialize)]
pub struct Utterance<'a> {
    #[serde(default)]
    pub session_id: Option<String>,
    pub utterance_index: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub manual_cut: bool,
    pub src_lang: String,
    pub tgt_lang: String,
    /// The base64 text (~11 KB), borrowed from the frame unless it has a JSON escape.
    #[serde(borrow)]
    pub audio: Cow<'a, str>,
    #[serde(default)]
    pub audio_format: Option<String>,
    #[serde(default)]
    pub sample_rate: Option<u32>,
    #[serde(flatten)]
    pub options: JobOptions,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub pipeline: Option<Pipeline>,
}

/// Messages that only name their session (heartbeat, close, playback events).
#[derive(Debug, Deserialize)]
pub struct SessionRef {
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
    /// `tts_started` / `tts_play_ended`: the utterance group whose playback it reports.
    #[serde(default)]
    pub group_id: Option<String>,
}

impl<'a> Inbound<'a> for SessionInbound<'a> {
    const TYPES: &'static [&'static str] = SESSION_TYPES;

    fn from_kind(kind: &str, text: &'a str) -> Result<Self, FieldError> {
        Ok(match kind {
            "session_init" => Self::SessionInit(with_options(text)?),
            "audio_chunk" => Self::AudioChunk(from_str(text)?),
            "utterance" => Self::Utterance(with_options(text)?),
            "client_heartbeat" => Self::ClientHeartbeat(from_str(text)?),
            "session_close" => Self::SessionClose(from_str(text)?),
            "tts_started" => Self::TtsStarted(from_str(text)?),
            "tts_play_ended" => Self::TtsPlayEnded(from_str(text)?),
            other => {
                return Err(FieldError {
                    path: "type".into(),
                    reason: format!("unknown message type {other:?}"),
                });
            }
        })
    }
}

/// Decode a message with flattened [`JobOptions`]. serde reads a flattened struct from a
/// buffer that has lost the field path, so a bad option is looked up again on its own (on
/// the error path only) to name it.
fn with_options<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, FieldError> {
    from_str::<T>(text).map_err(|e| {
        if e.path.is_empty() {
            from_str::<JobOptions>(text).err().unwrap_or(e)
        } else {
            e
        }
    })
}

impl SessionInbound<'_> {
    /// The message type, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionInbound::SessionInit(_) => "session_init",
            SessionInbound::AudioChunk(_) => "audio_chunk",
            SessionInbound::Utterance(_) => "utterance",
            SessionInbound::ClientHeartbeat(_) => "client_heartbeat",
            SessionInbound::SessionClose(_) => "session_close",
            SessionInbound::TtsStarted(_) => "tts_started",
            SessionInbound::TtsPlayEnded(_) => "tts_play_ended",
        }
    }

    /// The `session_id` the message names (session_init names none).
    pub fn session_id(&self) -> Option<&str> {
        match self {
            SessionInbound::SessionInit(_) => None,
            SessionInbound::AudioChunk(m) => m.session_id.as_deref(),
            SessionInbound::Utterance(m) => m.session_id.as_deref(),
            SessionInbound::ClientHeartbeat(m)
            | SessionInbound::SessionClose(m)
            | SessionInbound::TtsStarted(m)
            | SessionInbound::TtsPlayEnded(m) => m.session_id.as_deref(),
        }
    }
}

/// The job_assign template of a job: everything except job_id, attempt_id and audio.
#[derive(Debug, Serialize)]
pub struct JobSpec<'a> {
    pub src_lang: &'a str,
    pub tgt_lang: &'a str,
    pub pipeline: Pipeline,
    pub audio_format: &'a str,
    pub sample_rate: u32,
    #[serde(flatten)]
    pub options: &'a JobOptions,
}

impl JobSpec<'_> {
    /// The template of an utterance's job as JSON, its members in sorted order (as they
    /// came out when the template was built through a `serde_json::Value` map: the same
    /// bytes, without the tree), with `"is_manual_cut":true` for a manual cut.
    pub fn to_sorted_json(&self, manual_cut: bool) -> String {
        /// `Pipeline`'s members, sorted.
        #[derive(Serialize)]
        struct SortedPipeline {
            use_asr: bool,
            use_nmt: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            use_semantic: Option<bool>,
            #[serde(skip_serializing_if = "Option::is_none")]
            use_tone: Option<bool>,
            use_tts: bool,
        }
        /// `JobSpec`'s members and its options', sorted.
        #[derive(Serialize)]
        struct Sorted<'a> {
            audio_format: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            auto_langs: &'a Option<Vec<String>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dialect: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            enable_streaming_asr: &'a Option<bool>,
            #[serde(skip_serializing_if = "Option::is_none")]
            features: &'a Option<Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            is_manual_cut: Option<bool>,
            #[serde(skip_serializing_if = "Option::is_none")]
            lang_a: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            lang_b: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            mode: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            partial_update_interval_ms: &'a Option<u64>,
            pipeline: SortedPipeline,
            sample_rate: u32,
            src_lang: &'a str,
            tgt_lang: &'a str,
        }
        let (o, p) = (self.options, self.pipeline);
        let sorted = Sorted {
            audio_format: self.audio_format,
            auto_langs: &o.auto_langs,
            dialect: &o.dialect,
            enable_streaming_asr: &o.enable_streaming_asr,
            features: &o.features,
            is_manual_cut: manual_cut.then_some(true),
            lang_a: &o.lang_a,
            lang_b: &o.lang_b,
            mode: &o.mode,
            partial_update_interval_ms: &o.partial_update_interval_ms,
            pipeline: SortedPipeline {
                use_asr: p.use_asr,
                use_nmt: p.use_nmt,
                use_semantic: p.use_semantic,
                use_tone: p.use_tone,
                use_tts: p.use_tts,
            },
            sample_rate: self.sample_rate,
            src_lang: self.src_lang,
            tgt_lang: self.tgt_lang,
        };
        serde_json::to_string(&sorted).unwrap_or_else(|_| "null".into())
    }
}

/// Duration of a streamed `audio_chunk` payload, for the cut rules: PROTOCOL's stream of
/// Opus packets, each after its length as two little-endian bytes, is 20 ms a packet; a
/// payload that is not such a stream is estimated by its size ([`estimate_ms`]). By size,
/// quiet speech read short: the lingua web client's ~250 ms chunks are 300–1,000 bytes (12
/// or 13 packets), 100–330 ms at 60 bytes a frame, so a short quiet word could fall under
/// `session.min_cut_ms` and make no job, and quiet phrases ran past `max_duration_ms`
/// (protocol audit).
pub fn stream_ms(payload: &[u8]) -> u64 {
    /// The largest Opus packet (RFC 6716 §3.2.1).
    const MAX_PACKET: usize = 1275;
    let (mut at, mut packets) = (0usize, 0u64);
    while let Some(len) = payload.get(at..at + 2) {
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        if len == 0 || len > MAX_PACKET {
            break;
        }
        at += 2 + len;
        packets += 1;
    }
    if at == payload.len() {
        packets * 20
    } else {
        estimate_ms("opus", payload.len())
    }
}

/// Estimated duration of an audio payload by its size, for the cut rules: Opus ≈ 60 bytes
/// per 20 ms frame; PCM16 at 16 kHz mono = 32 bytes per ms.
pub fn estimate_ms(format: &str, bytes: usize) -> u64 {
    let bytes = bytes as u64;
    if format.eq_ignore_ascii_case("pcm16") || format.eq_ignore_ascii_case("pcm") {
        bytes / 32
    } else {
        // 20 ms per 60 bytes, i.e. bytes / 3 exactly, without `bytes * 20` overflowing
        // (a fuzz finding: usize::MAX / 10 bytes panicked in debug builds)
        bytes / 3
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{JobOptions, JobSpec, Pipeline, estimate_ms, stream_ms};

    /// How the template was built before `to_sorted_json`: through a `Value` map.
    fn through_value(spec: &JobSpec, manual_cut: bool) -> String {
        let mut v = serde_json::to_value(spec).unwrap_or_default();
        if manual_cut {
            v["is_manual_cut"] = serde_json::json!(true);
        }
        v.to_string()
    }

    fn opt<T: std::fmt::Debug + Clone>(
        s: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        prop::option::of(s)
    }

    proptest! {
        #[test]
        fn the_sorted_template_is_the_one_a_value_map_wrote(
            flags in (any::<bool>(), any::<bool>(), any::<bool>(), opt(any::<bool>()), opt(any::<bool>())),
            dialect in opt("[a-z\\\"é]{0,4}"),
            mode in opt(prop::sample::select(vec!["one_way", "two_way_auto"])),
            langs in (opt("[a-z]{2}"), opt("[a-z]{2}"), opt(prop::collection::vec("[a-z]{2}", 0..3))),
            streaming in (opt(any::<bool>()), opt(any::<u64>())),
            features in opt(prop::sample::select(vec![
                serde_json::json!({"b": 1, "a": [true, null, 2.5], "c": {"z": "x", "y": -1}}),
                serde_json::json!([]),
                serde_json::json!("f"),
            ])),
            rate in any::<u32>(),
            manual_cut in any::<bool>(),
        ) {
            let options = JobOptions {
                dialect,
                features,
                mode: mode.map(str::to_string),
                lang_a: langs.0,
                lang_b: langs.1,
                auto_langs: langs.2,
                enable_streaming_asr: streaming.0,
                partial_update_interval_ms: streaming.1,
            };
            let spec = JobSpec {
                src_lang: "zh",
                tgt_lang: "en",
                pipeline: Pipeline {
                    use_asr: flags.0,
                    use_nmt: flags.1,
                    use_tts: flags.2,
                    use_semantic: flags.3,
                    use_tone: flags.4,
                },
                audio_format: "opus",
                sample_rate: rate,
                options: &options,
            };
            prop_assert_eq!(spec.to_sorted_json(manual_cut), through_value(&spec, manual_cut));
        }
    }

    #[test]
    fn estimate_matches_the_protocol_and_never_overflows() {
        assert_eq!(estimate_ms("opus", 60), 20);
        assert_eq!(estimate_ms("opus", 59), 19);
        assert_eq!(estimate_ms("PCM16", 32_000), 1_000);
        // the fuzzer's input: a byte count near usize::MAX
        assert_eq!(estimate_ms("", usize::MAX), usize::MAX as u64 / 3);
        assert!(estimate_ms("opus", usize::MAX) >= estimate_ms("opus", usize::MAX - 1));
    }

    /// Length-prefixed packets, `n` of `size` bytes.
    fn packets(n: usize, size: u16) -> Vec<u8> {
        let one = [&size.to_le_bytes()[..], &vec![7u8; usize::from(size)]].concat();
        one.repeat(n)
    }

    #[test]
    fn a_stream_of_opus_packets_is_20_ms_a_packet() {
        // quiet speech: 12 packets of 23 bytes (300 bytes, 100 ms by size) are 240 ms
        assert_eq!(stream_ms(&packets(12, 23)), 240);
        // a click: two packets of 63 bytes
        assert_eq!(stream_ms(&packets(2, 63)), 40);
        assert_eq!(stream_ms(&[]), 0);
        // not a stream of packets: by size
        let mut cut_short = packets(3, 40);
        cut_short.pop();
        assert_eq!(stream_ms(&cut_short), estimate_ms("opus", cut_short.len()));
        assert_eq!(stream_ms(&[0, 0, 1]), 1);
        assert_eq!(stream_ms(&[0xff, 0xff, 1, 2, 3]), 1);
        assert_eq!(stream_ms(b"pcm"), 1);
    }
}
