//! The cell's nodes: (re)registration through an instance with a fleet credential,
//! heartbeats and capability changes, disconnects, drains, progress messages and results,
//! each done the way the gateway does it.

use super::*;

impl Cell {
    /// A node (re)connects through `via` with a new connection token, and the fleet
    /// credential of that instance's nodes ([`fleet`]). Refused for its credential's count
    /// (`Limit`), nothing changed: the node keeps its earlier connection, if any.
    pub async fn register(&mut self, node: u8, via: u8, c: u8, capacity: u8) -> R {
        let s = via as usize % INSTANCES;
        let token = self.inst[s].token();
        let (nid, n) = self.node(node);
        let before = (n.conn.clone(), n.last_token.clone(), n.caps, n.capacity);
        n.conn = Some((s, token.clone()));
        n.last_token = Some(token.clone());
        (n.caps, n.capacity) = (c, capacity);
        if self.register_call(s, nid, &token, c, capacity).await? {
            let n = self.node(node).1;
            (n.conn, n.last_token, n.caps, n.capacity) = before;
        }
        Ok(())
    }

    /// `register` of node `nid` through slot `s` on connection `token`, with the slot's
    /// fleet credential; the deliveries taken. Whether it was refused for the credential's
    /// count (`Limit`: nothing changed).
    async fn register_call(
        &mut self,
        s: usize,
        nid: &str,
        token: &str,
        c: u8,
        capacity: u8,
    ) -> Result<bool, StoreError> {
        let extra = [
            ("capacity", capacity.to_string()),
            ("supports_ack", "0".into()),
        ];
        let store = &self.inst[s].store;
        let out = store
            .register(
                nid,
                NodeClaim::Replace,
                token,
                &caps(c),
                &extra,
                0,
                fleet(s),
            )
            .await?;
        self.clients.take(s, &out);
        let refused = match out.reply {
            RegisterReply::Limit { live } => {
                self.refused(s, live);
                true
            }
            _ => false,
        };
        Ok(refused)
    }

    /// A refusal for a full count, on slot `s`, which said the credential holds `live`
    /// nodes: only a counting instance refuses, and only at its limit.
    fn refused(&mut self, s: usize, live: u64) {
        self.clients.fleet_refused += 1;
        let limit = slot_config(&self.cfg, s).limits.max_nodes_per_credential;
        if limit == 0 || live < limit {
            self.clients.violations.push(format!(
                "slot {s} (limit {limit}) refused a node for a full count of {live}"
            ));
        }
    }

    /// A heartbeat on the node's connection, announcing capabilities `c`.
    pub async fn heartbeat(&mut self, node: u8, c: u8) -> R {
        let (nid, n) = self.node(node);
        let Some((s, token)) = n.conn.clone() else {
            return Ok(());
        };
        let out = self.inst[s]
            .store
            .heartbeat(nid, &token, &caps(c), &[], fleet(s))
            .await?;
        self.clients.take(s, &out);
        match out.reply {
            // The gateway registers again on the same connection.
            HeartbeatReply::Missing => {
                // refused for its credential's count: the gateway closes the connection
                if self.register_call(s, nid, &token, c, 1).await? {
                    self.node(node).1.conn = None;
                }
            }
            HeartbeatReply::Stale { .. } => self.node(node).1.conn = None,
            // An offline record not revived (its credential's count is full): the gateway
            // closes the connection, whose close changes nothing more.
            HeartbeatReply::Limit { live } => {
                self.refused(s, live);
                self.node(node).1.conn = None;
            }
            HeartbeatReply::Ok { .. } => {}
        }
        Ok(())
    }

    /// The node's socket closes: `node_offline` with or without a grace.
    pub async fn disconnect(&mut self, node: u8, grace: bool) -> R {
        let (nid, n) = self.node(node);
        let Some((s, token)) = n.conn.take() else {
            return Ok(());
        };
        let grace = if grace { 200 } else { 0 };
        let out = self.inst[s]
            .store
            .node_offline(nid, &token, grace, "closed")
            .await?;
        self.clients.take(s, &out);
        Ok(())
    }

    /// The node answers one attempt it was given; a disconnected node answers on its last
    /// connection (which must be refused as stale).
    pub async fn result(&mut self, node: u8, pick: u8, answer: Answer) -> R {
        let (nid, n) = self.node(node);
        if n.work.is_empty() {
            return Ok(());
        }
        let (job, attempt_id) = n.work.remove(pick as usize % n.work.len());
        let (s, token) = match (&n.conn, &n.last_token) {
            (Some((s, t)), _) => (*s, t.clone()),
            (None, Some(t)) => (0, t.clone()),
            (None, None) => return Ok(()),
        };
        let a = Attempt {
            job_id: &job,
            attempt_id,
            node_id: nid,
            conn: &token,
        };
        let large = large_result();
        let message = match answer {
            Answer::Large => large.as_str(),
            _ => RESULT,
        };
        let outcome = match answer {
            Answer::Ok | Answer::Large => Outcome::Ok(Finished {
                message,
                text_asr: "a",
                text_translated: "b",
                node_completed_at_ms: None,
                processing_time_ms: None,
            }),
            Answer::ModelNotAvailable => Outcome::ModelNotAvailable {
                service: Some("nmt"),
                message: "not_loaded",
            },
            Answer::Error => Outcome::Error {
                code: "PROCESSING_ERROR",
                message: "boom",
            },
        };
        let out = self.inst[s].store.job_result(&a, &outcome).await?;
        self.clients.take_with(s, &out, Some(result_body(message)));
        Ok(())
    }

    /// An operator drains (`on`) or undrains a node through instance `via`.
    pub async fn drain(&mut self, node: u8, on: bool, via: u8) -> R {
        let nid = NODES[node as usize % NODES.len()];
        let s = via as usize % INSTANCES;
        let out = self.inst[s].store.node_drain(nid, on).await?;
        if let DrainReply::Ok { state } = &out.reply {
            let want = if on { "draining" } else { "ready" };
            if state != want {
                let m = format!("{nid}: drain {on} left it {state}");
                self.clients.violations.push(m);
            }
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// The node reports progress on one attempt it holds, which it keeps: `job_ack`
    /// (`kind` 0), `job_started` (1) or an `asr_partial` (2); on its last connection when
    /// it has none (refused as stale).
    pub async fn progress(&mut self, node: u8, pick: u8, kind: u8) -> R {
        let (nid, n) = self.node(node);
        if n.work.is_empty() {
            return Ok(());
        }
        let (job, attempt_id) = n.work[pick as usize % n.work.len()].clone();
        let (s, token) = match (&n.conn, &n.last_token) {
            (Some((s, t)), _) => (*s, t.clone()),
            (None, Some(t)) => (0, t.clone()),
            (None, None) => return Ok(()),
        };
        let store = &self.inst[s].store;
        let out = match kind % 3 {
            2 => {
                store
                    .job_partial(&job, nid, &token, "partial", false)
                    .await?
            }
            k => {
                let a = Attempt {
                    job_id: &job,
                    attempt_id,
                    node_id: nid,
                    conn: &token,
                };
                store.job_ack(&a, k == 1).await?
            }
        };
        if let FencedReply::Ok { state: Some(st) } = &out.reply
            && !matches!(st.as_str(), "ACCEPTED" | "RUNNING" | "DISPATCHED")
        {
            let m = format!("{nid}: progress on {job} left it {st}");
            self.clients.violations.push(m);
        }
        self.clients.take(s, &out);
        Ok(())
    }
}
