//! Tenants' jobs: sessions prefer their tenant's nodes and strict tenants never leave them;
//! a queued tenant job is served by a public node that frees first.

use super::*;

#[tokio::test]
async fn tenant_sessions_prefer_their_nodes_and_strict_tenants_never_leave_them() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.jobs.strict_tenants = vec!["strictco".into()];
        // Index 1's result waits for index 0's across two session opens and a 300 ms
        // probe: more than the tests' 400 ms reorder window on a loaded machine.
        c.session.reorder_window_ms = 5_000;
    })
    .await;
    let mut c = redis.client().await;
    let cap1 = |t: Option<&str>| {
        let t = t.map(str::to_string);
        move |f: &mut Value| {
            f["max_concurrent_jobs"] = json!(1);
            if let Some(t) = &t {
                f["tenant_id"] = json!(t);
            }
        }
    };
    let (mut acme, acme_id) = node(&inst, cap1(Some("acme"))).await;
    let (mut strict, _) = node(&inst, cap1(Some("strictco"))).await;
    let (mut public, public_id) = node(&inst, cap1(None)).await;
    let url = ws_url(&inst, "/ws/session");
    let mut init = fixture("session_init_one_way");
    init["tenant_id"] = json!("acme");
    let acme_url = tenant_ws_url(&inst, "/ws/session", "acme");
    let (mut s1, sid1) = open_session(&acme_url, init.clone()).await;
    s1.send(&utterance(&sid1, 0)).await;
    let a0 = assign(&mut acme).await;
    assert_eq!(a0["session_id"], sid1.as_str(), "tenant pool first");
    s1.send(&utterance(&sid1, 1)).await;
    let a1 = assign(&mut public).await;
    assert_eq!(
        a1["session_id"],
        sid1.as_str(),
        "non-strict: public when full"
    );
    // The public node is free again: a strict job that leaked would go to it.
    public.send(&answer(&a1, &public_id, "one")).await;
    init["tenant_id"] = json!("strictco");
    let strictco = tenant_ws_url(&inst, "/ws/session", "strictco");
    let (mut s2, sid2) = open_session(&strictco, init).await;
    s2.send(&utterance(&sid2, 0)).await;
    assert_eq!(assign(&mut strict).await["session_id"], sid2.as_str());
    s2.send(&utterance(&sid2, 1)).await;
    assert!(
        next_of(&mut public, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "strict stays home, though the public node is free"
    );
    let queued: i64 = c
        .llen(format!("{PREFIX}queue:tenant:strictco:zh:en"))
        .await
        .unwrap();
    assert_eq!(queued, 1, "the strict job waits for its own node");
    // A session without tenant never reaches tenant nodes: the acme node is free, the
    // public one busy with this session's first utterance.
    acme.send(&answer(&a0, &acme_id, "zero")).await;
    let got = terminals(&mut s1, 2, T).await;
    assert_eq!(
        got[1]["text_translated"], "one",
        "both nodes answered: {got:?}"
    );
    let (mut s3, sid3) = open_session(&url, fixture("session_init_one_way")).await;
    s3.send(&utterance(&sid3, 0)).await;
    assert_eq!(assign(&mut public).await["session_id"], sid3.as_str());
    s3.send(&utterance(&sid3, 1)).await;
    assert!(
        next_of(&mut acme, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "tenant nodes are not public, though the acme node is free"
    );
    let queued: i64 = c.llen(format!("{PREFIX}queue:pub:zh:en")).await.unwrap();
    assert_eq!(queued, 1, "the public job waits for the public node");
    drop(s3);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_queued_tenant_job_is_served_by_a_public_node_that_frees_first() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut tenant, _) = node(&inst, |f| {
        f["max_concurrent_jobs"] = json!(1);
        f["tenant_id"] = json!("acme");
    })
    .await;
    let (mut public, pid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(1)).await;
    let mut init = fixture("session_init_one_way");
    init["tenant_id"] = json!("acme");
    let (mut s, sid) = open_session(&tenant_ws_url(&inst, "/ws/session", "acme"), init).await;
    s.send(&utterance(&sid, 0)).await;
    assert_eq!(
        assign(&mut tenant).await["utterance_index"],
        0,
        "tenant pool first"
    );
    s.send(&utterance(&sid, 1)).await;
    let p1 = assign(&mut public).await;
    // Both busy: index 2 waits in the queues of both candidate pools.
    s.send(&utterance(&sid, 2)).await;
    eventually(T, "queued in both pools", || {
        let mut c = c.clone();
        async move {
            let t: u64 = c
                .llen(format!("{PREFIX}queue:tenant:acme:zh:en"))
                .await
                .ok()?;
            let p: u64 = c.llen(format!("{PREFIX}queue:pub:zh:en")).await.ok()?;
            (t == 1 && p == 1).then_some(())
        }
    })
    .await;
    invariants::check(&mut c).await;
    public.send(&answer(&p1, &pid, "one")).await;
    let p2 = assign(&mut public).await;
    assert_eq!(
        p2["utterance_index"], 2,
        "the public node that freed first takes it"
    );
    let q: u64 = c
        .llen(format!("{PREFIX}queue:tenant:acme:zh:en"))
        .await
        .unwrap();
    assert_eq!(q, 0, "and it left every queue");
    invariants::check(&mut c).await;
}
