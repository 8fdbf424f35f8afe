//! The key schema: every Redis key name Switchyard uses is built here, nowhere else.
//!
//! All keys of a cell share the hash tag `{prefix:cell}`, so every script touches one slot
//! and runs unchanged on Redis Cluster. Scripts that derive keys from stored data (a node's
//! pools, sweep targets) build them from the same prefix, which [`Keys::prefix`] passes in.
//! docs/redis-keys.md documents each key.

/// Key builder for one cell.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `{switchyard:main}:` — the tag plus separator every key starts with.
    prefix: String,
}

impl Keys {
    pub fn new(cell_tag: &str) -> Self {
        Self {
            prefix: format!("{cell_tag}:"),
        }
    }

    /// The prefix scripts receive to build derived keys (same hash tag).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: one node's capabilities, owner, connection token, load and state.
    pub fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }

    /// Set: names of the pools a node is in (so leaving them is a difference, not a scan).
    pub fn node_pools(&self, id: &str) -> String {
        format!("{}node:{id}:pools", self.prefix)
    }

    /// Zset: node id → liveness deadline (ms). Only nodes that are not offline.
    pub fn nodes_live(&self) -> String {
        format!("{}nodes:live", self.prefix)
    }

    /// Zset: node id → time its record expires (ms); the listing of every known node.
    pub fn nodes_index(&self) -> String {
        format!("{}nodes:index", self.prefix)
    }

    /// Set: names of non-empty pools.
    pub fn pools_index(&self) -> String {
        format!("{}pools", self.prefix)
    }

    /// Set: node ids in one pool, e.g. `pool:pub:zh:en` or `pool:tenant:acme:auto:en`.
    pub fn pool(&self, name: &str) -> String {
        format!("{}pool:{name}", self.prefix)
    }

    /// Zset: what is due when (`due:jobs` job deadlines, `due:audio` pause cuts,
    /// `due:reorder` reorder windows); members are ids, scores deadlines in ms.
    pub fn due(&self, what: &str) -> String {
        format!("{}due:{what}", self.prefix)
    }

    /// Hash: one session (languages, owner, connection, cursors, audio buffer state).
    pub fn session(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    /// String: a session's buffered audio (raw bytes).
    pub fn session_audio(&self, id: &str) -> String {
        format!("{}session:{id}:audio", self.prefix)
    }

    /// Hash: a session's result log (utterance index → its terminal message JSON; `+` and
    /// a header when the body is in [`Keys::session_body`]).
    pub fn session_results(&self, id: &str) -> String {
        format!("{}session:{id}:results", self.prefix)
    }

    /// Zset: a session's settled indices by the time they settled (retention, `trim`).
    pub fn session_rtime(&self, id: &str) -> String {
        format!("{}session:{id}:rtime", self.prefix)
    }

    /// Zset: a session's results settled but not delivered yet (member and score: index).
    pub fn session_pending(&self, id: &str) -> String {
        format!("{}session:{id}:pending", self.prefix)
    }

    /// String: the body of a result logged in two parts (a large `translation_result`).
    pub fn session_body(&self, id: &str, index: u64) -> String {
        format!("{}session:{id}:body:{index}", self.prefix)
    }

    /// Hash: one job (session, index, state, attempt, node, tried nodes, deadline, spec).
    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// String with TTL: a large result's body, staged by the instance in the pipeline of
    /// its `job_result` call, which renames it into the session's result log. Written
    /// before the script checks who may act, and named partly from ids the node sends: so
    /// it lives apart from staged audio (`stage:result:`), and carries the connection's
    /// token (`<instance>/<n>`, no `:`), so no other connection — a stale one sending the
    /// same job and attempt — can overwrite or delete it.
    pub fn staged_result(&self, conn: &str, job: &str, attempt: u32) -> String {
        format!("{}stage:result:{conn}:{job}:{attempt}", self.prefix)
    }

    /// String with TTL: an utterance's audio, staged by the instance in the pipeline of its
    /// `submit` call, which renames it to the job's audio key. Written before the script
    /// checks the connection, so it carries the connection's token as `staged_result`
    /// does: a connection a resume replaced stays open (its next frame is answered as
    /// stale), and its utterance of the same index must not overwrite or delete the live
    /// connection's audio between that one's `SET` and `FCALL`.
    pub fn staged_audio(&self, conn: &str, session: &str, index: u64) -> String {
        format!("{}stage:audio:{conn}:{session}:{index}", self.prefix)
    }

    /// String with TTL: an instance is alive while its presence key exists.
    pub fn instance(&self, id: &str) -> String {
        format!("{}instance:{id}", self.prefix)
    }

    /// Zset: instance id → presence expiry (ms); the listing, and how dead ones are found.
    pub fn instances(&self) -> String {
        format!("{}instances", self.prefix)
    }

    /// Stream: messages other instances' scripts produced for this instance's connections.
    pub fn inbox(&self, id: &str) -> String {
        format!("{}inbox:{id}", self.prefix)
    }

    /// Stream: inbox entries that could not be delivered after N attempts.
    pub fn dead_letters(&self) -> String {
        format!("{}deadletter", self.prefix)
    }

    /// List: jobs waiting for capacity in one pool (FIFO).
    pub fn queue(&self, pool: &str) -> String {
        format!("{}queue:{pool}", self.prefix)
    }

    /// List: the cell's most recent failures, newest first (`fail` in dispatch.lua; 50 at
    /// most, TTL `jobs.record_ttl_ms`).
    pub fn failures(&self) -> String {
        format!("{}failures", self.prefix)
    }

    /// Hash with a 2-minute TTL: the cell's counters of one second (epoch seconds), added
    /// to by every instance once a second (the dashboard's sparklines).
    pub fn stats(&self, second: u64) -> String {
        format!("{}stats:{second}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: `stage:<job>:<attempt>` and `stage:<sid>:<index>` shared one
    /// namespace, so a node sending a session id as its job id named the session's staged
    /// audio; and a stale connection's result named the live one's staged body (and a
    /// replaced session connection's utterance, the live one's staged audio).
    #[test]
    fn staged_keys_of_a_node_never_name_a_sessions_or_another_connections() {
        let k = Keys::new("{switchyard:main}");
        let audio = k.staged_audio("i-0123456789ab/7", "s-ABCDEF12", 3);
        assert_eq!(
            audio,
            "{switchyard:main}:stage:audio:i-0123456789ab/7:s-ABCDEF12:3"
        );
        for job in ["s-ABCDEF12", "audio:s-ABCDEF12", ":audio:s-ABCDEF12", ""] {
            for conn in ["i-0123456789ab/7", "", "audio"] {
                let result = k.staged_result(conn, job, 3);
                assert_ne!(result, audio, "{conn} {job}");
                assert!(result.starts_with("{switchyard:main}:stage:result:"));
            }
        }
        let (live, stale) = ("i-0123456789ab/8", "i-ba9876543210/2");
        assert_ne!(
            k.staged_result(live, "job-1-0", 1),
            k.staged_result(stale, "job-1-0", 1)
        );
        assert_eq!(
            k.staged_result(live, "job-1-0", 1),
            "{switchyard:main}:stage:result:i-0123456789ab/8:job-1-0:1"
        );
        // (audit finding: a connection a resume replaced stays open, and its utterance of
        // the same index named the live connection's staged audio)
        assert_ne!(
            k.staged_audio(live, "s-ABCDEF12", 3),
            k.staged_audio(stale, "s-ABCDEF12", 3)
        );
    }
}
