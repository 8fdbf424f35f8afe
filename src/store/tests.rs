//! Unit tests of `src/store/mod.rs`.

use super::*;

/// A script call's future is moved (copied) into its caller's future, and that one into
/// its caller's: with the rare paths boxed it is ~1 KB (960 bytes, 1,032 since the
/// single-flight reload and ambiguous replies; it was ~8 KB with connecting and loading the
/// library inline).
#[test]
fn a_script_calls_future_stays_small() {
    let store = Store::new(&Config::default(), "i", Arc::new(Metrics::new())).expect("store");
    let call = store.run::<serde_json::Value>(Script::Submit, &[], store.args());
    let size = std::mem::size_of_val(&call);
    assert!(size <= 1088, "run's future is {size} bytes");
    let shared = std::mem::size_of_val(&store.connector.shared(false));
    assert!(shared <= 256, "shared's future is {shared} bytes");
}

#[test]
fn replies_carry_bodies_as_blobs_and_numbers_as_strings() {
    let reply = reply::packed(
        r#"{"r":{"status":"ok"},"out":[{"k":"node","id":"n","owner":"i","m":"2","blob":1,"seq":"3"}],"ev":{"dispatched":"2"},"lat":{"dispatch":["4"],"e2e":{}}}"#,
    );
    let blobs = vec![b"audio".to_vec(), br#"{"type":"job_assign"}"#.to_vec()];
    let out = decode_reply::<serde_json::Value>("t", &reply, blobs).expect("decodes");
    let d = &out.out[0];
    assert_eq!(d.msg, r#"{"type":"job_assign"}"#);
    assert_eq!((d.blob, d.seq), (Some(1), Some(3)));
    assert_eq!(out.blobs[0], b"audio");
    assert_eq!(out.events.ev.get("dispatched"), Some(&2));
    assert_eq!(out.events.lat.dispatch, vec![4.0]);
}

#[test]
fn a_job_id_names_its_session_lifetime() {
    use super::jobs::of_lifetime;
    assert!(of_lifetime("job-3f2a9c1b7d4e-17", "3f2a9c1b7d4e"));
    assert!(!of_lifetime("job-3f2a9c1b7d4e-17", "0000000000aa"));
    // a nonce that only starts the id's, no index, a non-digit index, no nonce at all
    assert!(!of_lifetime("job-3f2a9c1b7d4e-x-17", "3f2a9c1b7d4e"));
    assert!(!of_lifetime("job-3f2a-17", "3f2a9c1b7d4e"));
    assert!(!of_lifetime("job-3f2a9c1b7d4e-", "3f2a9c1b7d4e"));
    assert!(!of_lifetime("job-3f2a9c1b7d4e-1a", "3f2a9c1b7d4e"));
    assert!(!of_lifetime("job--17", ""));
}
