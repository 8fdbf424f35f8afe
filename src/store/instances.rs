//! Instance presence and takeover (`instance_beat`), session resume and node drain, plus
//! the read-only instance listing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Output, Script, Store, StoreError};

#[derive(Debug, Deserialize)]
pub struct BeatReply {
    /// The dead instance whose inbox this call finished taking over.
    pub took_over: Option<String>,
    pub rerouted: u64,
    pub dropped: u64,
    /// More of a dead inbox remains: beat again soon.
    pub more: bool,
    /// This instance gave up its presence (graceful shutdown).
    #[serde(default)]
    pub left: bool,
    /// This instance's presence had expired while it was alive and messages for its
    /// connections were dropped or taken over meanwhile (its tombstone `taken:<id>` was
    /// there); it must close them so they resume.
    #[serde(default)]
    pub lapsed: bool,
    /// The tombstone that says so: the next beat acknowledges it once the connections are
    /// closed ([`Store::instance_beat`]'s `ack`), and until then every beat reports it.
    #[serde(default)]
    pub tomb: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ResumeReply {
    Ok {
        next_seq: u64,
        resent: u64,
        state: Option<String>,
        /// The session's own tenant ("" = none): its jobs keep it whatever the resuming
        /// credential says. (The library is versioned with the build: the script an
        /// instance calls is always its own, so the field is always there.)
        #[serde(default)]
        tenant: String,
        /// Grows with every resume of the session (Redis's commit order), above the
        /// caller's floor: orders two outcomes of this instance that arrive out of order.
        epoch: u64,
        /// The connection the session moved away from, if another.
        replaced_conn: Option<String>,
        /// The session's nonce (its lifetime: in the ids of its jobs, `job-<nonce>-<index>`).
        #[serde(default)]
        nonce: String,
    },
    Missing,
    /// Results after the client's last index were already trimmed.
    Gap,
    /// The resume token (or the tenant) does not match: nothing changed.
    Refused,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DrainReply {
    Ok { state: String },
    Missing,
    Offline,
}

impl Store {
    /// `instance_beat.lua`: renew presence, create the inbox group, take over a dead peer;
    /// with `leave`, give up presence at once (graceful shutdown). `ack`: the tombstone an
    /// earlier beat reported as a lapse ([`BeatReply::tomb`]) and the caller acted on.
    pub async fn instance_beat(
        &self,
        instance: &str,
        started_at_ms: u64,
        leave: bool,
        ack: Option<&str>,
    ) -> Result<Output<BeatReply>, StoreError> {
        let k = &self.keys;
        let keys = [k.instance(instance), k.instances(), k.inbox(instance)];
        let args = self
            .args()
            .s(started_at_ms)
            .s(if leave { "leave" } else { "" })
            .s(ack.unwrap_or_default());
        self.run(Script::InstanceBeat, &keys, args).await
    }

    /// `session_resume.lua`: move a session to a new connection and resend its results,
    /// if `resume_hash` (SHA-256 of the presented resume token) and `tenant` match it;
    /// `epoch_floor` is the epoch of its live binding on this instance (`Connections::bind`).
    pub async fn session_resume(
        &self,
        sid: &str,
        conn: &str,
        last: i64,
        resume_hash: &str,
        tenant: Option<&str>,
        epoch_floor: u64,
    ) -> Result<Output<ResumeReply>, StoreError> {
        let args = self
            .args()
            .s(sid)
            .s(conn)
            .s(last)
            .s(resume_hash)
            .s(tenant.unwrap_or_default())
            .s(epoch_floor);
        self.run(Script::SessionResume, &[self.keys.session(sid)], args)
            .await
    }

    /// `node_drain.lua`: drain (`true`) or undrain a node.
    pub async fn node_drain(
        &self,
        node_id: &str,
        drain: bool,
    ) -> Result<Output<DrainReply>, StoreError> {
        let args = self
            .args()
            .s(node_id)
            .s(if drain { "drain" } else { "undrain" });
        self.run(Script::NodeDrain, &[self.keys.node(node_id)], args)
            .await
    }

    /// Live instances: id → (presence expiry ms, started at ms).
    pub async fn instances(&self) -> Result<BTreeMap<String, (u64, Option<u64>)>, StoreError> {
        let mut conn = self.conn().await?;
        let list: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.keys.instances())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        let mut pipe = redis::pipe();
        for (id, _) in &list {
            pipe.cmd("GET").arg(self.keys.instance(id));
        }
        let started: Vec<Option<u64>> = if list.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn)
                .await
                .map_err(|e| StoreError::from_redis("read", e))?
        };
        Ok(list
            .into_iter()
            .zip(started)
            .filter(|(_, s)| s.is_some())
            .map(|((id, exp), s)| (id, (exp as u64, s)))
            .collect())
    }
}
