//! Session operations: `session_open`, `session_touch`, `session_close`, `audio_append`,
//! `submit`. Each is one script call; cuts and submissions dispatch inside the script.

use serde::Deserialize;

use super::{Output, Script, Store, StoreError};

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OpenReply {
    Taken,
    Ok,
    /// The credential's subject already has the most live sessions allowed.
    Limit {
        live: u64,
    },
}

/// Replies shared by every operation on an existing session.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SessionReply {
    Ok {
        /// `audio_append`: the cut it made (manual, max_duration, max_size).
        cut: Option<String>,
        /// The job a cut or close created.
        job_id: Option<String>,
        /// dispatched | queued | failed.
        dispatch: Option<String>,
    },
    /// `submit`: a new job.
    Created { job_id: String, dispatch: String },
    /// `submit`: the index has a job already; nothing changed.
    Duplicate { job_id: String },
    /// `audio_append`: this connection's chunk of that number was appended already (a
    /// resent call); nothing changed. A repeat of a chunk that cut comes back as
    /// [`StoreError::Ambiguous`] instead (see [`Store::audio_append`]).
    Repeat { cut: bool },
    /// `submit`: the index already has its terminal message.
    Settled,
    /// `submit`: the index is too far ahead of the delivery cursor.
    TooFar,
    /// `audio_append`: the session's buffer is full (a held cut: its utterances are
    /// `max_index_ahead` past the delivery cursor); the chunk was not kept.
    Full,
    /// No such session (expired or never opened).
    Missing,
    /// Another connection owns the session.
    Stale,
    /// The session was closed.
    Closed,
}

/// What the client did that keeps a session alive (`session_touch.lua`).
#[derive(Debug, Clone, Copy)]
pub enum Touch<'a> {
    Heartbeat,
    TtsStarted,
    /// Playback of a result ended; `group_id` ("" if none) moves that group's anchor.
    TtsPlayEnded {
        group_id: &'a str,
    },
}

impl Store {
    /// `session_open.lua`: create the session record, unless `subject` (the credential's
    /// `Credential::subject`) already has `max_per_subject` live sessions (0: no limit).
    #[allow(clippy::too_many_arguments)] // one per ARGV of the script
    pub async fn session_open(
        &self,
        sid: &str,
        minted: bool,
        conn: &str,
        nonce: &str,
        subject: Option<&str>,
        max_per_subject: u64,
        fields: &[(&'static str, String)],
    ) -> Result<Output<OpenReply>, StoreError> {
        let args = self
            .args()
            .s(sid)
            .s(if minted { "1" } else { "0" })
            .s(conn)
            .s(nonce)
            .s(subject.unwrap_or_default())
            .s(max_per_subject)
            .s(fields.len())
            .fields(fields);
        self.run(Script::SessionOpen, &[self.keys.session(sid)], args)
            .await
    }

    /// `session_touch.lua`: heartbeat or playback event (`tts_play_ended` also moves its
    /// utterance group's anchor).
    pub async fn session_touch(
        &self,
        sid: &str,
        conn: &str,
        what: Touch<'_>,
    ) -> Result<Output<SessionReply>, StoreError> {
        let (event, group) = match what {
            Touch::Heartbeat => ("heartbeat", ""),
            Touch::TtsStarted => ("tts_started", ""),
            Touch::TtsPlayEnded { group_id } => ("tts_play_ended", group_id),
        };
        let keys = [self.keys.session(sid), self.keys.due("audio")];
        let args = self.args().s(sid).s(conn).s(event).s(group);
        self.run(Script::SessionTouch, &keys, args).await
    }

    /// `session_close.lua`: flush the audio buffer, then refuse further audio.
    pub async fn session_close(
        &self,
        sid: &str,
        conn: &str,
    ) -> Result<Output<SessionReply>, StoreError> {
        let keys = [self.keys.session(sid), self.keys.due("audio")];
        self.run(Script::SessionClose, &keys, self.args().s(sid).s(conn))
            .await
    }

    /// `audio_append.lua`: buffer a chunk and apply the cut rules. `client_ts` is the
    /// chunk's `client_timestamp_ms` (for `network_timings.web_to_scheduler_ms`). `seq`
    /// numbers the chunks of one connection from 1 (0: not numbered): a chunk whose number
    /// was appended already is not appended again (on a cluster the client resends a call
    /// whose connection reset after it was sent). Such a repeat answers
    /// [`SessionReply::Repeat`], or [`StoreError::Ambiguous`] when the chunk cut: what the
    /// cut delivered went with the first call's reply, which was lost.
    #[allow(clippy::too_many_arguments)] // one per ARGV of the script
    pub async fn audio_append(
        &self,
        sid: &str,
        conn: &str,
        payload: &[u8],
        is_final: bool,
        duration_ms: u64,
        client_ts: Option<u64>,
        seq: u64,
    ) -> Result<Output<SessionReply>, StoreError> {
        let keys = [
            self.keys.session(sid),
            self.keys.session_audio(sid),
            self.keys.due("audio"),
        ];
        let args = self
            .args()
            .s(sid)
            .s(conn)
            .b(payload)
            .s(if is_final { "1" } else { "0" })
            .s(duration_ms)
            .s(client_ts.map(|t| t.to_string()).unwrap_or_default())
            .s(seq);
        let out = self.run(Script::AudioAppend, &keys, args).await?;
        if out.reply == (SessionReply::Repeat { cut: true }) {
            return Err(StoreError::Ambiguous(format!(
                "audio_append: chunk {seq} of session {sid} was resent after a cut; \
                 the first call's reply was lost"
            )));
        }
        Ok(out)
    }

    /// `submit.lua`: one pre-cut utterance becomes one job (idempotent on the index).
    pub async fn submit(
        &self,
        sid: &str,
        conn: &str,
        job: &NewJob<'_>,
    ) -> Result<Output<SessionReply>, StoreError> {
        let mut keys = vec![self.keys.session(sid)];
        let staged = self.staging.stages(job.audio.len());
        if staged {
            keys.push(self.keys.staged_audio(conn, sid, job.index));
        }
        let args = self
            .args()
            .s(sid)
            .s(conn)
            .s(job.index)
            .s(job.spec)
            .b(if staged { &[] } else { job.audio })
            .s(job.pools)
            .s(job.needs)
            .s(job.pair)
            .s(job.trace_id);
        let stage = staged.then(|| self.staging.audio(&keys[1], job.audio));
        self.run_staged(Script::Submit, &keys, args, stage).await
    }
}

/// The parts of a submitted utterance the `submit` script needs.
pub struct NewJob<'a> {
    pub index: u64,
    /// `job_assign` template JSON, without job_id, attempt_id and audio.
    pub spec: &'a str,
    pub audio: &'a [u8],
    /// Candidate pools, csv, preferred first ("primary" or "primary|reverse").
    pub pools: &'a str,
    /// Service types the pipeline needs, csv.
    pub needs: &'a str,
    /// Human-readable pair for error messages.
    pub pair: &'a str,
    pub trace_id: &'a str,
}
