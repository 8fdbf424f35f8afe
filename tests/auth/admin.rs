//! The admin API's credentials: `admin:read` to look, `admin:write` to change, 401 without a
//! token and 403 with the wrong one; deployment-wide tokens only; its own listener.

use super::*;

#[tokio::test]
async fn the_admin_api_needs_admin_scopes_401_without_403_with_the_wrong_one() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let nid = n.register_id(fixture("node_register_first"), None).await;
    let http = reqwest::Client::new();
    let drain = http_url(&inst, &format!("/api/v1/nodes/{nid}/drain"));
    let read = token(&[Scope::AdminRead], Some("ops-dashboard"), None);
    let write = token(&[Scope::AdminWrite], Some("ops-alice"), None);
    let session = token(&[Scope::Session], None, None);

    let r = http
        .get(http_url(&inst, "/api/v1/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let status = |r: reqwest::Response| r.status().as_u16();
    for path in ["/api/v1/nodes", "/api/v1/pools", "/api/v1/instances"] {
        let url = http_url(&inst, path);
        assert_eq!(
            status(http.get(&url).bearer_auth(&session).send().await.unwrap()),
            403
        );
        assert_eq!(
            status(http.get(&url).bearer_auth(&write).send().await.unwrap()),
            403,
            "write is not read"
        );
        assert_eq!(
            status(http.get(&url).bearer_auth(&read).send().await.unwrap()),
            200
        );
    }
    assert_eq!(status(http.post(&drain).send().await.unwrap()), 401);
    assert_eq!(
        status(http.post(&drain).bearer_auth(&read).send().await.unwrap()),
        403
    );
    assert_eq!(
        node_hash(&mut c, &nid).await["state"],
        "ready",
        "refused calls change nothing"
    );
    assert_eq!(
        status(http.post(&drain).bearer_auth(&write).send().await.unwrap()),
        200
    );
    assert_eq!(node_hash(&mut c, &nid).await["state"], "draining");
    // Probes stay open.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            status(http.get(http_url(&inst, path)).send().await.unwrap()),
            200
        );
    }
    let m = metrics_text(&inst).await;
    assert!(
        m.contains(r#"switchyard_auth_refused_total{kind="admin",detail="forbidden"} 7"#),
        "{m}"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn admin_listen_puts_the_admin_api_and_metrics_on_their_own_address() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.admin_listen = Some("127.0.0.1:0".into())).await;
    let admin = inst.admin_addr.expect("admin address");
    let http = reqwest::Client::new();
    let read = token(&[Scope::AdminRead], None, None);
    for path in ["/api/v1/nodes", "/metrics"] {
        let public = http
            .get(http_url(&inst, path))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(
            public.status().as_u16(),
            404,
            "{path} not on the public address"
        );
        let url = format!("http://{admin}{path}");
        let r = http.get(&url).bearer_auth(&read).send().await.unwrap();
        let st = r.status().as_u16();
        assert_eq!(
            st,
            200,
            "{path} on the admin address: {}",
            r.text().await.unwrap()
        );
    }
    let r = http
        .get(format!("http://{admin}/api/v1/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "still needs a credential there");
    let r = http.get(http_url(&inst, "/readyz")).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    crate::common::invariants::check(&mut redis.client().await).await;
}

/// Review findings: an admin token with a `tenant` or `cell` claim was given the whole
/// deployment (every tenant's sessions and transcripts, drains in every cell): the admin API
/// does not narrow to either, so such a token is refused (403). And `?cell=a&cell=b` did not
/// parse and was read as "every cell": a 400 now.
#[tokio::test]
async fn admin_tokens_are_deployment_wide_and_a_bad_cell_query_is_refused() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let nid = n.register_id(fixture("node_register_first"), None).await;
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    let both = [Scope::AdminRead, Scope::AdminWrite];
    let tenant = token(&both, Some("ops"), Some("acme"));
    let cell = cell_token(&both, None, "main");
    let drain = http_url(&inst, &format!("/api/v1/nodes/{nid}/drain"));
    for narrow in [&tenant, &cell] {
        let r = http
            .get(http_url(&inst, "/api/v1/nodes"))
            .bearer_auth(narrow)
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), 403);
        let r = http.post(&drain).bearer_auth(narrow).send().await.unwrap();
        assert_eq!(status(r), 403);
    }
    assert_eq!(
        node_hash(&mut c, &nid).await["state"],
        "ready",
        "nothing drained"
    );
    let admin = token(&both, Some("ops"), None);
    let twice = format!("{drain}?cell=main&cell=other");
    let r = http.post(&twice).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(status(r), 400);
    assert_eq!(
        node_hash(&mut c, &nid).await["state"],
        "ready",
        "nothing drained"
    );
    let r = http.post(&drain).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(status(r), 200);
    invariants::check(&mut c).await;
}
