//! The slots of one listener's plain HTTP connections (`limits.max_http_connections`), in
//! accept order, each knowing whether a request is in flight on it.
//!
//! A full listener does not stop accepting while some of its connections are idle (no
//! request in flight: waiting for their first request or between kept-alive requests): the
//! oldest idle one is asked to close ([`Slots::make_way`]) and its slot goes to the
//! new connection. Otherwise idle kept-alive connections — anyone's, an attacker's — would
//! hold every slot and keep new connections, WebSocket upgrades of nodes and sessions
//! included, waiting in the backlog. Only when every slot has a request in flight (console
//! streams, slow handlers) does the listener wait for one to end or go idle. An upgraded
//! connection has left its slot (its task ended with the upgrade): it is neither counted nor
//! ever closed here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// One connection's place in [`Slots`].
struct Entry {
    /// Requests in flight (from the request's arrival to the end of its response body).
    busy: Arc<AtomicUsize>,
    /// Notified (once) when the connection must make way for a new one.
    evict: Arc<Notify>,
    /// Asked to close already: not chosen again, still counted until it is gone.
    evicting: bool,
}

/// What [`Slots::make_way`] did.
#[derive(Debug, PartialEq)]
pub(super) enum MakeWay {
    /// The oldest idle connection was asked to close.
    Evicted,
    /// One asked before is still closing.
    Closing,
    /// Every connection has a request in flight.
    AllBusy,
}

/// The HTTP connections of one listener.
pub(super) struct Slots {
    cap: usize,
    conns: Mutex<(u64, BTreeMap<u64, Entry>)>,
    /// Notified when a connection leaves its slot or goes idle.
    changed: Notify,
}

/// A connection's slot, freed when dropped (the connection closed or was upgraded).
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub(super) busy: Arc<AtomicUsize>,
    pub(super) evict: Arc<Notify>,
}

/// A request in flight on a connection: dropped with the end of its response body.
pub(super) struct Busy {
    slots: Arc<Slots>,
    busy: Arc<AtomicUsize>,
}

impl Slots {
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            conns: Mutex::new((0, BTreeMap::new())),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (u64, BTreeMap<u64, Entry>)> {
        // Every change leaves the map consistent: a poisoned lock is still usable.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection, if one is free.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut g = self.lock();
        if g.1.len() >= self.cap {
            return None;
        }
        g.0 += 1;
        let id = g.0;
        let (busy, evict) = (Arc::default(), Arc::new(Notify::new()));
        g.1.insert(
            id,
            Entry {
                busy: Arc::clone(&busy),
                evict: Arc::clone(&evict),
                evicting: false,
            },
        );
        Some(Slot {
            slots: Arc::clone(self),
            id,
            busy,
            evict,
        })
    }

    /// Make way for one new connection: ask the oldest idle connection to close, unless one
    /// asked already is still closing (one new connection, one eviction).
    pub(super) fn make_way(&self) -> MakeWay {
        let mut g = self.lock();
        if g.1.values().any(|e| e.evicting) {
            return MakeWay::Closing;
        }
        let idle =
            g.1.values_mut()
                .find(|e| e.busy.load(Ordering::Acquire) == 0);
        match idle {
            Some(e) => {
                e.evicting = true;
                e.evict.notify_one();
                MakeWay::Evicted
            }
            None => MakeWay::AllBusy,
        }
    }

    /// Resolves when a connection leaves its slot or goes idle after this was called
    /// (and enabled): call it before looking, so nothing in between is missed.
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().1.remove(&self.id);
        self.slots.changed.notify_waiters();
    }
}

impl Slot {
    /// Mark a request in flight until the returned guard is dropped.
    pub(super) fn busy(slots: &Arc<Slots>, busy: &Arc<AtomicUsize>) -> Busy {
        busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            slots: Arc::clone(slots),
            busy: Arc::clone(busy),
        }
    }

    /// What a request guard needs ([`Slot::busy`]).
    pub(super) fn parts(&self) -> (Arc<Slots>, Arc<AtomicUsize>) {
        (Arc::clone(&self.slots), Arc::clone(&self.busy))
    }

    /// No request in flight.
    pub(super) fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.slots.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_way_and_busy_ones_stay() {
        let s = Slots::new(2);
        let a = s.try_take().expect("a");
        let b = s.try_take().expect("b");
        assert!(s.try_take().is_none(), "full");
        let req = Slot::busy(&s, &a.busy);
        assert_eq!(s.make_way(), MakeWay::Evicted, "b is idle");
        assert_eq!(s.make_way(), MakeWay::Closing, "b is closing");
        drop(b);
        assert_eq!(s.make_way(), MakeWay::AllBusy, "a is busy");
        let c = s.try_take().expect("b's slot is free");
        drop(c);
        assert!(!a.idle());
        drop(req);
        assert!(a.idle());
    }
}
