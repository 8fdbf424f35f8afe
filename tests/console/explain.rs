//! A job's routing explanation in the console: every attempt of a failed-over job and where
//! it went, why a job failed (no node, a full queue), the queue wait and the offer that ended
//! it, and the short explanation and compact record of a plain finished job.

use super::*;

/// Two eligible nodes and a drained one; the first attempt times out. The explanation
/// shows the failover, and the second attempt's route names the tried node, the drained
/// one and the chosen one with their load.
#[tokio::test]
async fn a_failed_over_job_explains_every_attempt_and_where_it_went() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.run_timeout_ms = 400).await;
    let mut c = redis.client().await;
    let (mut a, aid) = node(&inst).await;
    let (mut b, bid) = node(&inst).await;
    let (_d, did) = node(&inst).await;
    let drain = http_url(&inst, &format!("/api/v1/nodes/{did}/drain"));
    assert_eq!(post(&drain, &admin_token()).await, 200);
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let (second, second_id, first_id, a1) = tokio::select! {
        v = assign(&mut a) => (&mut b, bid.clone(), aid.clone(), v),
        v = assign(&mut b) => (&mut a, aid.clone(), bid.clone(), v),
    };
    let a2 = assign(second).await;
    assert_eq!(a2["attempt_id"], 2);
    second.send(&answer(&a2, &second_id, "done")).await;
    terminals(&mut s, 1, T).await;
    let jid = a1["job_id"].as_str().expect("job id").to_string();

    let (st, v) = get_json(&http_url(&inst, &format!("/api/v1/jobs/{jid}"))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["job"]["state"], "FINISHED");
    let at = v["attempts"].as_array().expect("attempts");
    assert_eq!(at.len(), 2, "{v}");
    assert_eq!(at[0]["node"], first_id.as_str());
    assert_eq!(at[0]["outcome"], "failover");
    assert_eq!(at[0]["reason"], "JOB_TIMEOUT");
    assert_eq!(at[1]["node"], second_id.as_str());
    assert_eq!(at[1]["outcome"], "ok");
    let (finished, dispatched) = (
        at[1]["finished_at_ms"].as_u64().expect("finished_at_ms"),
        at[1]["dispatched_at_ms"]
            .as_u64()
            .expect("dispatched_at_ms"),
    );
    assert!(finished >= dispatched, "{v}");
    let looks = at[1]["route"][0]["nodes"]
        .as_array()
        .expect("route")
        .clone();
    let verdict = |n: &str| {
        looks
            .iter()
            .find(|l| l["node"] == n)
            .map(|l| l["verdict"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(at[1]["route"][0]["pool"], "pub:zh:en", "{v}");
    assert_eq!(verdict(&first_id).as_deref(), Some("tried"), "{v}");
    assert_eq!(verdict(&did).as_deref(), Some("draining"), "{v}");
    assert_eq!(verdict(&second_id).as_deref(), Some("chosen"), "{v}");
    let chosen = looks
        .iter()
        .find(|l| l["verdict"] == "chosen")
        .expect("chosen");
    assert_eq!(
        (chosen["reserved"].as_u64(), chosen["capacity"].as_u64()),
        (Some(0), Some(4))
    );

    // The same from the command line, reading Redis directly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["inspect", "job", &jid])
        .env("SWITCHYARD_REDIS__URL", redis.url())
        .env(secret_env().0, secret_env().1)
        .output()
        .expect("run switchyard inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("JOB_TIMEOUT") && text.contains("draining"),
        "{text}"
    );
    assert!(text.contains("route of attempt 2"), "{text}");
    common::invariants::check(&mut c).await;
}

/// The only node that serves the pair lets the first attempt time out; the failover finds
/// no other node that could ever take the job, which fails. The record keeps why: route:2
/// ends in the `none` step (`fail` rewrites the record from what the script holds, so the
/// explanation must be there, not only in an earlier HSET), and the API shows attempt 2 as
/// not dispatched.
#[tokio::test]
async fn a_job_no_other_node_can_take_after_a_failover_keeps_why_in_its_record() {
    use common::invariants::PREFIX;
    use redis::AsyncCommands;
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.run_timeout_ms = 300).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let a1 = assign(&mut n).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["code"], "JOB_TIMEOUT", "{}", got[0]);
    let jid = a1["job_id"].as_str().expect("job id").to_string();
    let rec: std::collections::HashMap<String, String> =
        c.hgetall(format!("{PREFIX}job:{jid}")).await.unwrap();
    assert_eq!(rec["state"], "FAILED", "{rec:?}");
    let route = rec
        .get("route:2")
        .unwrap_or_else(|| panic!("no route:2 in {rec:?}"));
    assert!(route.ends_with("|none>"), "{route}");
    assert!(route.contains(&format!("{nid}=tried")), "{route}");

    let (st, v) = get_json(&http_url(&inst, &format!("/api/v1/jobs/{jid}"))).await;
    assert_eq!(st, 200, "{v}");
    let at = v["attempts"].as_array().expect("attempts");
    assert_eq!(at.len(), 2, "{v}");
    assert_eq!(at[0]["outcome"], "failover", "{v}");
    assert_eq!(at[1]["outcome"], "not_dispatched", "{v}");
    assert_eq!(at[1]["reason"], "JOB_TIMEOUT", "{v}");
    let steps = at[1]["route"].as_array().expect("route of attempt 2");
    assert_eq!(
        steps.last().map(|s| &s["pool"]),
        Some(&json!("none")),
        "{v}"
    );
    common::invariants::check(&mut c).await;
}

