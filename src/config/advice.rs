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
        // A large result's body is kept idle TTL + 2 x retention (src/store/stage.rs); its log
        // entry stays until the cursor passes it, which may wait for an earlier job's every
        // attempt, and the trim after (an eighth of the retention).
        let (s, j) = (&self.session, &self.jobs);
        let body = s
            .idle_ttl_ms
            .saturating_add(s.result_retention_ms.saturating_mul(2));
        let entry = j.longest_job_ms().saturating_add(s.result_retention_ms / 8);
        if body < entry {
            out.push(format!(
                "session.idle_ttl_ms + 2 × session.result_retention_ms ({body}) is below \
                 jobs.max_attempts × (jobs.run_timeout_ms + jobs.queue_wait_ms) + an eighth of \
                 the retention ({entry}): a large result delivered past an earlier one that \
                 runs that long can lose its body before its log entry, and a resume then \
                 skips it"
            ));
        }
        // A public key or JWKS is usually an identity provider's, which issues tokens to
        // other services too; without `aud` they all pass here where their scope names match.
        let provider = !self.auth.public_key_files.is_empty() || self.auth.jwks_file.is_some();
        if !self.auth.is_open() && provider && self.auth.audience.is_none() {
            out.push(
                "auth.audience is unset while tokens are verified with public keys \
                 (auth.public_key_files / auth.jwks_file, usually an identity provider's): a \
                 token that provider issued to another service is accepted wherever its scope \
                 names match; set auth.audience (and auth.issuer)"
                    .into(),
            );
        }
        let r = &self.redis;
        if r.mode == super::RedisMode::Cluster {
            // Every call to a primary shares the one cluster connection to it, and Redis reads
            // nothing more from a client blocked in WAIT (topology audit).
            if r.wait_replicas > 0 {
                out.push(format!(
                    "redis.wait_replicas ({}) in cluster mode: every call to a primary waits \
                    behind each WAIT on the one cluster connection to it, up to \
                    redis.wait_timeout_ms each while a replica lags: state changes to that \
                    primary then run one at a time",
                    r.wait_replicas
                ));
            }
            // The dedicated connections (inbox consumers) are built from the seeds again at
            // every reconnect: one seed that is a primary's own address is gone with it.
            let seeds = r.seeds();
            // (the host as the connector reads the URL; validation parsed it already)
            let ip = |u: &str| {
                use ::redis::{ConnectionAddr, IntoConnectionInfo};
                u.into_connection_info().is_ok_and(|i| match i.addr() {
                    ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => {
                        h.parse::<std::net::IpAddr>().is_ok()
                    }
                    _ => false,
                })
            };
            if seeds.len() == 1 && seeds.iter().all(|u| ip(u)) {
                out.push(
                    "redis.urls names one cluster node by its IP address: connections made \
                    later (the inbox consumers, after a reconnect) start from it, and cannot \
                    while that node is down, although the cluster failed over; list several \
                    nodes, or a DNS name that resolves to them"
                        .into(),
                );
            }
        }
        out
    }
}
