//! Rate limits and quotas (DESIGN section 10) over real sockets, on both
//! codecs: named policies on routes, each `by`, exactness under
//! concurrency, the window edge on the manual clock, the 429 and the
//! `RateLimit` fields (also on the forward-auth answer), a token's own
//! limit and quota through the native API, the usage endpoint, and quota
//! counts that survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{call, Opts, TestGateway};
use http::{Method, StatusCode};
use serde_json::json;
use tokengate::token::TokenKind;

/// Policies and the routes that name them, beside the harness's own.
const LIMITED: &str = r#"
[rate_limits]
quota_flush_seconds = 1

[[rate_limits.policies]]
name = "per-token"
requests = 3
window_seconds = 60
by = "token"

[[rate_limits.policies]]
name = "per-account"
requests = 4
window_seconds = 60
by = "account"

[[rate_limits.policies]]
name = "per-tenant"
requests = 5
window_seconds = 60
by = "tenant"

[[rate_limits.policies]]
name = "per-ip"
requests = 2
window_seconds = 10
by = "client_ip"

[[rate_limits.policies]]
name = "burst"
requests = 40
window_seconds = 60
by = "token"

[[routes]]
path = "/lim/token"
upstream = "mock"
rate_limits = ["per-token"]

[[routes]]
path = "/lim/account"
upstream = "mock"
rate_limits = ["per-account"]

[[routes]]
path = "/lim/tenant"
upstream = "mock"
rate_limits = ["per-tenant"]

[[routes]]
path = "/lim/ip"
upstream = "mock"
auth = "none"
rate_limits = ["per-ip"]

[[routes]]
path = "/lim/burst"
upstream = "mock"
rate_limits = ["burst"]

[[routes]]
path = "/lim/both"
upstream = "mock"
rate_limits = ["burst", "per-token"]

[[routes]]
path = "/lim/dead"
upstream = "dead"
rate_limits = ["per-token"]

[forward_auth]
path = "/_tokengate/auth"
"#;

async fn spawn(fast: bool) -> TestGateway {
    Opts::default().fast_path(fast).extra(LIMITED).spawn().await
}

fn header<'a>(r: &'a common::Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
}

