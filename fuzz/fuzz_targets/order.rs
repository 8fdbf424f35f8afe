//! The session writer's sequence reassembly (gateway::socket::Order): any sequence of
//! pushes, expects, gap skips and recoveries ends quickly, keeps its memory bounded, and
//! never writes a number more often than it was pushed.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchyard::gateway::socket::Order;

#[derive(Arbitrary, Debug)]
enum Op {
    Push(u64),
    /// A number near the last one pushed (gaps of a few, the common case).
    PushNear(u8),
    Expect(u64),
    Skip,
    /// A lost reply's recovery with nothing in the log's window (its `out_seq`): what is
    /// held up to it is written, the rest remembered as skipped.
    Recover(u64),
}

fuzz_target!(|ops: Vec<Op>| {
    let mut o = Order::default();
    let mut pushed: HashMap<u64, usize> = HashMap::new();
    let mut written: HashMap<u64, usize> = HashMap::new();
    let mut last = 0u64;
    for op in ops.into_iter().take(4096) {
        let out = match op {
            Op::Push(n) => {
                last = n;
                *pushed.entry(n).or_default() += 1;
                o.push(n, n.to_string())
            }
            Op::PushNear(d) => {
                let n = last.wrapping_add(u64::from(d % 8));
                last = n;
                *pushed.entry(n).or_default() += 1;
                o.push(n, n.to_string())
            }
            Op::Expect(n) => o.expect(n),
            Op::Skip => o.skip(),
            Op::Recover(n) => o.recover(n, Vec::new()),
        };
        for t in out {
            let n: u64 = t.parse().expect("texts are sequence numbers");
            let w = written.entry(n).or_default();
            *w += 1;
            assert!(*w <= pushed[&n], "{n} written more often than pushed");
        }
        let (held, skipped) = o.sizes();
        assert!(held <= pushed.len(), "held more than pushed");
        assert!(skipped <= 1024, "skipped set unbounded");
    }
});
