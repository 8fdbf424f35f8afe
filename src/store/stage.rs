//! Large payloads around the scripts: an utterance's audio or a result body of
//! `jobs.stage_min_bytes` or more is not a script argument (Redis' Lua hashes every byte of
//! each string it creates). The instance `SET`s it in a `stage:` key in the same pipeline as
//! the call ([`super::Store::run_staged`]) and the script `RENAME`s it where it belongs
//! (docs/jobs.md "Creating a job", "Ordered delivery"; lua/includes/ctx.lua `staged`).

use crate::config::Config;

/// The default of `jobs.stage_min_bytes`: a payload at least this long (a translation_result
/// with TTS audio, an utterance's audio) does not pass through its script as an argument.
/// The instance joins a staged result body to the script's header when it writes the
/// message.
pub const STAGE_MIN_BYTES: usize = 2048;

/// A payload staged for one script call: `SET key value PX ttl_ms`. The TTL is the one of
/// the key the script renames it to (RENAME keeps it), so the script sets none; a key no
/// script takes (a crash between the two commands, a call that never ran) lives as long.
pub(crate) struct Staged<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
    pub ttl_ms: u64,
}

/// What is staged, and with which TTL (from the configuration, once).
#[derive(Clone, Copy)]
pub(crate) struct Staging {
    /// `jobs.stage_min_bytes` (None: 0, stage nothing).
    min: Option<usize>,
    /// `job:<jid>:audio`: the job record's TTL (`jobs.record_ttl_ms`).
    audio_ttl: u64,
    /// `session:<sid>:body:<idx>`: longer than its log entry can live (an entry is trimmed
    /// at most 9/8 of the retention after it settled while the session lives, and the log
    /// expires at most the idle TTL after the later of its last write and refresh).
    body_ttl: u64,
}

impl Staging {
    pub fn new(cfg: &Config) -> Self {
        Self {
            min: Some(cfg.jobs.stage_min_bytes).filter(|b| *b > 0),
            audio_ttl: cfg.jobs.record_ttl_ms,
            body_ttl: cfg.session.idle_ttl_ms + 2 * cfg.session.result_retention_ms,
        }
    }

    /// Whether a payload of `len` bytes is staged.
    pub fn stages(&self, len: usize) -> bool {
        self.min.is_some_and(|min| len >= min)
    }

    /// An utterance's audio staged in `key`, for `submit`.
    pub fn audio<'a>(&self, key: &'a str, value: &'a [u8]) -> Staged<'a> {
        let ttl_ms = self.audio_ttl;
        Staged { key, value, ttl_ms }
    }

    /// A result's body staged in `key`, for `job_result`.
    pub fn body<'a>(&self, key: &'a str, value: &'a [u8]) -> Staged<'a> {
        let ttl_ms = self.body_ttl;
        Staged { key, value, ttl_ms }
    }
}
