//! Settings that are valid on their own but work against each other: `check-config` prints
//! each as a `# warning:` line, `serve` logs each as a warning when it starts.

use super::Config;

impl Config {
    /// Valid combinations an operator most likely did not mean, one sentence each.
    pub fn advice(&self) -> Vec<String> {
        let mut out = Vec::new();
        let liveness = self.liveness_ms();
        let back = self
            .instance
            .presence_ttl_ms
            .saturating_add(self.node.heartbeat_interval_ms);
        // A node with a fleet credential takes its id back from a dead instance only once
        // that instance's presence has expired (register's conflict rule); its liveness runs
        // from its last heartbeat, up to a heartbeat interval before the instance died.
        if liveness <= back {
            out.push(format!(
                "node.liveness_ms ({liveness}) is not above instance.presence_ttl_ms + \
                 node.heartbeat_interval_ms ({back}): a node with a fleet credential whose \
                 instance dies may be taken offline, and its jobs failed over, before it can \
                 take its id back"
            ));
        }
        out
    }
}
