//! The cell's sessions: opening, reopening an id, pre-cut utterances (`submit`), a dropped
//! connection and its resume, each done the way the gateway does it.

use super::*;

impl Cell {
    /// A new session through `via`: en→zh (pair 0) or zh→en.
    pub async fn open(&mut self, via: u8, pair: u8) -> R {
        if self.clients.sessions.len() >= MAX_SESSIONS {
            return Ok(());
        }
        let sid = format!("s{}", self.clients.sessions.len());
        let langs = if pair == 0 {
            ("en", "zh")
        } else {
            ("zh", "en")
        };
        self.open_as(via, &sid, &sid, langs).await
    }

    /// Every key of a session expires while jobs of it still run (an idle TTL shorter than
    /// a job's life; its reorder and pause clocks fired long before), and its random id is
    /// minted again, through `via`: a new session with another nonce, and a new client. The
    /// old client is gone for good; the new one must get only its own messages, exactly
    /// one terminal message per index (the scripts' `job_session`).
    pub async fn reopen(&mut self, session: u8, via: u8) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let old = &mut self.clients.sessions[k];
        old.retired = true;
        old.conn = None;
        let (sid, langs) = (old.id.clone(), old.langs);
        let sk = format!("{PREFIX}session:{sid}");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{sk}:body:*"))
            .query_async(&mut self.redis)
            .await
            .expect("keys");
        keys.extend(
            ["", ":jobs", ":results", ":pending", ":audio", ":rtime"].map(|k| format!("{sk}{k}")),
        );
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(&keys)
            .ignore()
            .cmd("ZREM")
            .arg(format!("{PREFIX}due:reorder"))
            .arg(&sid)
            .ignore()
            .cmd("ZREM")
            .arg(format!("{PREFIX}due:audio"))
            .arg(&sid)
            .ignore()
            .query_async(&mut self.redis)
            .await
            .expect("expire the session");
        let nonce = format!("{sid}r{}", self.clients.step);
        self.open_as(via, &sid, &nonce, langs).await
    }

    /// Open session `sid` (nonce `nonce`) through `via` for a new client.
    async fn open_as(
        &mut self,
        via: u8,
        sid: &str,
        nonce: &str,
        langs: (&'static str, &'static str),
    ) -> R {
        let s = via as usize % INSTANCES;
        let token = self.inst[s].token();
        let fields = session_fields(langs);
        let store = &self.inst[s].store;
        let out = store
            .session_open(sid, false, &token, nonce, None, 0, &fields)
            .await?;
        self.clients.sessions.push(SessionClient {
            id: sid.to_string(),
            nonce: nonce.to_string(),
            conn: Some((s, token)),
            seq: 1,
            langs,
            ..Default::default()
        });
        self.clients.take(s, &out);
        Ok(())
    }

    /// The session sends its next utterance; `skip` leaves a gap, `again` repeats the last.
    pub async fn submit(&mut self, session: u8, skip: bool, again: bool) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let step = self.clients.step;
        let c = &mut self.clients.sessions[k];
        let Some((s, token)) = c.conn.clone() else {
            return Ok(());
        };
        let index = match again && c.next_index > 0 {
            true => c.next_index - 1,
            false => c.next_index + u64::from(skip),
        };
        c.next_index = c.next_index.max(index + 1);
        c.submitted
            .entry(index)
            .or_insert((step, std::time::Instant::now()));
        let (r, spec) = one_way(c.langs.0, c.langs.1);
        let large_audio = vec![7u8; STAGE_MIN_BYTES];
        let job = NewJob {
            index,
            spec: &spec,
            // odd indices past the staging threshold: staged, renamed, read back on demand
            audio: if index % 2 == 1 { &large_audio } else { b"pcm" },
            pools: &r.pools,
            needs: &r.needs,
            pair: &r.pair,
            trace_id: "t",
        };
        let sid = c.id.clone();
        let out = self.inst[s].store.submit(&sid, &token, &job).await?;
        if matches!(
            out.reply,
            SessionReply::Created { .. } | SessionReply::Duplicate { .. }
        ) {
            self.clients.sessions[k].accepted.insert(index);
        }
        // The caller holds the audio: a job_assign for its own node does not carry it back.
        for d in out.out.iter().filter(|d| d.k == "node") {
            if d.own.is_none() || d.blob.is_some() {
                self.clients.violations.push(format!(
                    "submit's job_assign: own {:?}, blob {:?}",
                    d.own, d.blob
                ));
            }
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// The session's socket drops (no script runs: the record stays for resume).
    pub async fn drop_session(&mut self, session: u8) -> R {
        if let Some(k) = self.session(session) {
            self.clients.sessions[k].conn = None;
        }
        Ok(())
    }

    /// The session resumes through `via` with the last index it received.
    pub async fn resume(&mut self, session: u8, via: u8) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let s = via as usize % INSTANCES;
        let token = self.inst[s].token();
        let c = &self.clients.sessions[k];
        // the contiguous prefix it holds (docs/protocol.md): after a reorder window released
        // later indices first, the highest one received would lose the earlier one
        let last = (0..).take_while(|i| c.got.contains_key(i)).count() as i64 - 1;
        let sid = c.id.clone();
        let out = self.inst[s]
            .store
            .session_resume(&sid, &token, last, RESUME_HASH, None, 0)
            .await?;
        let c = &mut self.clients.sessions[k];
        c.conn = None;
        if let ResumeReply::Ok { next_seq, .. } = out.reply {
            c.conn = Some((s, token));
            c.seq = next_seq;
            c.held.clear();
            (c.chunk, c.chunk_cut) = (0, false);
            c.resent_ok = c
                .got
                .range(((last + 1) as u64)..)
                .map(|(i, _)| *i)
                .collect();
        }
        self.clients.take(s, &out);
        Ok(())
    }
}
