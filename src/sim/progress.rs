//! The live progress line of a run (indicatif, on stderr; hidden with `--quiet` or when
//! stderr is not a terminal): peers up, utterances sent, terminal messages and their rate.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use super::tracker::{Live, Shared};

pub struct Progress {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl Progress {
    /// Start redrawing every 250 ms.
    pub fn start(shared: Arc<Shared>, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        };
        if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
            bar.set_style(style);
        }
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last = (0u64, std::time::Instant::now());
            loop {
                tick.tick().await;
                let l = &shared.live;
                let done = Live::get(&l.terminals);
                let now = std::time::Instant::now();
                let dt = now.duration_since(last.1).as_secs_f64();
                let rate = if dt > 0.0 {
                    (done.saturating_sub(last.0)) as f64 / dt
                } else {
                    0.0
                };
                last = (done, now);
                let sent = Live::get(&l.sent);
                b.set_message(format!(
                    "nodes {} sessions {} | sent {} assigned {} results {} errors {} outstanding {} | {:.0}/s",
                    Live::get(&l.nodes_ready),
                    Live::get(&l.sessions_open),
                    sent,
                    Live::get(&l.assigns),
                    Live::get(&l.results),
                    Live::get(&l.errors),
                    sent.saturating_sub(done),
                    rate,
                ));
                b.tick();
            }
        });
        Self { bar, task }
    }

    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
