//! The cell's streamed audio, as the lingua web client sends it: chunks on a session's
//! connection (`audio_append`), the close's last cut, and what the model learns of the
//! indices the scripts' cuts give (a pause cut tells the client nothing).

use switchyard::store::StoreError;
use switchyard::store::sessions::SessionReply;

use super::{CHUNK_BYTE, CHUNK_BYTES, Cell, PREFIX, R};

impl Cell {
    /// The session streams one audio chunk on its connection (`audio_append`): a short one
    /// (100 ms) or a long one (900 ms, four times the bytes), the turn's last (`is_final`)
    /// or not. `again` sends the previous chunk's number again (a call resent after its
    /// connection reset): nothing may change, and one that had cut is answered
    /// `Ambiguous` (what the cut delivered went with the first reply).
    pub async fn chunk(&mut self, session: u8, long: bool, last: bool, again: bool) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let (step, started) = (self.clients.step, self.started());
        let c = &mut self.clients.sessions[k];
        let Some((s, token)) = c.conn.clone() else {
            return Ok(());
        };
        c.streams = true;
        let again = again && c.chunk > 0;
        if !again {
            c.chunk += 1;
        }
        let (seq, cut_before) = (c.chunk, c.chunk_cut);
        let (n, ms) = if long { (4, 900) } else { (1, 100) };
        let payload = vec![CHUNK_BYTE; n * CHUNK_BYTES];
        let sid = c.id.clone();
        let store = &self.inst[s].store;
        let out = match store
            .audio_append(&sid, &token, &payload, last, ms, Some(1), seq)
            .await
        {
            Err(StoreError::Ambiguous(_)) if again && cut_before => return Ok(()),
            r => r?,
        };
        let c = &mut self.clients.sessions[k];
        match &out.reply {
            SessionReply::Ok { cut, job_id, .. } => {
                if again {
                    let m = format!("{sid}: a resent chunk {seq} was appended again");
                    self.clients.violations.push(m);
                }
                c.chunk_cut = cut.is_some();
                if let Some(idx) = job_id.as_deref().and_then(|j| cut_index(j, &c.nonce)) {
                    c.cut_index(idx, step, started);
                }
                if let Some(reason) = cut {
                    *self.clients.cuts.entry(reason.clone()).or_default() += 1;
                }
            }
            SessionReply::Full => self.clients.full += 1,
            SessionReply::Repeat { cut } if !again || *cut => {
                let m = format!("{sid}: chunk {seq} (resent: {again}) answered repeat, cut {cut}");
                self.clients.violations.push(m);
            }
            _ => {}
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// The client ends its session (`session_close`): the buffer's last cut, then no more.
    pub async fn close(&mut self, session: u8) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let (step, started) = (self.clients.step, self.started());
        let c = &self.clients.sessions[k];
        let Some((s, token)) = c.conn.clone() else {
            return Ok(());
        };
        let sid = c.id.clone();
        let out = self.inst[s].store.session_close(&sid, &token).await?;
        let c = &mut self.clients.sessions[k];
        if let SessionReply::Ok {
            job_id: Some(j), ..
        } = &out.reply
            && let Some(idx) = cut_index(j, &c.nonce)
        {
            c.cut_index(idx, step, started);
            *self.clients.cuts.entry("close".into()).or_default() += 1;
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// A session's audio buffer stays within twice `session.max_buffer_bytes`: past the
    /// bound it is cut, or held while no index is free and then refuses what would pass
    /// twice the bound (audio_append.lua; a chunk is far smaller than the bound here).
    pub(super) async fn check_buffers(&mut self) {
        let bound = 2 * self.cfg.session.max_buffer_bytes;
        for c in self.clients.sessions.iter().filter(|c| c.streams) {
            let len: u64 = redis::cmd("STRLEN")
                .arg(format!("{PREFIX}session:{}:audio", c.id))
                .query_async(&mut self.redis)
                .await
                .expect("strlen");
            if len > bound {
                let m = format!("{}: {len} bytes of audio buffered, past {bound}", c.id);
                self.clients.violations.push(m);
            }
        }
    }

    /// When the current step started (the model's clock for what a step cut).
    fn started(&self) -> std::time::Instant {
        self.clients
            .step_started
            .unwrap_or_else(std::time::Instant::now)
    }

    /// The indices the scripts' cuts gave streaming sessions' utterances that the clients
    /// have not heard of (a sweep's pause cut says nothing to the client until an outcome
    /// comes): each must end in a terminal message like any other (`check_accounted`).
    pub(super) async fn learn_cuts(&mut self) {
        let (step, started) = (self.clients.step, self.started());
        for c in self.clients.sessions.iter_mut() {
            if !c.streams || c.retired {
                continue;
            }
            let jobs: Vec<(u64, String)> = redis::cmd("HGETALL")
                .arg(format!("{PREFIX}session:{}:jobs", c.id))
                .query_async(&mut self.redis)
                .await
                .expect("hgetall");
            for (idx, job) in &jobs {
                if cut_index(job, &c.nonce) == Some(*idx) {
                    c.unconfirmed.remove(idx);
                    if !c.accepted.contains(idx) {
                        c.cut_index(*idx, step, started);
                        *self.clients.cuts.entry("learned".into()).or_default() += 1;
                    }
                }
            }
            for idx in std::mem::take(&mut c.unconfirmed) {
                self.clients.violations.push(format!(
                    "{}: a terminal message for index {idx}, which no cut of its own made",
                    c.id
                ));
            }
        }
    }
}

/// The utterance index of job `job` of the session whose jobs are `job-<nonce>-<index>`.
fn cut_index(job: &str, nonce: &str) -> Option<u64> {
    job.strip_prefix("job-")?
        .strip_prefix(nonce)?
        .strip_prefix('-')?
        .parse()
        .ok()
}