/// Two nodes of capacity 1, both busy, and a pool queue (`jobs.queue_max` = 1) that holds a
/// job already: when the first job's attempt times out, its failover finds no node with room
/// and the queue full, and the job fails. Like a job no node can serve, its record keeps why:
/// route:2 names the nodes looked at and ends in a `queue_full` step naming the full queue
/// (kept in what `fail` rewrites the record from), and the API shows attempt 2 as not
/// dispatched, for that queue.
#[tokio::test]
async fn a_job_failed_for_a_full_queue_after_a_failover_keeps_why_in_its_record() {
    use common::invariants::{self, PREFIX};
    use redis::AsyncCommands;
    let redis = RedisServer::start().await;
    // Job 0 must time out after jobs 1 and 2 found their places (a node, the queue), and
    // job 2 must still be waiting then.
    let inst = start_tweaked(&redis, |c| {
        c.jobs.run_timeout_ms = 1_500;
        c.jobs.queue_wait_ms = 5_000;
        c.jobs.queue_max = 1;
    })
    .await;
    let mut c = redis.client().await;
    let one = || {
        let mut f = fixture("node_register_first");
        f["max_concurrent_jobs"] = json!(1);
        f
    };
    let mut a = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let aid = a.register_id(one(), None).await;
    let mut b = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let bid = b.register_id(one(), None).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let (first, first_id, other, other_id, a1) = tokio::select! {
        v = assign(&mut a) => (&mut a, aid.clone(), &mut b, bid.clone(), v),
        v = assign(&mut b) => (&mut b, bid.clone(), &mut a, aid.clone(), v),
    };
    // The second job's deadline comes well after the first's.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.send(&utterance(&sid, 1)).await;
    let a2 = assign(other).await;
    s.send(&utterance(&sid, 2)).await;
    let queue = format!("{PREFIX}queue:pub:zh:en");
    eventually(T, "the third job waits in the queue", || {
        let mut c = c.clone();
        let queue = queue.clone();
        async move { (c.llen::<_, u64>(&queue).await.ok()? == 1).then_some(()) }
    })
    .await;
    // Nobody answers: the first attempt times out and its failover finds the queue full.
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["utterance_index"], 0, "{}", got[0]);
    assert_eq!(got[0]["code"], "NO_AVAILABLE_NODE", "{}", got[0]);
    let jid = a1["job_id"].as_str().expect("job id").to_string();
    let rec: std::collections::HashMap<String, String> =
        c.hgetall(format!("{PREFIX}job:{jid}")).await.unwrap();
    assert_eq!(rec["state"], "FAILED", "{rec:?}");
    assert!(rec["failure_message"].contains("queue is full"), "{rec:?}");
    let route = rec
        .get("route:2")
        .unwrap_or_else(|| panic!("no route:2 in {rec:?}"));
    assert!(route.ends_with("|queue_full>pub:zh:en"), "{route}");
    assert!(route.contains(&format!("{first_id}=tried")), "{route}");
    assert!(route.contains(&format!("{other_id}=full:1/1")), "{route}");
    assert!(
        invariants::unexplained_failures(&mut c, 3).await.is_empty(),
        "{rec:?}"
    );

    let (st, v) = get_json(&http_url(&inst, &format!("/api/v1/jobs/{jid}"))).await;
    assert_eq!(st, 200, "{v}");
    let at = v["attempts"].as_array().expect("attempts");
    assert_eq!(at.len(), 2, "{v}");
    assert_eq!(at[0]["outcome"], "failover", "{v}");
    assert_eq!(at[0]["reason"], "JOB_TIMEOUT", "{v}");
    assert_eq!(at[1]["outcome"], "not_dispatched", "{v}");
    assert_eq!(at[1]["reason"], "NO_AVAILABLE_NODE", "{v}");
    let last = at[1]["route"]
        .as_array()
        .and_then(|r| r.last())
        .expect("route of attempt 2");
    assert_eq!(last["pool"], "queue_full", "{v}");
    assert_eq!(last["queues"], json!(["pub:zh:en"]), "{v}");

    // The other two utterances finish (whatever attempt each is at by now), then the cell
    // is checked at rest.
    other.send(&answer(&a2, &other_id, "one")).await;
    let mut done = 1;
    while done < 3 {
        tokio::select! {
            v = next_of(first, "job_assign", T) => {
                let v = v.expect("a job_assign or a terminal message");
                first.send(&answer(&v, &first_id, "x")).await;
            }
            v = next_of(other, "job_assign", T) => {
                let v = v.expect("a job_assign or a terminal message");
                other.send(&answer(&v, &other_id, "x")).await;
            }
            m = s.next(T) => {
                if is_terminal(&m.expect("session message")) {
                    done += 1;
                }
            }
        }
    }
    invariants::check(&mut c).await;
}

