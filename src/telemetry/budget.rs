//! A bound on how many lines one source may write to the log: at most `n` per period, the
//! rest counted and reported with the next line let through. A peer that repeats a frame
//! (a node sending `node_error` at its frame rate) or an outage that fails every call must
//! not turn the log into a flood; the counters keep the full count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogBudget {
    n: u32,
    every: Duration,
    /// (start of the current period, lines let through in it, lines held back since the
    /// last one let through)
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl LogBudget {
    pub const fn new(n: u32, every: Duration) -> Self {
        Self {
            n,
            every,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// May a line be written now? `Some(held)`: yes, and `held` lines were held back
    /// before it (to say so in it); `None`: no (counted).
    pub fn take(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.0
            .is_none_or(|start| now.duration_since(start) >= self.every)
        {
            s.0 = Some(now);
            s.1 = 0;
        }
        if s.1 < self.n {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_held_back_and_counted() {
        let b = LogBudget::new(2, Duration::from_millis(50));
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            b.take(),
            Some(2),
            "the next period says how many were held back"
        );
        assert_eq!(b.take(), Some(0));
    }
}
