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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One connection's place in [`Slots`].
struct Entry {
    /// Requests in flight (from the request's arrival to the end of its response body).
    busy: Arc<AtomicUsize>,
    /// Notified (once) when the connection must make way for a new one.
    evict: Arc<Notify>,
    /// Asked to close already: not chosen again, still counted until it is gone.
    evicting: bool,
    /// When it was accepted, and whether its first request has come: one that has not is
    /// left [`FRESH`] to send it before it may be closed to make way (a storm of nodes and
    /// sessions reconnecting at once waits in the backlog rather than being cut).
    since: Instant,
    served: Arc<AtomicBool>,
}

/// How long a new connection may take to send its first request before it counts as idle.
pub(super) const FRESH: Duration = Duration::from_secs(1);

impl Entry {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Idle, not asked to close yet, and past its first request or its [`FRESH`] time.
    fn evictable(&self) -> bool {
        !self.evicting
            && self.idle()
            && (self.served.load(Ordering::Relaxed) || self.since.elapsed() >= FRESH)
    }
}

/// What [`Slots::make_way`] did.
#[derive(Debug, PartialEq)]
pub(super) enum MakeWay {
    /// The oldest idle connection was asked to close.
    Evicted,
    /// One asked before is still closing.
    Closing,
    /// Every connection has a request in flight, or is new and has not sent its first
    /// request: the oldest of those may be closed in the given time.
    AllBusy(Option<Duration>),
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

    /// A slot for a new connection, if one is free. `served`: set by the connection at its
    /// first request.
    pub(super) fn try_take(self: &Arc<Self>, served: &Arc<AtomicBool>) -> Option<Slot> {
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
                since: Instant::now(),
                served: Arc::clone(served),
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
    /// asked already is still closing (one new connection, one eviction). One asked that
    /// took a request meanwhile closes only once its request is done: it does not count,
    /// another idle one is asked (review finding: it held the listener shut).
    pub(super) fn make_way(&self) -> MakeWay {
        let mut g = self.lock();
        if g.1.values().any(|e| e.evicting && e.idle()) {
            return MakeWay::Closing;
        }
        if let Some(e) = g.1.values_mut().find(|e| e.evictable()) {
            e.evicting = true;
            e.evict.notify_one();
            return MakeWay::Evicted;
        }
        let fresh =
            g.1.values()
                .filter(|e| !e.evicting && e.idle())
                .map(|e| FRESH.saturating_sub(e.since.elapsed()))
                .min();
        MakeWay::AllBusy(fresh)
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

    /// A connection past its first request.
    fn served() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(true))
    }

    #[test]
    fn the_oldest_idle_connection_makes_way_and_busy_ones_stay() {
        let s = Slots::new(2);
        let a = s.try_take(&served()).expect("a");
        let b = s.try_take(&served()).expect("b");
        assert!(s.try_take(&served()).is_none(), "full");
        let req = Slot::busy(&s, &a.busy);
        assert_eq!(s.make_way(), MakeWay::Evicted, "b is idle");
        assert_eq!(s.make_way(), MakeWay::Closing, "b is closing");
        drop(b);
        assert_eq!(s.make_way(), MakeWay::AllBusy(None), "a is busy");
        let c = s.try_take(&served()).expect("b's slot is free");
        drop(c);
        assert!(!a.idle());
        drop(req);
        assert!(a.idle());
    }

    /// Review finding: the idle connection asked to close took a request before it saw
    /// the notice; every later call answered `Closing` and no other idle connection was
    /// asked, so the listener stayed shut as long as that request ran.
    #[test]
    fn one_asked_to_close_that_took_a_request_does_not_hold_the_others() {
        let s = Slots::new(2);
        let a = s.try_take(&served()).expect("a");
        let b = s.try_take(&served()).expect("b");
        assert_eq!(s.make_way(), MakeWay::Evicted, "a, the oldest, is asked");
        let _req = Slot::busy(&s, &a.busy);
        assert_eq!(s.make_way(), MakeWay::Evicted, "b is asked next");
        assert_eq!(s.make_way(), MakeWay::Closing, "b is closing");
        drop(b);
    }

    /// Review finding: a connection whose first request had not come yet counted as idle,
    /// so a storm of reconnects was cut instead of waiting in the backlog.
    #[test]
    fn a_new_connection_gets_time_for_its_first_request() {
        let s = Slots::new(1);
        let first = Arc::new(AtomicBool::new(false));
        let _a = s.try_take(&first).expect("a");
        let MakeWay::AllBusy(Some(wait)) = s.make_way() else {
            panic!("a new connection is not closed at once");
        };
        assert!(wait <= FRESH && wait > FRESH / 2, "{wait:?}");
        first.store(true, Ordering::Relaxed);
        assert_eq!(
            s.make_way(),
            MakeWay::Evicted,
            "idle after its first request"
        );
    }
}
