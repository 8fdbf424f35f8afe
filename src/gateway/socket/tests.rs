//! Unit tests of `src/gateway/socket.rs`.

use super::order::SKIPPED_KEPT;
use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

// `skip` is what `session.on_gap = "skip"` does; with "resume" (the default) the writer
// closes the connection instead and `skip` is not called.
#[test]
fn ordered_messages_wait_for_their_turn() {
    let mut o = Order::default();
    assert!(
        o.push(2, "b".into()).is_empty(),
        "held until the expected seq is known"
    );
    assert_eq!(o.expect(1), Vec::<String>::new());
    assert_eq!(o.push(1, "a".into()), s(&["a", "b"]));
    assert_eq!(o.push(4, "d".into()), Vec::<String>::new());
    assert!(o.gap_since.is_some());
    assert_eq!(o.push(3, "c".into()), s(&["c", "d"]));
    assert!(o.gap_since.is_none());
    assert!(
        o.push(2, "dup".into()).is_empty(),
        "older numbers are dropped"
    );
    o.push(7, "g".into());
    assert_eq!(o.skip(), s(&["g"]));
    assert_eq!(o.expected, Some(8));
    assert_eq!(
        o.push(6, "f".into()),
        s(&["f"]),
        "a skipped one arriving late is still written"
    );
    assert!(o.push(6, "f".into()).is_empty(), "but only once");
}

#[test]
fn a_huge_gap_is_skipped_at_once() {
    // found while writing the fuzz target: skip() inserted every number of the gap
    let mut o = Order::default();
    o.expect(0);
    o.push(u64::MAX - 1, "far".into());
    assert_eq!(o.skip(), s(&["far"]));
    assert_eq!(o.sizes(), (0, SKIPPED_KEPT));
    assert_eq!(o.push(u64::MAX - 2, "late".into()), s(&["late"]));
}

#[test]
fn the_last_sequence_number_does_not_overflow() {
    // fuzz/artifacts/order: Expect(1), Skip, Skip, Push(u64::MAX), Skip, Push(0)
    let mut o = Order::default();
    o.expect(1);
    o.skip();
    o.skip();
    assert!(o.push(u64::MAX, "last".into()).is_empty());
    assert_eq!(o.skip(), s(&["last"]));
    assert!(o.push(0, "old".into()).is_empty());
}

#[tokio::test]
async fn a_write_that_never_completes_ends_the_writer() {
    let never = std::future::pending::<Result<(), ()>>();
    let limit = Some(Duration::from_millis(20));
    assert_eq!(bounded(limit, never).await, Err(WriterEnd::WriteTimeout));
    assert_eq!(
        bounded(limit, async { Err::<(), ()>(()) }).await,
        Err(WriterEnd::Failed)
    );
    assert_eq!(bounded(None, async { Ok::<(), ()>(()) }).await, Ok(()));
}

#[test]
fn expect_drops_what_resume_resends_anyway() {
    let mut o = Order::default();
    o.push(3, "old".into());
    o.push(9, "new".into());
    assert_eq!(o.expect(9), s(&["new"]));
}

/// A terminal message of utterance `i` (only its index matters to the writer).
fn t(i: u64, what: &str) -> String {
    format!(
        r#"{{"type":"translation_result","session_id":"s","utterance_index":{i},"text":"{what}"}}"#
    )
}

