//! Unit tests of `src/gateway/socket.rs`.

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