/// Of N concurrent requests against a limit L, exactly L are admitted;
/// every other one is a 429, never anything else.
#[tokio::test]
async fn exact_under_concurrency_on_both_codecs() {
    for fast in [true, false] {
        let g = spawn(fast).await;
        let token = g.token(&["*"]).await;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..120 {
            let (addr, token) = (g.addr, token.clone());
            set.spawn(async move {
                let auth = format!("Bearer {token}");
                common::send_bytes(
                    addr,
                    Method::GET,
                    "/lim/burst",
                    &[("authorization", &auth)],
                    vec![],
                )
                .await
                .status
            });
        }
        let (mut ok, mut limited) = (0, 0);
        while let Some(s) = set.join_next().await {
            match s.unwrap() {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!((ok, limited), (40, 80), "fast path: {fast}");
        assert_eq!(g.upstream.count(), 40);
        let text = g.metrics_text().await;
        assert!(
            text.contains("tokengate_rate_limited_total{policy=\"burst\"} 80"),
            "{text}"
        );
    }
}

/// The fields on an admitted answer, the 429 with `Retry-After`, and the
/// window edge on the manual clock: no second burst until the first has
/// left the window, then exactly a window's worth again.
#[tokio::test]
async fn the_fields_the_429_and_the_window_edge() {
    for fast in [true, false] {
        let g = spawn(fast).await;
        let token = g.token(&["*"]).await;
        for left in [2, 1, 0] {
            let r = g.get("/lim/token", Some(&token)).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(header(&r, "ratelimit-policy"), "\"per-token\";q=3;w=60");
            assert_eq!(
                header(&r, "ratelimit"),
                format!("\"per-token\";r={left};t=60")
            );
        }
        let r = g.get("/lim/token", Some(&token)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.code(), "RATE_LIMITED");
        assert_eq!(header(&r, "retry-after"), "60");
        assert_eq!(header(&r, "ratelimit-policy"), "\"per-token\";q=3;w=60");
        assert_eq!(header(&r, "ratelimit"), "\"per-token\";r=0;t=60");
        assert!(r.headers.contains_key("x-request-id"));

        g.clock.advance(59);
        let r = g.get("/lim/token", Some(&token)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "one second early");
        assert_eq!(header(&r, "retry-after"), "1");
        g.clock.advance(1);
        for _ in 0..3 {
            assert_eq!(
                g.get("/lim/token", Some(&token)).await.status,
                StatusCode::OK
            );
        }
        assert_eq!(
            g.get("/lim/token", Some(&token)).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // A route without a limit carries no fields.
        let r = g.get("/api/x", Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(!r.headers.contains_key("ratelimit"));
    }
}

/// An upstream failure after admission on a limited route carries the
/// fields too (and counts: the request was admitted).
#[tokio::test]
async fn a_failure_after_admission_carries_the_fields() {
    for fast in [true, false] {
        let g = spawn(fast).await;
        let token = g.token(&["*"]).await;
        let r = g.get("/lim/dead", Some(&token)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "fast path: {fast}");
        assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
        assert_eq!(header(&r, "ratelimit"), "\"per-token\";r=2;t=60");
        // Refused before admission: no count to tell.
        let r = g.get("/lim/dead", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(!r.headers.contains_key("ratelimit"));
    }
}

/// Each `by` counts its own key: tokens apart, tokens of one account
/// together, one tenant together, and the client's address.
#[tokio::test]
async fn each_by_counts_its_own_key() {
    let g = spawn(true).await;
    let (a, b) = (g.token(&["*"]).await, g.token(&["*"]).await);
    let statuses = |path: &'static str, tokens: Vec<String>| {
        let g = &g;
        async move {
            let mut out = Vec::new();
            for t in tokens {
                out.push(g.get(path, Some(&t)).await.status.as_u16());
            }
            out
        }
    };
    // by token: three each.
    let seq = vec![a.clone(), a.clone(), a.clone(), a.clone(), b.clone()];
    assert_eq!(statuses("/lim/token", seq).await, [200, 200, 200, 429, 200]);
    // by account: both tokens are the seeded account's; four in all.
    let seq = vec![
        a.clone(),
        b.clone(),
        a.clone(),
        b.clone(),
        a.clone(),
        b.clone(),
    ];
    assert_eq!(
        statuses("/lim/account", seq).await,
        [200, 200, 200, 200, 429, 429]
    );
    // A token of another account of the same tenant has its own count...
    let acc = tokengate_account(&g, "bob@example.com").await;
    let c = mint_for(&g, acc, json!({"name": "c"})).await.0;
    assert_eq!(statuses("/lim/account", vec![c.clone()]).await, [200]);
    // ...but not by tenant: five in all across the three tokens.
    let seq = vec![
        a.clone(),
        b.clone(),
        c.clone(),
        a.clone(),
        b.clone(),
        c.clone(),
    ];
    assert_eq!(
        statuses("/lim/tenant", seq).await,
        [200, 200, 200, 200, 200, 429]
    );
    // by client_ip, on a route without tokens: this test's address.
    for want in [200, 200, 429] {
        assert_eq!(g.get("/lim/ip", None).await.status.as_u16(), want);
    }
    g.clock.advance(10);
    assert_eq!(g.get("/lim/ip", None).await.status, StatusCode::OK);
}

/// With two policies the fields list both, the one closest to refusing
/// first; the one that refuses names itself, and a refusal counts in
/// neither.
#[tokio::test]
async fn several_policies_closest_first() {
    let g = spawn(false).await;
    let t = g.token(&["*"]).await;
    let r = g.get("/lim/both", Some(&t)).await;
    assert_eq!(
        header(&r, "ratelimit-policy"),
        "\"per-token\";q=3;w=60, \"burst\";q=40;w=60"
    );
    assert_eq!(
        header(&r, "ratelimit"),
        "\"per-token\";r=2;t=60, \"burst\";r=39;t=60"
    );
    g.get("/lim/both", Some(&t)).await;
    g.get("/lim/both", Some(&t)).await;
    let r = g.get("/lim/both", Some(&t)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "ratelimit"), "\"per-token\";r=0;t=60");
    // `burst` was not charged for the refusal.
    let r = g.get("/lim/burst", Some(&t)).await;
    assert_eq!(header(&r, "ratelimit"), "\"burst\";r=36;t=60");
}

/// The forward-auth answer carries the fields and counts as a request;
/// its refusal is the same 429.
#[tokio::test]
async fn forward_auth_answer_carries_the_fields() {
    for fast in [true, false] {
        let g = spawn(fast).await;
        let t = g.token(&["*"]).await;
        let auth = format!("Bearer {t}");
        let fields = [
            ("authorization", auth.as_str()),
            ("x-forwarded-uri", "/lim/token"),
        ];
        let ask = || g.send(Method::GET, "/_tokengate/auth", &fields, b"");
        for left in [2, 1, 0] {
            let r = ask().await;
            assert_eq!(r.status, StatusCode::OK, "fast path: {fast}");
            assert_eq!(header(&r, "ratelimit-policy"), "\"per-token\";q=3;w=60");
            assert_eq!(
                header(&r, "ratelimit"),
                format!("\"per-token\";r={left};t=60")
            );
        }
        let r = ask().await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.code(), "RATE_LIMITED");
        assert_eq!(header(&r, "retry-after"), "60");
        assert_eq!(g.upstream.count(), 0, "forward auth forwards nothing");
    }
}

// ---------------------------------------------------------------------------
// A token's own limit and quota, through the native API.
// ---------------------------------------------------------------------------

/// A root token for the native API.
async fn root(g: &TestGateway) -> String {
    g.mint(TokenKind::Root, &["*"], None).await.0
}

/// Creates another account in the seeded tenant; its id.
async fn tokengate_account(g: &TestGateway, email: &str) -> i64 {
    let r = call(
        g.admin_addr,
        Method::POST,
        &format!("/v1/tenants/{}/accounts", g.tenant_id),
        Some(&root(g).await),
        Some(json!({"email": email, "name": "Bob"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()["id"].as_i64().unwrap()
}

/// Mints an api token for `account` through the native API with `body`;
/// (secret, id).
async fn mint_for(g: &TestGateway, account: i64, body: serde_json::Value) -> (String, String) {
    let r = call(
        g.admin_addr,
        Method::POST,
        &format!("/v1/accounts/{account}/tokens"),
        Some(&root(g).await),
        Some(body),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let v = r.json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// A native API call as root.
async fn api(
    g: &TestGateway,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> common::Reply {
    call(g.admin_addr, method, path, Some(&root(g).await), body).await
}

/// A token's own limit and quota: minted, listed, enforced on every route,
/// changed (counts kept, effective at once: the cached record is
/// evicted) and removed through the API.
#[tokio::test]
async fn token_limit_and_quota_through_the_api() {
    for fast in [true, false] {
        let g = spawn(fast).await;
        let (t, id) = mint_for(
            &g,
            g.account_id,
            json!({"name": "limited", "rate_limit": {"requests": 2, "window_seconds": 60},
                   "quota": {"requests": 5, "period": "day"}}),
        )
        .await;
        let list = api(
            &g,
            Method::GET,
            &format!("/v1/accounts/{}/tokens", g.account_id),
            None,
        )
        .await
        .json();
        let row = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap()
            .clone();
        assert_eq!(
            row["rate_limit"],
            json!({"requests": 2, "window_seconds": 60})
        );
        assert_eq!(row["quota"], json!({"requests": 5, "period": "day"}));

        // The harness clock: 2027-01-15T08:00:00Z; the day ends in 16 h.
        let to_midnight = 16 * 3600;
        let r = g.get("/api/x", Some(&t)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            "\"token\";q=2;w=60, \"quota\";q=5;w=86400"
        );
        assert_eq!(
            header(&r, "ratelimit"),
            format!("\"token\";r=1;t=60, \"quota\";r=4;t={to_midnight}")
        );
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
        let r = g.get("/api/x", Some(&t)).await;
        assert_eq!(r.code(), "RATE_LIMITED");
        assert_eq!(header(&r, "ratelimit"), "\"token\";r=0;t=60");

        // Raised: effective at once, the two already counted kept.
        let r = api(
            &g,
            Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"rate_limit": {"requests": 10, "window_seconds": 60}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.json()["rate_limit"]["requests"], 10);
        assert_eq!(
            r.json()["quota"]["requests"],
            5,
            "the quota is left as it was"
        );
        let r = g.get("/api/x", Some(&t)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            header(&r, "ratelimit").starts_with("\"quota\";r=2;"),
            "{r:?}",
            r = r.headers
        );
        assert!(header(&r, "ratelimit").contains("\"token\";r=7;t=60"));
        // The quota: five a day, refused ones not counted.
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
        let r = g.get("/api/x", Some(&t)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.code(), "QUOTA_EXCEEDED");
        assert_eq!(header(&r, "retry-after"), to_midnight.to_string());
        assert_eq!(header(&r, "ratelimit-policy"), "\"quota\";q=5;w=86400");
        let usage = api(&g, Method::GET, &format!("/v1/tokens/{id}/usage"), None).await;
        assert_eq!(usage.status, StatusCode::OK);
        let u = usage.json();
        assert_eq!(u["quota"]["used"], 5);
        assert_eq!(u["quota"]["remaining"], 0);
        assert_eq!(u["quota"]["period"], "day");
        assert_eq!(u["quota"]["resets_at"], "2027-01-16T00:00:00Z");
        assert_eq!(u["rate_limit"]["remaining"], 5);
        assert_eq!(u["rate_limit"]["reset_seconds"], 60);

        // Removed: unlimited by the token, no fields on an unlimited route.
        let r = api(
            &g,
            Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"quota": null, "rate_limit": null})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["quota"], serde_json::Value::Null);
        let r = g.get("/api/x", Some(&t)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(!r.headers.contains_key("ratelimit"));
        let u = api(&g, Method::GET, &format!("/v1/tokens/{id}/usage"), None)
            .await
            .json();
        assert_eq!(u, json!({"rate_limit": null, "quota": null}));
        // Put back: the day's count was kept.
        api(
            &g,
            Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"quota": {"requests": 6, "period": "day"}})),
        )
        .await;
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
        assert_eq!(g.get("/api/x", Some(&t)).await.code(), "QUOTA_EXCEEDED");
        // The next day starts afresh.
        g.clock.advance(to_midnight);
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    }
}

/// Bad values are a 400 naming the field, never a 500; the usage endpoint
/// and the PATCH are tenant-walled like every token call.
#[tokio::test]
async fn bad_values_and_the_tenant_wall() {
    let g = spawn(true).await;
    for bad in [
        json!({"rate_limit": {"requests": 0, "window_seconds": 60}}),
        json!({"rate_limit": {"requests": -1, "window_seconds": 60}}),
        json!({"rate_limit": {"requests": 10, "window_seconds": 0}}),
        json!({"rate_limit": {"requests": 1_000_000_000_000_i64, "window_seconds": 60}}),
        json!({"rate_limit": {"requests": 10, "window_seconds": 99_999_999}}),
        json!({"rate_limit": {"requests": "10", "window_seconds": 60}}),
        json!({"rate_limit": {"requests": 1.5, "window_seconds": 60}}),
        json!({"rate_limit": {"requests": 10}}),
        json!({"rate_limit": {"requests": 10, "window_seconds": 60, "burst": 3}}),
        json!({"rate_limit": 10}),
        json!({"rate_limit": [10, 60]}),
        json!({"quota": {"requests": 0, "period": "day"}}),
        json!({"quota": {"requests": 10, "period": "week"}}),
        json!({"quota": {"requests": 10}}),
        json!({"quota": {"requests": 1e300, "period": "month"}}),
        json!({"quota": "lots"}),
    ] {
        let mut body = bad.clone();
        body["name"] = json!("x");
        let r = api(
            &g,
            Method::POST,
            &format!("/v1/accounts/{}/tokens", g.account_id),
            Some(body),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "mint {bad}: {:?}",
            r.body
        );
        assert_eq!(r.json()["code"], "INVALID_REQUEST");
        let (_, id) = g.mint(TokenKind::Api, &["*"], None).await;
        let r = api(
            &g,
            Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "patch {bad}: {:?}",
            r.body
        );
    }
    let (_, id) = g.mint(TokenKind::Api, &["*"], None).await;
    let r = api(
        &g,
        Method::PATCH,
        &format!("/v1/tokens/{id}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "nothing to change");
    let (_, admin_id) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    let r = api(
        &g,
        Method::PATCH,
        &format!("/v1/tokens/{admin_id}"),
        Some(json!({"quota": {"requests": 1, "period": "day"}})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "a control-plane token carries no limits"
    );
    let r = api(&g, Method::GET, "/v1/tokens/nope/usage", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Another tenant's admin sees neither the usage nor the PATCH.
    let other = api(
        &g,
        Method::POST,
        "/v1/tenants",
        Some(json!({"name": "globex"})),
    )
    .await;
    let other_id = other.json()["id"].as_i64().unwrap();
    let admin = api(
        &g,
        Method::POST,
        &format!("/v1/tenants/{other_id}/admin-tokens"),
        Some(json!({"name": "globex admin"})),
    )
    .await;
    assert_eq!(admin.status, StatusCode::CREATED, "{:?}", admin.body);
    let stranger = admin.json()["token"].as_str().unwrap().to_string();
    let r = call(
        g.admin_addr,
        Method::GET,
        &format!("/v1/tokens/{id}/usage"),
        Some(&stranger),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        g.admin_addr,
        Method::PATCH,
        &format!("/v1/tokens/{id}"),
        Some(&stranger),
        Some(json!({"quota": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Its own tenant's admin does.
    let (own_admin, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    let r = call(
        g.admin_addr,
        Method::GET,
        &format!("/v1/tokens/{id}/usage"),
        Some(&own_admin),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"rate_limit": null, "quota": null}));
}

/// Quota counts are written to the store in batches and survive a
/// restart (SQLite file store): a new process on the same file goes on
/// from the count, not from zero.
#[tokio::test]
async fn quota_counts_survive_a_restart() {
    let mut g = Opts::default()
        .extra(LIMITED)
        .grace_seconds(1)
        .spawn()
        .await;
    let (t, id) = mint_for(
        &g,
        g.account_id,
        json!({"name": "q", "quota": {"requests": 5, "period": "month"}}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    }
    // Shutdown writes what the last batch had not.
    g.running.take().unwrap().shutdown().await;
    let store_url = g.store_url();
    let seeded = (g.tenant_id, g.account_id, g.workspace_id);
    let again = Opts {
        store_url: Some(store_url),
        seeded: Some(seeded),
        ..Opts::default()
    }
    .extra(LIMITED)
    .spawn()
    .await;
    let u = api(&again, Method::GET, &format!("/v1/tokens/{id}/usage"), None)
        .await
        .json();
    assert_eq!(u["quota"]["used"], 3, "{u}");
    assert_eq!(again.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    assert_eq!(again.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    assert_eq!(again.get("/api/x", Some(&t)).await.code(), "QUOTA_EXCEEDED");
    // And the periodic flush (every second here) writes without a shutdown.
    TestGateway::eventually("the count is flushed", || async {
        let row = again
            .other_process_store()
            .await
            .get_token(&id)
            .await
            .unwrap()
            .unwrap();
        row.quota_used == 5
    })
    .await;
}

/// On PostgreSQL, two instances: a limit set through one reaches the
/// other's cached record at once (the store's invalidation feed), and both
/// add their quota counts to the one stored count.
#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_a_limit_set_through_one_instance_reaches_the_other() {
    let (_, url) = common::pg::fresh_url().await;
    let extra = format!("{LIMITED}\n[cache]\nttl_seconds = 600\nnegative_ttl_seconds = 600\n");
    let a = Opts {
        store_url: Some(url.clone()),
        ..Opts::default()
    }
    .extra(&extra)
    .spawn()
    .await;
    let b = a.peer(&url, &extra).await;
    let (t, id) = mint_for(&a, a.account_id, json!({"name": "shared"})).await;
    let r = b.get("/api/x", Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !r.headers.contains_key("ratelimit"),
        "cached on b, no limit"
    );
    let r = api(
        &a,
        Method::PATCH,
        &format!("/v1/tokens/{id}"),
        Some(json!({"quota": {"requests": 100, "period": "month"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    TestGateway::eventually("b applies the quota", || async {
        let r = b.get("/api/x", Some(&t)).await;
        r.headers
            .get("ratelimit")
            .is_some_and(|v| v.to_str().unwrap().starts_with("\"quota\""))
    })
    .await;
    let counted_on_b = 100
        - b.get("/api/x", Some(&t)).await.headers["ratelimit"]
            .to_str()
            .unwrap()
            .split(";r=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap();
    for _ in 0..3 {
        assert_eq!(a.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    }
    TestGateway::eventually("both instances' counts are stored", || async {
        let row = a.gateway.store.get_token(&id).await.unwrap().unwrap();
        row.quota_used == counted_on_b + 3
    })
    .await;
}

// ---------------------------------------------------------------------------
// Counts shared through Redis: a redis-server of the test's own, on a free
// port (never 6379), skipped with a message when none is installed.
// ---------------------------------------------------------------------------

/// A redis-server this test started; killed when dropped.
struct Redis {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a free port, or `None` (printed) without redis-server.
    async fn start(test: &str) -> Option<Self> {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        if !found {
            println!("{test}: skipped: redis-server is not installed");
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut r = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart().await;
        Some(r)
    }

    /// (Re)starts it on its port, empty (no persistence).
    async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        TestGateway::eventually("redis-server listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A policy of `limit` a minute by token, counted in Redis.
fn shared_config(redis: &Redis, limit: u32) -> String {
    format!(
        r#"
[rate_limits]
store = "{}"

[[rate_limits.policies]]
name = "shared"
requests = {limit}
window_seconds = 60
by = "token"

[[routes]]
path = "/shared"
upstream = "mock"
rate_limits = ["shared"]
"#,
        redis.url()
    )
}

/// Two instances on one store (so one token) and one Redis.
async fn two_instances(extra: &str) -> (TestGateway, TestGateway) {
    let a = Opts::default().extra(extra).spawn().await;
    let b = a.peer(&a.store_url(), extra).await;
    (a, b)
}

/// Sends `n` requests, alternating between the instances; (admitted,
/// refused). Anything but 200 and 429 fails the test.
async fn alternate(a: &TestGateway, b: &TestGateway, token: &str, n: usize) -> (u32, u32) {
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        let g = if i % 2 == 0 { a } else { b };
        match g.get("/shared", Some(token)).await.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other} (request {i})"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn two_instances_share_a_limit_through_redis() {
    let Some(redis) = Redis::start("two_instances_share_a_limit_through_redis").await else {
        return;
    };
    let limit = 400;
    let (a, b) = two_instances(&shared_config(&redis, limit)).await;
    let token = a.token(&["*"]).await;
    let (ok, _) = alternate(&a, &b, &token, 3 * limit as usize).await;
    println!("two instances, one Redis: admitted {ok} of a shared limit of {limit}");
    let within = f64::from(limit) * 0.05;
    assert!(
        (f64::from(ok) - f64::from(limit)).abs() <= within,
        "admitted {ok} of a shared limit of {limit}"
    );
    assert!(a.gateway.limiter.sharing() && b.gateway.limiter.sharing());
    // The next window, the same load sent 40 at a time to both at once.
    a.clock.advance(60);
    b.clock.advance(60);
    let (mut ok, mut n) = (0u32, 0);
    while n < 3 * limit as usize {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..40 {
            let addr = if (n + i) % 2 == 0 { a.addr } else { b.addr };
            let auth = format!("Bearer {token}");
            set.spawn(async move {
                common::send_bytes(
                    addr,
                    Method::GET,
                    "/shared",
                    &[("authorization", &auth)],
                    vec![],
                )
                .await
                .status
            });
        }
        while let Some(s) = set.join_next().await {
            match s.unwrap() {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}"),
            }
        }
        n += 40;
    }
    println!("two instances, one Redis, concurrent: admitted {ok} of {limit}");
    assert!(
        (f64::from(ok) - f64::from(limit)).abs() <= within,
        "admitted {ok} of a shared limit of {limit}, concurrently"
    );
    assert_eq!(a.gateway.metrics.rate_limit_store_errors.get(), 0);
    // Each instance alone would have admitted the limit in each window.
    assert!(a.upstream.count() < 2 * limit as usize && b.upstream.count() < 2 * limit as usize);
}

#[tokio::test]
async fn redis_killed_and_restarted_keeps_limiting_and_rejoins() {
    let Some(mut redis) =
        Redis::start("redis_killed_and_restarted_keeps_limiting_and_rejoins").await
    else {
        return;
    };
    let limit = 200;
    let (a, b) = two_instances(&shared_config(&redis, limit)).await;
    let token = a.token(&["*"]).await;
    let (before, _) = alternate(&a, &b, &token, 100).await;
    assert!(before >= 90, "{before} of the first 100");

    // Redis gone: each instance limits on its own count (never unlimited,
    // never a 5xx), counts the errors and says so.
    redis.kill();
    let (during, refused) = alternate(&a, &b, &token, 2 * limit as usize).await;
    assert!(refused > 0, "still limited without Redis");
    assert!(
        during + before <= 2 * limit,
        "each instance stays within the limit on its own: {before} + {during}"
    );
    assert!(!a.gateway.limiter.sharing() && !b.gateway.limiter.sharing());
    assert!(a.metric("tokengate_rate_limit_store_errors_total").await > 0);

    // Back, empty: both rejoin by themselves, and the window's uses are
    // still counted (each instance is at its own limit, and adds its uses
    // into the new Redis).
    redis.restart().await;
    TestGateway::eventually("both instances share counts again", || async {
        a.gateway.limiter.sharing() && b.gateway.limiter.sharing()
    })
    .await;
    let (after, _) = alternate(&a, &b, &token, 100).await;
    assert!(
        after <= 2 * rate_slice(limit),
        "{after} admitted after the restart"
    );
    // A new window: shared again, the limit once across both.
    a.clock.advance(60);
    b.clock.advance(60);
    let (ok, _) = alternate(&a, &b, &token, 3 * limit as usize).await;
    println!("before {before}, Redis down {during}, after the restart {after}, next window {ok} (limit {limit})");
    let within = f64::from(limit) * 0.05;
    assert!(
        (f64::from(ok) - f64::from(limit)).abs() <= within,
        "admitted {ok} of a shared limit of {limit} after the rejoin"
    );
}

fn rate_slice(limit: u32) -> u32 {
    tokengate::ratelimit::slice(limit)
}

/// A Redis that stops answering (SIGSTOP) is never waited for: requests
/// are answered from the instance's own count, and sharing resumes when
/// it answers again.
#[tokio::test]
async fn a_stalled_redis_is_not_waited_for() {
    let Some(redis) = Redis::start("a_stalled_redis_is_not_waited_for").await else {
        return;
    };
    let pid = redis.child.as_ref().unwrap().id().to_string();
    let limit = 100;
    let g = Opts::default()
        .extra(&shared_config(&redis, limit))
        .spawn()
        .await;
    let token = g.token(&["*"]).await;
    for _ in 0..10 {
        assert_eq!(g.get("/shared", Some(&token)).await.status, StatusCode::OK);
    }
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..2 * limit {
        match g.get("/shared", Some(&token)).await.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        ok + 10 <= limit,
        "never more than the limit on its own: {ok}"
    );
    assert!(limited >= limit, "{limited} refused");
    TestGateway::eventually("the stall is noticed", || async {
        !g.gateway.limiter.sharing()
    })
    .await;
    signal("-CONT");
    TestGateway::eventually("sharing again", || async { g.gateway.limiter.sharing() }).await;
    assert!(g.metric("tokengate_rate_limit_store_errors_total").await > 0);
}

/// A Redis that is not there at start-up stops nothing: the instance
/// limits on its own count from the first request (no redis-server
/// needed: nothing listens on the port).
#[tokio::test]
async fn redis_absent_from_the_start_limits_locally() {
    let port = common::dead_port().await;
    let extra = format!(
        r#"
[rate_limits]
store = "redis://127.0.0.1:{port}/0"

[[rate_limits.policies]]
name = "shared"
requests = 5
window_seconds = 60
by = "token"

[[routes]]
path = "/shared"
upstream = "mock"
rate_limits = ["shared"]
"#
    );
    for fast in [true, false] {
        let g = Opts::default().fast_path(fast).extra(&extra).spawn().await;
        let token = g.token(&["*"]).await;
        let mut got = Vec::new();
        for _ in 0..8 {
            got.push(g.get("/shared", Some(&token)).await.status.as_u16());
        }
        assert_eq!(
            got,
            [200, 200, 200, 200, 200, 429, 429, 429],
            "fast path: {fast}"
        );
        assert!(!g.gateway.limiter.sharing());
        assert!(g.metric("tokengate_rate_limit_store_errors_total").await > 0);
    }
}