#[test]
fn the_index_is_the_first_utterance_index_member() {
    assert_eq!(order::index_of(&t(12, "x")), Some(12));
    assert_eq!(order::index_of(r#"{"utterance_index": 7,"x":1}"#), Some(7));
    // a quote inside a string is escaped: text that looks like the member is not it
    let quoted = r#"{"message":"\"utterance_index\":9","utterance_index":3}"#;
    assert_eq!(order::index_of(quoted), Some(3));
    assert_eq!(order::index_of(r#"{"type":"ui_event"}"#), None);
    assert_eq!(order::index_of(r#"{"utterance_index":null}"#), None);
}

#[test]
fn a_lost_reply_recovered_from_the_log_fills_the_gap_once_and_in_order() {
    let mut o = Order::default();
    o.expect(1);
    assert_eq!(o.push(1, t(0, "a")), vec![t(0, "a")]);
    // seq 2 (index 1) went with a lost reply; seq 3 (index 2) waits for it
    assert!(o.push(3, t(2, "c")).is_empty());
    // the log has index 0 (written), 1 (lost) and 2 (held); out_seq was 3
    let logged = vec![(0, t(0, "a")), (1, t(1, "b")), (2, t(2, "c"))];
    assert_eq!(o.recover(3, logged.clone()), vec![t(1, "b"), t(2, "c")]);
    assert_eq!(o.expected, Some(4));
    assert!(o.gap_since.is_none(), "no gap left to wait for");
    assert!(
        o.recover(3, logged).is_empty(),
        "a second read writes nothing again"
    );
    assert_eq!(o.push(4, t(3, "d")), vec![t(3, "d")]);
}

#[test]
fn a_recovered_message_still_on_its_way_is_not_written_twice() {
    let mut o = Order::default();
    o.expect(1);
    // seq 1 (index 0) is an inbox entry still on its way; the log has it already
    assert_eq!(o.recover(1, vec![(0, t(0, "a"))]), vec![t(0, "a")]);
    assert!(o.push(1, t(0, "a")).is_empty(), "written once");
    // a trailing lost result (nothing held, no gap): written at once
    assert_eq!(
        o.recover(2, vec![(0, t(0, "a")), (1, t(1, "b"))]),
        vec![t(1, "b")]
    );
    assert_eq!(o.expected, Some(3));
}

#[test]
fn a_gap_skipped_before_the_log_answered_is_filled_late_once() {
    let mut o = Order::default();
    o.expect(1);
    assert!(o.push(2, t(1, "b")).is_empty());
    assert_eq!(o.skip(), vec![t(1, "b")]);
    assert_eq!(
        o.recover(2, vec![(0, t(0, "a")), (1, t(1, "b"))]),
        vec![t(0, "a")]
    );
    assert!(
        o.push(1, t(0, "a")).is_empty(),
        "and not again when its number arrives"
    );
}

#[test]
fn a_resumed_connection_recovers_nothing_its_client_has() {
    let mut o = Order::default();
    o.first_index(5);
    o.expect(9);
    let logged = vec![(3, t(3, "old")), (4, t(4, "old")), (5, t(5, "new"))];
    assert_eq!(o.recover(9, logged), vec![t(5, "new")]);
}

#[test]
fn indices_written_are_kept_as_runs() {
    let mut o = Order::default();
    o.expect(1);
    for (seq, i) in [(1, 0), (2, 1), (3, 3), (4, 2), (5, 7)] {
        assert_eq!(o.push(seq, t(i, "x")).len(), 1, "index {i}");
    }
    let logged: Vec<(u64, String)> = (0..9).map(|i| (i, t(i, "x"))).collect();
    let idx: Vec<Option<u64>> = o
        .recover(5, logged)
        .iter()
        .map(|m| order::index_of(m))
        .collect();
    assert_eq!(idx, [Some(4), Some(5), Some(6), Some(8)]);
}

/// The fuzz target's invariants with recoveries and real terminal messages, over a
/// pseudo-random mix of operations: no utterance index is written twice, memory stays
/// bounded, and every index pushed or logged ends up written once the gap is skipped.
#[test]
fn no_index_is_written_twice_whatever_the_mix() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for _ in 0..200 {
        let mut o = Order::default();
        o.expect(1);
        let mut written = std::collections::HashSet::new();
        let mut seen = std::collections::BTreeSet::new();
        // seq n carries index n - 1
        for _ in 0..300 {
            let out = match next(4) {
                0 | 1 => {
                    let seq = 1 + next(60);
                    seen.insert(seq - 1);
                    o.push(seq, t(seq - 1, "x"))
                }
                2 => o.skip(),
                _ => {
                    let upto = next(60);
                    let logged: Vec<(u64, String)> = (0..upto).map(|i| (i, t(i, "x"))).collect();
                    seen.extend(0..upto);
                    o.recover(upto, logged)
                }
            };
            for m in out {
                let i = order::index_of(&m).expect("an index");
                assert!(written.insert(i), "index {i} written twice");
            }
            let (held, skipped) = o.sizes();
            assert!(held <= 60 && skipped <= SKIPPED_KEPT);
        }
        for m in o.skip() {
            let i = order::index_of(&m).expect("an index");
            assert!(written.insert(i), "index {i} written twice");
        }
        let below = o.expected.unwrap_or(0);
        let missing: Vec<u64> = seen
            .iter()
            .filter(|&&i| i + 1 < below && !written.contains(&i))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "pushed or logged, never written: {missing:?}"
        );
    }
}

/// Resume audit: Redis lost its last commits (out_seq went back from 3 to 1), and the next
/// results come numbered 2 and 3 again. Before, both were dropped as "older numbers" with no
/// gap to notice: never written. A number already passed is still written when its index is
/// new, once; a resend of an index written already is still dropped.
#[test]
fn an_index_numbered_again_after_redis_lost_commits_is_written_once() {
    let mut o = Order::default();
    o.expect(1);
    for (seq, i) in [(1, 0), (2, 1), (3, 2)] {
        assert_eq!(o.push(seq, t(i, "first")), vec![t(i, "first")]);
    }
    assert_eq!(o.push(2, t(3, "renumbered")), vec![t(3, "renumbered")]);
    assert!(o.push(2, t(3, "renumbered")).is_empty(), "once");
    assert!(
        o.push(3, t(2, "again")).is_empty(),
        "an index written already"
    );
    assert_eq!(
        o.push(4, t(4, "next")),
        vec![t(4, "next")],
        "and on in order"
    );
    let mut r = Order::default();
    r.first_index(5);
    r.expect(9);
    assert!(
        r.push(3, t(4, "had")).is_empty(),
        "below a resume's first index"
    );
    assert_eq!(r.push(3, t(5, "new")), vec![t(5, "new")]);
}
