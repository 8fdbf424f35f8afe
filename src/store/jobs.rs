//! Job operations a node drives: `job_ack` (ack / started), `job_result`, `job_partial`.
//! All fenced in the script by (job id, attempt id), the node the attempt went to, and that
//! node's current connection token.

use serde::Deserialize;

use super::{Output, Script, Store, StoreError};

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FencedReply {
    Ok {
        state: Option<String>,
    },
    /// Stale or foreign: nothing changed. `reason` names the failed check.
    Stale {
        reason: String,
    },
}

/// How an attempt ended, as the `job_result` script needs it.
pub enum Outcome<'a> {
    /// Success (empty results included).
    Ok(Finished<'a>),
    /// MODEL_NOT_AVAILABLE: fail over; the node's `service` (a type such as `nmt`) is marked
    /// down on it, unless none is known.
    ModelNotAvailable {
        service: Option<&'a str>,
        message: &'a str,
    },
    /// Any other failure: the utterance fails with this code and message.
    Error { code: &'a str, message: &'a str },
}

/// A successful result: the translation_result JSON for the session, plus the few fields
/// the script reads itself (so it never decodes the JSON, which carries the TTS audio).
pub struct Finished<'a> {
    /// translation_result without session_id, utterance_index, job_id, trace_id, group_id,
    /// part_index, network_timings, scheduler_sent_at_ms (the script adds them).
    pub message: &'a str,
    /// The recognised text; "" = none (the result joins no utterance group).
    pub text_asr: &'a str,
    pub text_translated: &'a str,
    /// The node's clock when it finished (`node_completed_at_ms`), if it sent it.
    pub node_completed_at_ms: Option<u64>,
    /// How long the node worked on the job (`processing_time_ms`), if it sent it.
    pub processing_time_ms: Option<u64>,
}

/// The members and closing brace of a translation_result (what follows its `{`): the part
/// the script puts its own fields in front of.
pub fn result_body(message: &str) -> &str {
    message.trim_start().strip_prefix('{').unwrap_or(message)
}

/// Who says something about an attempt.
/// Whether job `job_id` belongs to the session lifetime `nonce`: `job-<nonce>-<index>` (the
/// id `submit` makes; the scripts' `nonce_of`). A session id may be minted again once its
/// keys expired, and a job of the earlier lifetime may outlive them.
pub fn of_lifetime(job_id: &str, nonce: &str) -> bool {
    !nonce.is_empty()
        && job_id
            .strip_prefix("job-")
            .and_then(|r| r.strip_prefix(nonce))
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

pub struct Attempt<'a> {
    pub job_id: &'a str,
    pub attempt_id: u32,
    pub node_id: &'a str,
    pub conn: &'a str,
}

impl Store {
    /// `job_ack.lua`: `job_ack` (started = false) or `job_started` (started = true).
    pub async fn job_ack(
        &self,
        a: &Attempt<'_>,
        started: bool,
    ) -> Result<Output<FencedReply>, StoreError> {
        let keys = [self.keys.job(a.job_id), self.keys.due("jobs")];
        let args = self
            .args()
            .s(a.job_id)
            .s(a.attempt_id)
            .s(a.node_id)
            .s(a.conn)
            .s(if started { "started" } else { "ack" });
        self.run(Script::JobAck, &keys, args).await
    }

    /// `job_result.lua`: finish, fail over, or fail the attempt.
    pub async fn job_result(
        &self,
        a: &Attempt<'_>,
        outcome: &Outcome<'_>,
    ) -> Result<Output<FencedReply>, StoreError> {
        let mut keys = vec![self.keys.job(a.job_id), self.keys.due("jobs")];
        // Staged only with members: the script's header then always ends with a comma.
        let staged = match outcome {
            Outcome::Ok(f) => Some(result_body(f.message))
                .filter(|b| self.staging.stages(b.len()) && !b.trim_start().starts_with('}')),
            _ => None,
        };
        if staged.is_some() {
            keys.push(self.keys.staged_result(a.conn, a.job_id, a.attempt_id));
        }
        let base = self
            .args()
            .s(a.job_id)
            .s(a.attempt_id)
            .s(a.node_id)
            .s(a.conn);
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let args = match outcome {
            // The object's members and closing brace: the script puts its own fields in
            // front without copying the message (TTS audio, tens of KB) once more.
            Outcome::Ok(f) => base
                .s("ok")
                .s(if staged.is_some() {
                    ""
                } else {
                    result_body(f.message)
                })
                .s("")
                .s("")
                .s(f.text_asr)
                .s(f.text_translated)
                .s(opt(f.node_completed_at_ms))
                .s(opt(f.processing_time_ms)),
            Outcome::ModelNotAvailable { service, message } => base
                .s("model_not_available")
                .s(message)
                .s(service.unwrap_or_default())
                .s(""),
            Outcome::Error { code, message } => base.s("error").s(message).s("").s(code),
        };
        let stage = staged.map(|b| self.staging.body(&keys[2], b.as_bytes()));
        self.run_staged(Script::JobResult, &keys, args, stage).await
    }

    /// `job_partial.lua`: forward an `asr_partial` to the job's session.
    pub async fn job_partial(
        &self,
        job_id: &str,
        node_id: &str,
        conn: &str,
        text: &str,
        is_final: bool,
    ) -> Result<Output<FencedReply>, StoreError> {
        let args = self
            .args()
            .s(job_id)
            .s(node_id)
            .s(conn)
            .s(text)
            .s(if is_final { "1" } else { "0" });
        self.run(Script::JobPartial, &[self.keys.job(job_id)], args)
            .await
    }
}
