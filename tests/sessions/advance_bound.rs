//! The bound on how far one call advances the delivery cursor (results.lua `ADVANCE_MAX`):
//! it must reach past every index `session.max_index_ahead` lets a result be logged at,
//! or a call ends with a result logged at the cursor, which `submit` and `settle` rely on
//! never happening (DESIGN §1, `invariants::check_delivery_log`).

use super::*;
use common::cell::{Answer, Cell};

/// With `max_index_ahead` at its maximum, 10,000, every index 1..=10,000 finishes while
/// index 0 has no job (each result is held), then index 0 finishes: that one call delivers
/// 10,001 messages in order and leaves the cursor past them all. A bound of 10,000 steps
/// (the loops before `ADVANCE_MAX`) stops one short, with index 10,000 logged at the cursor.
#[tokio::test]
async fn one_call_delivers_every_index_max_index_ahead_allows() {
    const AHEAD: u64 = 10_000;
    let redis = RedisServer::start().await;
    let mut cell = Cell::with(&redis, |c| c.session.max_index_ahead = AHEAD)
        .await
        .expect("cell");
    cell.open(0, 0).await.expect("open");
    // (through the session's instance: each job_assign comes back in submit's reply)
    cell.register(0, 0, 1, 8).await.expect("register");
    // index 0 left out: the first submit skips it
    for (k, skip) in std::iter::once(true)
        .chain(std::iter::repeat_n(false, AHEAD as usize - 1))
        .enumerate()
    {
        // the node stays live (its record and liveness run on `node.liveness_ms`, 800 ms)
        if k % 20 == 0 {
            cell.heartbeat(0, 1).await.expect("heartbeat");
        }
        cell.submit(0, skip, false).await.expect("submit");
        cell.result(0, 0, Answer::Ok).await.expect("result");
    }
    let sk = format!("{PREFIX}session:s0");
    let mut c = redis.client().await;
    let held: u64 = c.zcard(format!("{sk}:pending")).await.unwrap();
    assert_eq!(held, AHEAD, "indices 1..=10,000 are held behind index 0");
    assert!(cell.clients.sessions[0].got.is_empty());

    cell.clients.sessions[0].next_index = 0;
    cell.submit(0, false, false).await.expect("submit index 0");
    cell.result(0, 0, Answer::Ok)
        .await
        .expect("result of index 0");

    assert_eq!(cell.check().await, Vec::<String>::new());
    let cursor: u64 = c.hget(&sk, "next_deliver").await.unwrap();
    assert_eq!(cursor, AHEAD + 1);
    let s = &cell.clients.sessions[0];
    assert_eq!(s.got.len() as u64, AHEAD + 1);
    assert!(
        s.got.values().all(|n| *n == 1),
        "one terminal message per index"
    );
}
