//! The invariant checker itself can fail: a cell's state broken by hand, rule by rule, is
//! reported in the words tests and people grep for.

use super::*;

/// State that breaks each rule of the invariant checker once, one command a line (`~`
/// stands for a space in a value).
const BROKEN: &str = "
    HSET node:n-a state ready capacity 2 reserved 2 fleet fq
    SADD node:n-a:jobs j-1
    SADD node:n-a:pools p:x p:y
    HSET node:n-b state offline capacity 1 reserved 0
    SADD node:n-b:jobs j-3
    HSET node:n-c state ready capacity 1 reserved 0
    HSET node:n-d state offline capacity 1 reserved 2
    SADD pool:p:x n-a n-b
    SADD pools p:x p:gone
    ZADD nodes:live 1 n-a 1 n-b 1 n-ghost
    ZADD due:jobs 1 j-1 1 j-3 1 j-9
    HSET job:j-1 state DISPATCHED node n-a attempt 1 route:1 1~n-a
    HSET job:j-2 state QUEUED queue p:x
    HSET job:j-3 state FINISHED node n-b attempt 2 route:2 2~n-b session s1 idx 0
    HSET session:s1:jobs 0 j-3
    HSET session:s1:results 1 +header
    HSET job:j-4 state WEIRD
    HSET job:j-5 state RUNNING node n-c attempt 1 route:1 1~n-a
    HSET job:j-6 state FAILED attempt 1 route:1 1~n-a
    HSET job:j-7 state CANCELLED attempt 1
    HSET job:j-8 state FAILED attempt 1 route:1 1~n-a end:1 5~failover
    HSET job:j-9 state QUEUED
    SADD fleet:fp:nodes n-c
    HSET session:s2 buf_bytes 5
    SET session:s3:audio abcd
    HSET session:s3 buf_bytes 3
    HSET session:s4 held_cut manual
    HSET session:s5 next_deliver 2
    HSET session:s5:results 2 x 4 y
    ZADD session:s5:pending 1 1 4 4
";

/// The checker can fail: [`BROKEN`], written straight into Redis with no instance running
/// (every key with a day's TTL, but `stray`), yields exactly the violations it should, in
/// the words tests and people grep for.
#[tokio::test]
async fn the_invariant_checker_reports_each_broken_rule() {
    let redis = RedisServer::start().await;
    let mut c = redis.client().await;
    let mut w = redis::pipe();
    for line in BROKEN.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| w.replace('~', " "))
            .collect();
        let key = format!("{PREFIX}{}", words[1]);
        w.cmd(&words[0]).arg(&key).arg(&words[2..]).ignore();
        w.cmd("PEXPIRE").arg(&key).arg(86_400_000).ignore();
    }
    w.cmd("SET").arg(format!("{PREFIX}stray")).arg("x").ignore();
    // (a key of no cell: on a cluster it lives on another node than the cell's)
    let untagged = common::redis_server::topology() == "single";
    if untagged {
        w.cmd("SET")
            .arg("untagged")
            .arg("x")
            .arg("PX")
            .arg(86_400_000)
            .ignore();
    }
    let () = w.query_async(&mut c).await.expect("write broken state");

    let mut got = invariants::violations(&mut c).await;
    got.sort();
    let mut want: Vec<String> = [
        format!("key {PREFIX}stray has no TTL and no owner"),
        r#"pools index {"p:gone", "p:x"} != non-empty pools {"p:x"}"#.into(),
        r#"pool p:x holds n-b in state Some("offline")"#.into(),
        "pool p:x holds n-b but its pools set does not list it".into(),
        "node n-a lists pool p:y but is not in it".into(),
        "node n-a reserved 2 but holds 1 active jobs".into(),
        "node n-d reserved 2 of capacity 1".into(),
        "node n-d reserved 2 but holds 0 active jobs".into(),
        "node n-b reserved 0 but holds 1 active jobs".into(),
        r#"node n-b holds job j-3 in state FINISHED on Some("n-b")"#.into(),
        "offline node n-b is still in the liveness set".into(),
        "node n-c in state ready has no liveness deadline".into(),
        "liveness set holds n-ghost without a record".into(),
        "queued job j-2 appears 0 times in queue p:x".into(),
        "queued job j-2 has no deadline".into(),
        "FINISHED job j-3 still has a deadline".into(),
        "FINISHED job j-3 (index 0) has no terminal message in s1's log".into(),
        "job j-3: attempt 1 of 2 has no end:1".into(),
        "FINISHED job j-3 is still reserved on n-b".into(),
        format!("{PREFIX}session:s1:results index 1 is logged without its body: +header"),
        r#"job j-4 in unknown state "WEIRD""#.into(),
        r#"job j-5 is RUNNING on "n-c", which does not hold it"#.into(),
        "job j-5 is RUNNING without a deadline".into(),
        r#"job j-5 is on "n-c" but route:1 says "1 n-a""#.into(),
        "job j-6 FAILED without end:1".into(),
        "job j-7 has no route:1".into(),
        "queued job j-9 names no queue".into(),
        "node n-a in state ready is not counted by its fleet credential fq".into(),
        r#"fleet credential fp counts node n-c in state Some("ready") of credential None"#.into(),
        "session s2: buf_bytes says 5 with no audio buffered".into(),
        "session s3 buffers 4 bytes of audio, buf_bytes says 3".into(),
        "session s3 buffers 4 bytes of audio without a pause clock in due:audio".into(),
        "session s4 holds a manual cut with no audio".into(),
        "session s5 has a result logged at its cursor 2".into(),
        "session s5 holds index 1 without its result".into(),
        "session s5 holds index 1, below its cursor 2".into(),
        "session s5 holds 2 results without a reorder clock".into(),
    ]
    .into_iter()
    .map(|v| format!("[{PREFIX}] {v}"))
    .collect();
    if untagged {
        want.push("key untagged carries no cell hash tag".into());
    }
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        invariants::unexplained_failures(&mut c, 3).await,
        ["job j-8 failed over at attempt 1 of 3, then failed without route:2"]
    );
}
