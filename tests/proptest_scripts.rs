//! Property-based state-machine test of the Lua scripts (issue 14, the safety net).
//!
//! Random sequences of operations — node register/reconnect (with capacity and capability
//! changes), heartbeat, disconnect, drain and undrain, job acks, starts and partial text,
//! job results (success, MODEL_NOT_AVAILABLE, failure, stale attempts), session
//! open/submit/drop/resume/close, streamed audio (chunks cut by is_final, size, duration,
//! the sweep's pause clock and the close; held cuts and a full buffer when no index is
//! free; resent chunks), time passing with sweeps, a stalled
//! inbox consumer, and an instance crash whose inbox another instance takes over (with the
//! entries a stall left in it) — run through the real scripts
//! (the typed `store` functions) on a real redis-server, from three simulated instances
//! (`common::cell`). After every step: the Redis invariants of DESIGN §1
//! (`common::invariants`) and what the clients received (`common::model`): one terminal
//! message per utterance index, in order unless the reorder window passed, nothing held
//! past that window after a sweep.
//!
//! A failure prints the shrunk operation sequence. `PROPTEST_CASES` sets the number of
//! cases (default 32: `make test`; `make proptest` runs many more).

mod common;

use common::RedisServer;
use common::cell::{Answer, Cell};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// One thing that happens in the cell. Small integers pick a node, instance, session or
/// piece of work (modulo what exists), so every sequence is valid and shrinks well.
#[derive(Debug, Clone)]
enum Op {
    /// A node (re)connects through instance `via`: new connection token, capability
    /// variant `caps` (en→zh, both, zh→en, none), capacity 1 or 2.
    Register {
        node: u8,
        via: u8,
        caps: u8,
        capacity: u8,
    },
    /// A heartbeat, possibly announcing other capabilities.
    Heartbeat { node: u8, caps: u8 },
    /// The node's socket closes (offline at once, or after a grace).
    Disconnect { node: u8, grace: bool },
    /// The node answers one attempt it was given (stale ones included).
    Result { node: u8, pick: u8, answer: Answer },
    /// A new session through instance `via`, en→zh or zh→en.
    Open { via: u8, pair: u8 },
    /// The session sends its next utterance (`skip` leaves a gap; `again` repeats the last).
    Submit {
        session: u8,
        skip: bool,
        again: bool,
    },
    /// The session's socket drops.
    Drop { session: u8 },
    /// The session resumes through `via` with its last received index.
    Resume { session: u8, via: u8 },
    /// The session's keys all expire while its jobs run, and its id is minted again for a
    /// new session through `via`.
    Reopen { session: u8, via: u8 },
    /// Time passes (`ms`), then instance `via` sweeps.
    Advance { ms: u16, via: u8 },
    /// Instance `via` dies and restarts under a new id; the others take its inbox over.
    Crash { via: u8 },
    /// Instance `via`'s inbox consumer stalls until the next `Advance`, so its inbox fills
    /// (and a `Crash` leaves entries for the takeover to re-route).
    Stall { via: u8 },
    /// The session streams an audio chunk (`long`: 900 ms, else 100 ms; `last`: is_final;
    /// `again`: the previous chunk's number resent).
    Chunk {
        session: u8,
        long: bool,
        last: bool,
        again: bool,
    },
    /// The client ends the session (its buffer's last cut).
    Close { session: u8 },
    /// An operator drains (`on`) or undrains a node through instance `via`.
    Drain { node: u8, on: bool, via: u8 },
    /// The node acknowledges (`kind` 0), starts (1) or reports partial text (2) on one
    /// attempt it holds.
    Progress { node: u8, pick: u8, kind: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    let n = || 0u8..3;
    let answer = prop_oneof![
        4 => Just(Answer::Ok),
        2 => Just(Answer::Large),
        1 => Just(Answer::ModelNotAvailable),
        1 => Just(Answer::Error),
    ];
    let ms = prop_oneof![Just(10u16), Just(200), Just(400)];
    let rare = || prop::bool::weighted(0.15);
    prop_oneof![
        3 => (n(), n(), 0u8..4, 1u8..3)
            .prop_map(|(node, via, caps, capacity)| Op::Register { node, via, caps, capacity }),
        2 => (n(), 0u8..4).prop_map(|(node, caps)| Op::Heartbeat { node, caps }),
        1 => (n(), any::<bool>()).prop_map(|(node, grace)| Op::Disconnect { node, grace }),
        8 => (n(), any::<u8>(), answer).prop_map(|(node, pick, answer)| Op::Result { node, pick, answer }),
        3 => (n(), 0u8..2).prop_map(|(via, pair)| Op::Open { via, pair }),
        8 => (n(), rare(), rare()).prop_map(|(session, skip, again)| Op::Submit { session, skip, again }),
        1 => n().prop_map(|session| Op::Drop { session }),
        1 => (n(), n()).prop_map(|(session, via)| Op::Resume { session, via }),
        1 => (n(), n()).prop_map(|(session, via)| Op::Reopen { session, via }),
        2 => (ms, n()).prop_map(|(ms, via)| Op::Advance { ms, via }),
        1 => n().prop_map(|via| Op::Crash { via }),
        2 => n().prop_map(|via| Op::Stall { via }),
        12 => (n(), any::<bool>(), prop::bool::weighted(0.3), rare())
            .prop_map(|(session, long, last, again)| Op::Chunk { session, long, last, again }),
        1 => n().prop_map(|session| Op::Close { session }),
        1 => (n(), prop::bool::weighted(0.7), n()).prop_map(|(node, on, via)| Op::Drain { node, on, via }),
        2 => (n(), any::<u8>(), 0u8..3).prop_map(|(node, pick, kind)| Op::Progress { node, pick, kind }),
    ]
}

async fn apply(cell: &mut Cell, op: &Op) -> Result<(), switchyard::store::StoreError> {
    match *op {
        Op::Register {
            node,
            via,
            caps,
            capacity,
        } => cell.register(node, via, caps, capacity).await,
        Op::Heartbeat { node, caps } => cell.heartbeat(node, caps).await,
        Op::Disconnect { node, grace } => cell.disconnect(node, grace).await,
        Op::Result { node, pick, answer } => cell.result(node, pick, answer).await,
        Op::Open { via, pair } => cell.open(via, pair).await,
        Op::Submit {
            session,
            skip,
            again,
        } => cell.submit(session, skip, again).await,
        Op::Drop { session } => cell.drop_session(session).await,
        Op::Resume { session, via } => cell.resume(session, via).await,
        Op::Reopen { session, via } => cell.reopen(session, via).await,
        Op::Advance { ms, via } => cell.advance(ms, via).await,
        Op::Crash { via } => cell.crash(via).await,
        Op::Stall { via } => cell.stall(via).await,
        Op::Chunk {
            session,
            long,
            last,
            again,
        } => cell.chunk(session, long, last, again).await,
        Op::Close { session } => cell.close(session).await,
        Op::Drain { node, on, via } => cell.drain(node, on, via).await,
        Op::Progress { node, pick, kind } => cell.progress(node, pick, kind).await,
    }
}

/// One case: a fresh cell, then every operation followed by every check. Returns the cell
/// as the last step left it.
async fn run_case(redis: &RedisServer, ops: &[Op]) -> Result<Cell, TestCaseError> {
    let fail = |e: String| TestCaseError::fail(e);
    let mut cell = Cell::new(redis).await.map_err(|e| fail(e.to_string()))?;
    for (i, op) in ops.iter().enumerate() {
        cell.clients.step = i as u64 + 1;
        cell.clients.step_started = Some(std::time::Instant::now());
        let step = format!("step {} {op:?}", i + 1);
        apply(&mut cell, op)
            .await
            .map_err(|e| fail(format!("{step}: {e}")))?;
        let bad = cell.check().await;
        if !bad.is_empty() {
            let got = cell.clients.summary();
            return Err(fail(format!(
                "after {step}:\n  {}\n  received: {got}",
                bad.join("\n  ")
            )));
        }
    }
    if std::env::var_os("PROPTEST_VERBOSE").is_some() {
        let c = &cell.clients;
        let takeover = format!("takeover re-routed {}, dropped {}", c.rerouted, c.dropped);
        let fleet = format!("fleet refusals {}", c.fleet_refused);
        let audio = format!("cuts {:?}, full {}", c.cuts, c.full);
        eprintln!(
            "{} ops; {takeover}; {fleet}; {audio}; received {}",
            ops.len(),
            c.summary()
        );
    }
    Ok(cell)
}

#[test]
fn scripts_keep_the_invariants_under_random_operations() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    let config = Config {
        cases: cases.unwrap_or(32),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = rt.block_on(RedisServer::start());
    let ops = prop::collection::vec(op(), 1..60);
    let result =
        TestRunner::new(config).run(&ops, |ops| rt.block_on(run_case(&redis, &ops)).map(|_| ()));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A sequence the property test shrank to in a long hunt (session `s2` received index 0
/// after index 1): the scripts had rightly skipped index 0 once its reorder window passed on
/// Redis' clock, while the model only counted windows passed by an `advance` step — the
/// model now also counts real time. Kept as a fixed case: every later change to the scripts
/// replays it in `make test`.
#[test]
fn shrunk_case_reorder_after_a_crash_and_a_resume() {
    use Answer::*;
    use Op::*;
    let reg = |node, via, caps, capacity| Register {
        node,
        via,
        caps,
        capacity,
    };
    let submit = |session| Submit {
        session,
        skip: false,
        again: false,
    };
    let ops = vec![
        Open { via: 1, pair: 1 },
        Open { via: 2, pair: 0 },
        Open { via: 0, pair: 1 },
        reg(0, 0, 1, 2),
        submit(0),
        submit(1),
        submit(2),
        submit(1),
        reg(0, 2, 3, 2),
        reg(0, 1, 3, 2),
        submit(2),
        Open { via: 0, pair: 1 },
        Open { via: 0, pair: 0 },
        Crash { via: 2 },
        submit(1),
        Stall { via: 2 },
        submit(1),
        reg(2, 0, 1, 2),
        Result {
            node: 1,
            pick: 249,
            answer: ModelNotAvailable,
        },
        Resume { session: 1, via: 0 },
        Open { via: 0, pair: 0 },
        Open { via: 2, pair: 1 },
        // 140 ms, under the window (150): no `advance` step passes it, real time does (the
        // hunt's 10 ms reached it only on a slow run; the replay checks it is reached)
        Advance { ms: 140, via: 1 },
        submit(0),
        Result {
            node: 2,
            pick: 125,
            answer: Ok,
        },
        reg(0, 0, 2, 1),
    ];
    let r = replay(&ops);
    let late: u64 = r.cell.clients.sessions.iter().map(|s| s.late).sum();
    assert!(
        late > 0,
        "no index arrived after its window passed: the case no longer reaches its target"
    );
}

/// A sequence the property test found once `jobs.queue_max` was small (cell.rs): a job that
/// failed over found no node with room and its queue full, and failed without explaining
/// that last choice (`route:2`;
/// `invariants::unexplained_failures`). Kept as a fixed case: the default 32 random cases
/// rarely reach it.
#[test]
fn shrunk_case_a_failover_into_a_full_queue() {
    use Op::*;
    let reg = |node, via, caps, capacity| Register {
        node,
        via,
        caps,
        capacity,
    };
    let submit = |session| Submit {
        session,
        skip: false,
        again: false,
    };
    let ops = vec![
        reg(1, 0, 0, 1),
        Heartbeat { node: 1, caps: 1 },
        Open { via: 0, pair: 0 },
        reg(0, 0, 0, 1),
        submit(0),
        reg(0, 0, 1, 1),
        submit(0),
        reg(0, 1, 2, 1),
        submit(2),
        Advance { ms: 200, via: 2 },
        submit(2),
        reg(2, 2, 1, 1),
        submit(0),
        Advance { ms: 10, via: 1 },
        // (added when the replay was made to check its target: the model's choices had
        // moved since the hunt, and the queue was full without any failover into it)
        Result {
            node: 2,
            pick: 0,
            answer: Answer::ModelNotAvailable,
        },
    ];
    let r = replay(&ops);
    assert!(
        r.any_job_field("|queue_full>"),
        "no job ended explaining a full queue: the case no longer reaches its target"
    );
}

/// A sequence `make proptest` found (500 cases): a large result for a session whose
/// instance stalled went to that instance's inbox naming its body's key; the session's keys
/// then all expired (`Reopen`), the body with them. The consumer drops such an entry
/// (src/routing/inbox.rs `message`: the body is gone); the model expected every body to
/// exist. It now drops it too, and still fails if the connection is one a session is bound
/// to. Kept as a fixed case.
#[test]
fn shrunk_case_a_large_result_in_the_inbox_of_an_expired_session() {
    use Op::*;
    let ops = vec![
        Open { via: 0, pair: 1 },
        Stall { via: 0 },
        Register {
            node: 0,
            via: 1,
            caps: 1,
            capacity: 1,
        },
        Submit {
            session: 0,
            skip: false,
            again: false,
        },
        Result {
            node: 0,
            pick: 0,
            answer: Answer::Large,
        },
        Reopen { session: 0, via: 0 },
        Advance { ms: 10, via: 0 },
    ];
    let r = replay(&ops);
    assert!(
        r.cell.clients.bodiless > 0,
        "no inbox entry lost its body: the case no longer reaches its target"
    );
}

/// A fleet credential's count (cell.rs `fleet`: the nodes of slot 0 share `fleet-a`, two
/// places) fills, refuses a third node, frees the place of a node that goes offline, and
/// refuses a heartbeat that would revive an offline node into a full count. Kept as a fixed
/// case: random sequences reach the refusals only now and then.
#[test]
fn fixed_case_a_full_fleet_credential() {
    use Op::*;
    let reg = |node, via| Register {
        node,
        via,
        caps: 0,
        capacity: 1,
    };
    let ops = vec![
        reg(0, 0),
        reg(1, 0),
        reg(2, 0), // refused: fleet-a holds n0 and n1
        Disconnect {
            node: 0,
            grace: false,
        },
        reg(2, 0), // n0's place
        Heartbeat { node: 2, caps: 0 },
        // n1 and n2 fall silent: the sweep takes them offline (liveness 800 ms), while the
        // model keeps n1's connection open
        Advance { ms: 400, via: 1 },
        Advance { ms: 400, via: 1 },
        Advance { ms: 200, via: 1 },
        reg(0, 0),
        reg(2, 0),
        Heartbeat { node: 1, caps: 0 }, // refused: fleet-a is full again
    ];
    let r = replay(&ops);
    assert_eq!(
        r.cell.clients.fleet_refused, 2,
        "one registration and one revival refused: the case no longer reaches its target"
    );
}

/// One fixed sequence run on a fresh redis-server, as a property case does: the cell as it
/// left it, to check the case still reaches what it was kept for.
struct Replayed {
    rt: tokio::runtime::Runtime,
    redis: RedisServer,
    cell: Cell,
}

fn replay(ops: &[Op]) -> Replayed {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = rt.block_on(RedisServer::start());
    let cell = match rt.block_on(run_case(&redis, ops)) {
        Ok(cell) => cell,
        Err(e) => panic!("{e}"),
    };
    Replayed { rt, redis, cell }
}

impl Replayed {
    /// Whether some job record has a field whose value contains `needle`.
    fn any_job_field(&self, needle: &str) -> bool {
        self.rt.block_on(async {
            let mut c = self.redis.client().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*job:job-*")
                .query_async(&mut c)
                .await
                .expect("keys");
            for k in keys.iter().filter(|k| !k.ends_with(":audio")) {
                let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(k)
                    .query_async(&mut c)
                    .await
                    .expect("hgetall");
                if h.values().any(|v| v.contains(needle)) {
                    return true;
                }
            }
            false
        })
    }
}

/// Streamed audio while the delivery cursor waits: two long chunks make a max-duration cut,
/// until every index up to `max_index_ahead` past the cursor has a job; the next cut finds
/// none free and holds its audio, which then takes chunks until twice the buffer bound and
/// refuses the next (`Full`: its is_final still marks the held audio a manual cut). Answers
/// free indices, and the sweep's retry of the held cut takes the audio. Kept as a fixed
/// case: random sequences reach a full buffer only now and then.
#[test]
fn fixed_case_a_held_cut_and_a_full_buffer() {
    use Op::*;
    let chunk = |long, last| Chunk {
        session: 0,
        long,
        last,
        again: false,
    };
    let mut ops = vec![
        Open { via: 0, pair: 0 },
        Register {
            node: 0,
            via: 1,
            caps: 1,
            capacity: 2,
        },
    ];
    // 5 cuts (indices 0-4: 2 dispatched, 2 queued, 1 refused by the full queue), then held
    ops.extend(std::iter::repeat_n(chunk(true, false), 14));
    ops.push(chunk(false, true)); // refused: full
    ops.extend([
        Result {
            node: 0,
            pick: 0,
            answer: Answer::Ok,
        },
        Result {
            node: 0,
            pick: 0,
            answer: Answer::Ok,
        },
        Advance { ms: 400, via: 2 },
        Advance { ms: 400, via: 2 },
    ]);
    let r = replay(&ops);
    let c = &r.cell.clients;
    assert!(
        c.full > 0 && c.cuts.get("learned").is_some_and(|n| *n > 0),
        "no full buffer, or no held cut taken later ({:?}, full {}): the case no longer \
         reaches its target",
        c.cuts,
        c.full
    );
}

/// A pause cut (the sweep's, after `session.pause_ms` without a chunk) and the close's
/// last cut, each of audio long enough to be speech; a chunk too short to be speech alone
/// is dropped at its is_final. Kept as a fixed case.
#[test]
fn fixed_case_pause_and_close_cuts() {
    use Op::*;
    let chunk = |long, last| Chunk {
        session: 0,
        long,
        last,
        again: false,
    };
    let ops = vec![
        Open { via: 0, pair: 1 },
        Register {
            node: 1,
            via: 2,
            caps: 1,
            capacity: 1,
        },
        chunk(false, true), // 100 ms: a click, no job
        chunk(false, false),
        chunk(false, false),
        Advance { ms: 400, via: 1 }, // pause cut
        chunk(true, false),
        Chunk {
            session: 0,
            long: true,
            last: false,
            again: true,
        },
        Close { session: 0 },
        Result {
            node: 1,
            pick: 0,
            answer: Answer::Ok,
        },
        Advance { ms: 400, via: 0 },
        Result {
            node: 1,
            pick: 0,
            answer: Answer::Large,
        },
        Advance { ms: 10, via: 0 },
    ];
    let r = replay(&ops);
    let c = &r.cell.clients;
    let s = &c.sessions[0];
    assert!(
        c.cuts.get("learned") == Some(&1) && c.cuts.get("close") == Some(&1),
        "cuts {:?}: the case no longer reaches its target",
        c.cuts
    );
    assert_eq!(
        s.got.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "the pause cut's and the close's utterances, each once"
    );
}
