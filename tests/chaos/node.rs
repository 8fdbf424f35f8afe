//! The chaos node: a roaming node (`common::roaming`) that answers each job after 30-150 ms,
//! reconnects to another instance when its connection dies (`NodeSpread`), re-registers with its id and
//! sends the results it finished while disconnected; it counts its reconnects, how long each
//! took and the registrations refused as conflicts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::RngExt;
use serde_json::Value;

use super::{Counts, NodeSpread, url_for};
use crate::common::roaming::{Roam, roaming_node};

/// A node of the chaos run, in `tenant`'s cell (the `cell`-th).
struct ChaosNode {
    tenant: Option<String>,
    cell: usize,
    urls: Arc<Vec<String>>,
    spread: Arc<NodeSpread>,
    /// The instance of its last connection attempt.
    at: Option<usize>,
    counts: Arc<Counts>,
}

impl Roam for ChaosNode {
    fn url(&mut self) -> String {
        let i = self.spread.pick(self.cell, self.at);
        self.at = Some(i);
        url_for(&self.urls[i], "/ws/node", self.tenant.as_deref())
    }

    fn registered(&mut self, again: bool, away: Option<Duration>) {
        if again {
            self.counts.node_reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(away) = away {
            let ms = away.as_millis() as u64;
            self.counts.reconnect_ms.lock().unwrap().push(ms);
        }
    }

    fn refused(&mut self, code: &str) {
        if code == "NODE_ID_CONFLICT" {
            self.counts.node_conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn delay(&mut self, _assign: &Value) -> Duration {
        Duration::from_millis(rand::rng().random_range(30..150))
    }
}

/// A lingua-like node that answers after 30-150 ms and survives instance deaths.
pub(super) async fn chaos_node(
    (tenant, cell): (Option<String>, usize),
    urls: Arc<Vec<String>>,
    spread: Arc<NodeSpread>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let node = ChaosNode {
        tenant,
        cell,
        urls,
        spread,
        at: None,
        counts,
    };
    roaming_node(node, 4, stop).await;
}