/// A job that waited for capacity: its route shows the full node, the wait in the pool's
/// queue and the node whose freed capacity took it.
#[tokio::test]
async fn a_job_that_waited_shows_the_queue_and_the_offer_that_took_it() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["max_concurrent_jobs"] = json!(1);
    let nid = n.register_id(f, None).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let a0 = assign(&mut n).await;
    n.send(&answer(&a0, &nid, "zero")).await;
    let a1 = assign(&mut n).await;
    n.send(&answer(&a1, &nid, "one")).await;
    terminals(&mut s, 2, T).await;
    let jid = a1["job_id"].as_str().expect("job id");
    let (_, v) = get_json(&http_url(&inst, &format!("/api/v1/jobs/{jid}"))).await;
    let route = &v["attempts"][0]["route"];
    assert_eq!(route[0]["nodes"][0]["verdict"], "full", "{v}");
    assert_eq!(route[0]["nodes"][0]["reserved"], 1, "{v}");
    assert!(
        route[1]["pool"]
            .as_str()
            .is_some_and(|p| p.starts_with("queued@")),
        "{v}"
    );
    assert_eq!(route[1]["queues"][0], "pub:zh:en", "{v}");
    assert_eq!(route[2]["pool"], "offer", "{v}");
    assert_eq!(route[2]["nodes"][0]["verdict"], "chosen", "{v}");
    assert_eq!(v["attempts"][0]["node"], nid.as_str());
    assert_eq!(v["attempts"][0]["outcome"], "ok");
    common::invariants::check(&mut c).await;
}

