//! The inbox consumer's memory of entries it wrote to their sockets but could not
//! acknowledge (the XACK failed): read again after the reconnect, they are acknowledged
//! without a second write (a node would run a `job_assign` twice). Entry ids are unique in
//! their stream; the memory is bounded and lives as long as the consumer task.

use std::collections::{HashSet, VecDeque};

/// Entry ids written to their socket whose XACK may not have reached Redis, remembered.
pub const WRITTEN_KEPT: usize = 4096;

/// Entries written but not known to be acknowledged (see the module comment).
#[derive(Default)]
pub(super) struct Written {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Written {
    pub(super) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub(super) fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > WRITTEN_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    /// These entries are acknowledged: nothing to remember.
    pub(super) fn acked(&mut self, ids: &[&str]) {
        for id in ids {
            self.ids.remove(*id);
        }
        self.order.retain(|i| self.ids.contains(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_entries_are_remembered_until_acked_and_bounded() {
        let mut w = Written::default();
        w.insert("1-0");
        w.insert("2-0");
        assert!(w.contains("1-0"));
        w.acked(&["1-0"]);
        assert!(!w.contains("1-0") && w.contains("2-0"));
        for i in 0..WRITTEN_KEPT + 10 {
            w.insert(&format!("{}-1", i + 10));
        }
        assert!(!w.contains("2-0"), "the oldest is forgotten");
        assert_eq!((w.ids.len(), w.order.len()), (WRITTEN_KEPT, WRITTEN_KEPT));
    }
}
