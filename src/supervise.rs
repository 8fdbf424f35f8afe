//! Background tasks that must run for the instance's whole life, restarted when they end.
//!
//! Each cell has four loops ([`crate::server::start`]): the sweeper, the presence beat, the
//! inbox consumer and the console's statistics. None of them returns before shutdown, and
//! none is meant to panic; but a panic in one (a bug) used to end it silently while the
//! instance went on serving. With the presence beat gone, the instance never learns that
//! its presence lapsed and keeps connections whose messages a peer took over; with every
//! instance's sweeper gone, no deadline fires.
//!
//! [`spawn`] runs such a loop as a task of its own and watches it. If it ends before
//! shutdown — a panic, or a return — it is logged at `error` with the panic's message,
//! counted in `switchyard_task_restarts_total{cell,task}`, and started again after a
//! back-off: 100 ms, doubled at each restart up to 10 s, back to 100 ms once a run lasted a
//! minute (a loop that panics at once does not spin). What a loop must remember across a
//! restart (the inbox consumer's entries written but not acknowledged, the presence beat's
//! lapse to acknowledge) is kept by the caller, outside the loop ([`crate::server::start`]);
//! everything else it reads again from Redis.
//!
//! Aborting the supervisor (a crash in tests, [`crate::server::Running::abort`]) aborts the
//! task it watches too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::telemetry::metrics::Metrics;

/// The first back-off after a task ended, and its ceiling.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long resets the back-off: the task was working.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Aborts the watched task when the supervisor itself is dropped or aborted.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `make()`'s future as a task, and again each time it ends before `stop` turns true.
/// `cell` and `task` name it in the log and the metric.
pub fn spawn<F, Fut>(
    metrics: Arc<Metrics>,
    cell: String,
    task: &'static str,
    stop: watch::Receiver<bool>,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // The series exists from the start, at 0: an alert on its increase sees the first one.
    metrics.task_supervised(&cell, task);
    tokio::spawn(async move {
        let mut stop = stop;
        let mut backoff = FIRST_BACKOFF;
        loop {
            // (a loop started after shutdown would wait for a change that already came)
            if *stop.borrow() {
                return;
            }
            let began = tokio::time::Instant::now();
            let mut run = AbortOnDrop(tokio::spawn(make()));
            let ended = (&mut run.0).await;
            if *stop.borrow() {
                return;
            }
            let why = match ended {
                Ok(()) => "it returned".to_string(),
                Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(e.into_panic())),
                // (only an abort cancels it: the supervisor's own, which ends this loop too)
                Err(_) => return,
            };
            if began.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(
                cell = %cell,
                task,
                restart_in_ms = backoff.as_millis() as u64,
                "background task ended before shutdown ({why}); restarting it"
            );
            metrics.task_restarted(&cell, task);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "(no message)".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn restarts(m: &Metrics, task: &str) -> String {
        let text = m.encode();
        text.lines()
            .filter(|l| l.starts_with("switchyard_task_restarts_total") && l.contains(task))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A task that panics twice, then runs: it is started three times, counted twice,
    /// and still runs after the panics.
    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = watch::channel(false);
        let r = runs.clone();
        let sup = spawn(metrics.clone(), "main".into(), "sweeper", rx, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("deliberate panic {n}");
                }
                std::future::pending::<()>().await
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "started again after each panic"
        );
        let line = restarts(&metrics, "sweeper");
        assert!(
            line.contains("cell=\"main\"") && line.ends_with(" 2"),
            "two restarts counted: {line}"
        );
        tx.send(true).expect("stop");
        sup.abort();
    }

    /// A task that returns at shutdown is not restarted; one that returns before is.
    #[tokio::test]
    async fn only_an_end_before_shutdown_restarts() {
        let metrics = Arc::new(Metrics::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = watch::channel(false);
        let (r, stop) = (runs.clone(), rx.clone());
        let sup = spawn(metrics.clone(), "main".into(), "presence", rx, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let mut stop = stop.clone();
            async move {
                if n == 0 {
                    return; // ends at once: a bug, restarted
                }
                let _ = stop.wait_for(|s| *s).await;
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        tx.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(1), sup)
            .await
            .expect("the supervisor ends at shutdown")
            .expect("no panic");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "not restarted at shutdown");
        assert!(restarts(&metrics, "presence").ends_with(" 1"));
    }

    /// Aborting the supervisor aborts the task it watches.
    #[tokio::test]
    async fn aborting_the_supervisor_aborts_its_task() {
        let metrics = Arc::new(Metrics::new());
        let (_tx, rx) = watch::channel(false);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(Some(done_tx)));
        let h = held.clone();
        let sup = spawn(metrics, "main".into(), "inbox", rx, move || {
            // the sender is dropped with the task: the receiver then sees it closed
            let tx = h.lock().expect("lock").take();
            async move {
                let _tx = tx;
                std::future::pending::<()>().await
            }
        });
        let ran = held.clone();
        while ran.lock().expect("lock").is_some() {
            tokio::task::yield_now().await; // until the task was started
        }
        sup.abort();
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("the task ended with its supervisor")
            .expect_err("dropped, not sent");
    }
}