/// What a finished record keeps of `full`, the in-flight explanation
/// "<ms> <node> <label>><entry>,...|<label>>...": the chosen node's entry, the others counted.
fn compact_route(full: &str, nid: &str) -> String {
    let steps = full.splitn(3, ' ').nth(2).expect("steps");
    let (mut entries, mut chosen) = (0, None);
    for seg in steps.split('|') {
        let (label, list) = seg.split_once('>').expect("label>entries");
        for e in list.split(',').filter(|e| !e.is_empty()) {
            match e.strip_prefix('+') {
                Some(more) => entries += more.parse::<usize>().expect("+N"),
                None => {
                    entries += 1;
                    if e.starts_with(&format!("{nid}=ok:")) {
                        chosen = Some(format!("{label}>{e}"));
                    }
                }
            }
        }
    }
    let chosen = chosen.expect("the chosen node's entry");
    match entries {
        1 => format!("- - {chosen}"),
        n => format!("- - {chosen},+{}", n - 1),
    }
}

/// A job that finished on its first attempt keeps a routing explanation of at most 64
/// bytes (cut at an entry boundary, the rest counted in `,+N`), so its record stays a
/// compact listpack; the console still names the chosen node and counts the others.
#[tokio::test]
async fn a_plain_finished_job_keeps_a_short_explanation_and_a_compact_record() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&inst).await);
    }
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let (a1, i) = {
        let [(n0, _), (n1, _), (n2, _)] = &mut nodes[..] else {
            panic!("three nodes")
        };
        tokio::select! {
            v = assign(n0) => (v, 0),
            v = assign(n1) => (v, 1),
            v = assign(n2) => (v, 2),
        }
    };
    let (n, nid) = &mut nodes[i];
    let jid = a1["job_id"].as_str().expect("job id").to_string();
    let key = format!("{}job:{jid}", common::invariants::PREFIX);
    let hget = async |c: &mut redis::aio::MultiplexedConnection, f: &str| -> Option<String> {
        redis::cmd("HGET")
            .arg(&key)
            .arg(f)
            .query_async(c)
            .await
            .expect("hget")
    };
    let full = hget(&mut c, "route:1").await.expect("route:1 in flight");
    n.send(&answer(&a1, nid, "done")).await;
    terminals(&mut s, 1, T).await;
    let route = hget(&mut c, "route:1").await.expect("route:1");
    // The chosen node's entry alone, the others counted; time and node are the record's.
    assert!(route.len() <= 64, "{route:?} ({} bytes)", route.len());
    assert!(
        route.starts_with(&format!("- - pub:zh:en>{nid}=ok:")),
        "{route}"
    );
    assert_eq!(route, compact_route(&full, nid), "from {full:?}");
    let end: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("end:1")
        .query_async(&mut c)
        .await
        .expect("end:1");
    assert_eq!(end, None, "the finishing attempt needs no end:<n>");
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(&key)
        .query_async(&mut c)
        .await
        .expect("encoding");
    assert_eq!(encoding, "listpack");
    let id: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("id")
        .query_async(&mut c)
        .await
        .expect("id");
    assert_eq!(id, None, "the key names the job");

    let (st, v) = get_json(&http_url(&inst, &format!("/api/v1/jobs/{jid}"))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["job"]["id"], jid.as_str(), "{v}");
    let at = &v["attempts"][0];
    assert_eq!(at["node"], nid.as_str(), "{v}");
    assert_eq!(at["outcome"], "ok", "{v}");
    assert!(at["dispatched_at_ms"].as_u64().is_some(), "{v}");
    let step = &at["route"][0];
    assert_eq!(step["pool"], "pub:zh:en", "{v}");
    // Two eligible nodes were looked at (jobs.choices = 2): the other one is counted.
    assert!(route.contains(",+"), "{route}");
    assert_eq!(step["nodes"][0]["node"], nid.as_str(), "{v}");
    assert_eq!(step["nodes"][0]["verdict"], "chosen", "{v}");
    assert!(step["more"].as_u64() >= Some(1), "{v}");
    common::invariants::check(&mut c).await;
}
