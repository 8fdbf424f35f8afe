//! The store's one error type: what a script call can come back with, and which Redis
//! errors mean "Redis is away" ([`StoreError::Unavailable`], `SCHEDULER_DEPENDENCY_DOWN`
//! for clients) rather than a bug, or "the reply was lost" ([`StoreError::Ambiguous`]).

use super::Output;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (refused, pool exhausted, no primary): the call was not
    /// made, or Redis refused it without running it. Transient.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The script was sent and its reply never came (response timeout, connection dropped or
    /// failed mid-call): Redis may have run it, and committed, all the same — its messages
    /// (a `translation_result` for a session here) are then lost with the reply. Transient,
    /// answered like [`StoreError::Unavailable`]; for a session whose own call (or a node's
    /// `job_result` for it) ends so, the instance reads what the result log holds back once
    /// Redis answers (`session.on_gap = "skip"`), or closes it with 1012 so that its resume
    /// resends it (`"resume"`).
    #[error("redis reply lost (the script may have run): {0}")]
    Ambiguous(String),
    /// Redis answered with an error (a script bug or a misconfigured server).
    #[error("redis error in {script}: {message}")]
    Redis {
        script: &'static str,
        message: String,
    },
    /// A reply that does not decode: a mismatch between Lua and Rust (or a record edited
    /// into values its reply cannot carry). From a script call (`Store::run`) it means the
    /// script ran to its end and committed: what it released for a session is recovered like
    /// a lost reply's ([`StoreError::may_have_committed`]). (A few callers outside the script
    /// path use it too — `register`'s refusal loop, `INFO memory` — and never recover.)
    #[error("unexpected reply from {script}: {message}")]
    Reply {
        script: &'static str,
        message: String,
    },
    /// The script ran and its change is committed on the primary, but not known to be
    /// replicated: `WAIT` (`redis.wait_replicas`) got fewer replicas in time, or failed.
    /// Answered like [`StoreError::Unavailable`]; the script's messages are in it, and
    /// `routing::delivered` writes them all the same (the primary is the source of truth
    /// until a failover).
    #[error("redis change not known to be replicated: {}", .0.message)]
    Unreplicated(Box<Unreplicated>),
    /// Redis answers, but is set up in a way the scheduler cannot run on (readiness only:
    /// a `maxmemory-policy` that evicts keys, memory.rs).
    #[error("redis misconfigured: {0}")]
    Misconfigured(String),
}

/// What a call whose `WAIT` fell short did: why, and what its script asked to deliver.
#[derive(Debug)]
pub struct Unreplicated {
    pub message: String,
    /// The script's deliveries (its typed reply is dropped). Taken out once delivered.
    pub output: Output<()>,
}

impl StoreError {
    /// Redis is away, or a change could not be confirmed by its replicas: transient, and
    /// what a client sees as `SCHEDULER_DEPENDENCY_DOWN`.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Ambiguous(_) | StoreError::Unreplicated(_)
        )
    }

    /// The call may have committed without its reply reaching us ([`StoreError::Ambiguous`]).
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, StoreError::Ambiguous(_))
    }

    /// The script may have run and committed (or committed part of its writes), yet the
    /// messages of its reply are not in hand: its reply was lost ([`StoreError::Ambiguous`]),
    /// it failed with a Lua runtime error part-way ([`StoreError::Redis`]), or it came and
    /// did not decode ([`StoreError::Reply`] of a script call: the script ran to its end,
    /// so its change is committed). What it released for a session is then recovered from
    /// the result log, or the session resumes (`session.on_gap`).
    pub fn may_have_committed(&self) -> bool {
        match self {
            StoreError::Ambiguous(_) | StoreError::Reply { .. } => true,
            StoreError::Redis { message, .. } => lua_runtime_error(message),
            _ => false,
        }
    }

    /// A failed call of a script that was (or may have been) sent: a timeout or a connection
    /// that dropped or failed mid-call is ambiguous; a refused connection or an error reply
    /// is not (Redis did not run the script).
    pub(super) fn from_call(script: &'static str, e: redis::RedisError) -> Self {
        let lost = e.is_timeout()
            || e.is_connection_dropped()
            || (e.is_io_error() && !e.is_connection_refusal());
        match Self::from_redis(script, e) {
            StoreError::Unavailable(m) if lost => StoreError::Ambiguous(m),
            other => other,
        }
    }

    pub(super) fn from_redis(script: &'static str, e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            // A demoted primary (sentinel failover), a slot without a primary (cluster), a
            // redirect the cluster client gave up following (the cell's slot is moving).
            || matches!(
                e.code(),
                Some(
                    "READONLY" | "CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "LOADING" | "MOVED"
                        | "ASK" | "OOM"
                )
            )
            // The cell's slot is being moved (the script stopped at its guard, ctx.lua).
            || e.to_string().contains("non local key")
        {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Redis {
                script,
                message: e.to_string(),
            }
        }
    }
}

/// Whether a script's error reply is a Lua runtime error (a script bug, or a record edited by
/// hand into a value the script cannot read): its text starts with the failing line,
/// `user_function:<n>: …`. The writes made before it stay, since Redis does not roll a
/// script back (a result logged, its delivery lost with the reply). Every error a function
/// raises ends with `… script: <name>, on @user_function:<n>.`, the scripts' own refusals
/// too (`error({err = …})`: a bad argument, a staged key missing), which come before any
/// write: those name the line only after the `@`.
fn lua_runtime_error(message: &str) -> bool {
    (message.match_indices("user_function:")).any(|(i, _)| !message[..i].ends_with('@'))
}

#[cfg(test)]
mod tests {
    use super::lua_runtime_error;

    #[test]
    fn only_a_lua_runtime_error_may_have_committed_part_of_a_script() {
        // as redis-rs shows Redis 7's replies
        let runtime = "ResponseError: user_function:1978: attempt to perform arithmetic on a \
            nil value script: audio_append_8d48d16c3cd5, on @user_function:1978.";
        let refusal = "ResponseError: bad argument ARGV[11] (chunk number): not a whole number \
            script: audio_append_8d48d16c3cd5, on @user_function:1561.";
        let staged = "ResponseError: ERR staged audio missing: {s}:stage:audio:c:s:0 script: \
            submit_8d48d16c3cd5, on @user_function:1875.";
        assert!(lua_runtime_error(runtime));
        assert!(!lua_runtime_error(refusal));
        assert!(!lua_runtime_error(staged));
        assert!(!lua_runtime_error("NOSCRIPT No matching script"));
    }
}
