//! `[session]` — Sessions: audio cuts, result ordering and retention.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A session with no activity (audio, heartbeat, utterance) for this long expires.
    pub idle_ttl_ms: u64,
    /// No audio_chunk for this long after audio arrived → timeout cut.
    pub pause_ms: u64,
    /// Buffered audio reaching this duration → max-duration cut (the turn continues).
    pub max_duration_ms: u64,
    /// Buffered audio larger than this → cut.
    pub max_buffer_bytes: u64,
    /// After `tts_started`, the pause clock waits this much longer (playback is not silence;
    /// bounds a client that never sends `tts_play_ended`).
    pub playback_grace_ms: u64,
    /// A result waits at most this long for an unfinished earlier utterance index.
    pub reorder_window_ms: u64,
    /// An `utterance` index may run at most this far ahead of the delivery cursor.
    pub max_index_ahead: u64,
    /// Delivered results stay in the result log this long, for `resume_session_id`.
    pub result_retention_ms: u64,
    /// A session connection waits at most this long for a missing earlier message (results
    /// may arrive by the local path and through the inbox) before writing later ones.
    pub order_gap_ms: u64,
    /// What a session connection does when a gap outlasts `order_gap_ms`: close with 1012 so
    /// the client resumes and gets the missing messages from the result log (`resume`), or
    /// write what follows without them (`skip`: for clients that cannot resume).
    pub on_gap: OnGap,
    /// With `on_gap = "skip"`: how long the instance keeps trying to read a session's
    /// result log back after a lost reply took its messages, while Redis does not answer.
    pub recover_for_ms: u64,
    /// A result with text joins the session's active utterance group unless more than this
    /// has passed since the group's anchor (its creation, then each `tts_play_ended` for it).
    pub group_window_ms: u64,
    /// A cut whose estimated audio is shorter than this creates no job (a click, a breath
    /// between two `is_final`s); 0 disables the rule.
    pub min_cut_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_ttl_ms: 300_000,
            pause_ms: 3_000,
            max_duration_ms: 10_000,
            max_buffer_bytes: 500 * 1024,
            playback_grace_ms: 30_000,
            reorder_window_ms: 2_000,
            max_index_ahead: 1_000,
            result_retention_ms: 120_000,
            order_gap_ms: 2_000,
            on_gap: OnGap::Skip,
            recover_for_ms: 30_000,
            group_window_ms: 2_000,
            min_cut_ms: 200,
        }
    }
}

/// `session.on_gap`: what a session connection does about a message that never came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGap {
    /// Close the connection with 1012 ("results missing; resume"): the client's resume gets
    /// every result after its last from the session's result log, in order. For clients
    /// that resume (`resume_session_id`, a Switchyard extension).
    Resume,
    /// Write the later messages without the missing one (it is lost to this connection
    /// unless it still arrives, or the client resumes on its own). The default: an
    /// unchanged lingua web client does not resume, and a close would cost it every result
    /// still in flight.
    #[default]
    Skip,
}
