//! Several gateway instances on one PostgreSQL store: revocations, blocks
//! and mints reach every instance; a dropped listener resyncs; a store
//! outage fails closed. Every test here needs PostgreSQL: `cargo test`
//! reports them ignored; `.ci/run` runs them (`cargo test -- --ignored pg_`)
//! with `TOKENGATE_TEST_DATABASE_URL` set, and without a reachable database
//! they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::cut::{host_port, Cut};
use common::{pg, ws, Opts, TestGateway};
use http::{Method, StatusCode};
use tokengate::auth::Ability;
use tokengate::issuer::MintRequest;
use tokengate::store::Status;
use tokengate::token::{TokenHash, TokenKind};

/// Long TTLs, so that only a notification (or a resync) can explain an
/// instance noticing a change.
const LONG_TTL: &str = "[cache]\nttl_seconds = 600\nnegative_ttl_seconds = 600\n";

/// Two instances on a fresh schema: (a, b, base URL).
async fn pair(extra: &str) -> (TestGateway, TestGateway, String) {
    let (base, url) = pg::fresh_url().await;
    let a = TestGateway::spawn_opts(Opts {
        extra: extra.into(),
        store_url: Some(url.clone()),
        ..Opts::default()
    })
    .await;
    let b = a.peer(&url, extra).await;
    (a, b, base)
}

async fn status(g: &TestGateway, token: &str) -> StatusCode {
    g.get("/api/x", Some(token)).await.status
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_a_token_revoked_through_one_instance_is_refused_by_the_other() {
    let (a, b, _) = pair(LONG_TTL).await;
    let (t, id) = a.mint(TokenKind::Api, &["*"], None).await;
    assert_eq!(
        status(&b, &t).await,
        StatusCode::OK,
        "minted on a, valid on b at once"
    );
    assert_eq!(status(&b, &t).await, StatusCode::OK);
    let lookups = b.store_lookups();

    a.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    assert_eq!(status(&a, &t).await, StatusCode::UNAUTHORIZED);
    TestGateway::eventually("b refuses the revoked token", || async {
        let r = b.get("/api/x", Some(&t)).await;
        r.status == StatusCode::UNAUTHORIZED && r.code() == "TOKEN_REVOKED"
    })
    .await;
    assert!(b.gateway.metrics.invalidations_received.get() >= 1);
    assert!(
        b.store_lookups() > lookups,
        "b reloaded after the notification"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_blocks_and_unblocks_reach_every_instance() {
    let (a, b, _) = pair(LONG_TTL).await;
    let t = a.token(&["*"]).await;
    assert_eq!(status(&b, &t).await, StatusCode::OK);
    a.gateway
        .issuer
        .set_account_status(a.account_id, Status::Blocked, &Default::default())
        .await
        .unwrap();
    TestGateway::eventually("b sees the account blocked", || async {
        let r = b.get("/api/x", Some(&t)).await;
        r.status == StatusCode::FORBIDDEN && r.code() == "ACCOUNT_BLOCKED"
    })
    .await;
    a.gateway
        .issuer
        .set_account_status(a.account_id, Status::Active, &Default::default())
        .await
        .unwrap();
    TestGateway::eventually("b sees the account active", || async {
        status(&b, &t).await == StatusCode::OK
    })
    .await;
    a.gateway
        .issuer
        .set_tenant_status(a.tenant_id, Status::Blocked, &Default::default())
        .await
        .unwrap();
    TestGateway::eventually("b sees the tenant blocked", || async {
        let r = b.get("/api/x", Some(&t)).await;
        r.status == StatusCode::FORBIDDEN && r.code() == "TENANT_BLOCKED"
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_a_mint_clears_negative_entries_on_every_instance() {
    let extra = format!("{LONG_TTL}[tokens]\naccept_legacy = true\n");
    let (a, b, _) = pair(&extra).await;
    let legacy = "2|abc123xyz789-legacy";
    for _ in 0..2 {
        let r = b.get("/api/x", Some(legacy)).await;
        assert_eq!(
            r.code(),
            "TOKEN_INVALID",
            "unknown, and now negatively cached on b"
        );
    }
    a.gateway
        .issuer
        .import_legacy(
            TokenHash::of(legacy),
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: Some(a.tenant_id),
                account_id: Some(a.account_id),
                workspace_id: None,
                name: "imported".into(),
                abilities: vec![Ability::parse("*").unwrap()],
                expires_at: None,
            },
            &Default::default(),
        )
        .await
        .unwrap();
    TestGateway::eventually("b accepts the newly imported token", || async {
        status(&b, legacy).await == StatusCode::OK
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_a_killed_listener_reconnects_and_the_revocation_still_holds() {
    let (a, b, base) = pair(LONG_TTL).await;
    let (t, id) = a.mint(TokenKind::Api, &["*"], None).await;
    assert_eq!(status(&b, &t).await, StatusCode::OK);

    // Kill every listener connection of this test's schema, then revoke at
    // once: the notification may well be lost.
    let schema = b
        .gateway
        .config
        .store
        .url
        .expose()
        .rsplit("%3D")
        .next()
        .unwrap()
        .to_string();
    let killed = pg::exec(
        &base,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'tokengate-listen' AND query LIKE '%{schema}%'"
        ),
    )
    .await;
    assert_eq!(killed, 2, "both instances' listeners were found and killed");
    a.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();

    TestGateway::eventually("b resynced after reconnecting", || async {
        b.gateway.metrics.feed_resyncs.get() >= 1
    })
    .await;
    let r = b.get("/api/x", Some(&t)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "TOKEN_REVOKED");

    // And the new listener works: the next revocation arrives by notification.
    let (t2, id2) = a.mint(TokenKind::Api, &["*"], None).await;
    assert_eq!(status(&b, &t2).await, StatusCode::OK);
    a.gateway
        .issuer
        .revoke(&id2, &Default::default())
        .await
        .unwrap();
    TestGateway::eventually("b refuses the second revoked token", || async {
        status(&b, &t2).await == StatusCode::UNAUTHORIZED
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_a_store_outage_fails_closed_and_recovers_without_restart() {
    let (_, url) = pg::fresh_url().await;
    let a = TestGateway::spawn_opts(Opts {
        extra: LONG_TTL.into(),
        store_url: Some(url.clone()),
        ..Opts::default()
    })
    .await;
    let pg_addr = tokio::net::lookup_host(host_port(&url))
        .await
        .unwrap()
        .next()
        .unwrap();
    let cut = Cut::spawn(pg_addr).await;
    let b_url = url.replacen(&host_port(&url), &cut.addr.to_string(), 1);
    // The periodic last-used flush must not tick during the test: it
    // counts what is pending.
    let b = TestGateway::spawn_opts(
        Opts {
            extra: LONG_TTL.into(),
            store_url: Some(b_url),
            seeded: Some((a.tenant_id, a.account_id, a.workspace_id)),
            store_timeout_seconds: 1,
            ..Opts::default()
        }
        .store("last_used_flush_seconds", 3600),
    )
    .await;

    let (cached, cached_id) = a.mint(TokenKind::Api, &["*"], None).await;
    let (revoked, revoked_id) = a.mint(TokenKind::Api, &["*"], None).await;
    let (unseen, _) = a.mint(TokenKind::Api, &["*"], None).await;
    let (unseen_h2, _) = a.mint(TokenKind::Api, &["*"], None).await;
    assert_eq!(status(&b, &cached).await, StatusCode::OK);
    assert_eq!(status(&b, &revoked).await, StatusCode::OK);
    a.gateway
        .issuer
        .revoke(&revoked_id, &Default::default())
        .await
        .unwrap();
    TestGateway::eventually("b refuses the revoked token", || async {
        status(&b, &revoked).await == StatusCode::UNAUTHORIZED
    })
    .await;
    let audit_before = a.gateway.store.list_audit(None, 1000).await.unwrap().len();
    // Notifications are asynchronous: wait until b has heard all five (four
    // mints, one revoke), each of which evicts, then cache `cached` again.
    TestGateway::eventually("b heard every notification", || async {
        b.gateway.metrics.invalidations_received.get() >= 5
    })
    .await;
    assert_eq!(status(&b, &cached).await, StatusCode::OK);

    cut.cut();
    let r = b.get("/api/x", Some(&unseen)).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "uncached: fail closed"
    );
    assert_eq!(r.code(), "STORE_UNAVAILABLE");
    assert_eq!(r.headers["retry-after"], "1");
    // The same on hyper's path (h2).
    let bearer = format!("Bearer {unseen_h2}");
    let r = b
        .send_h2(Method::GET, "/api/x", &[("authorization", &bearer)], b"")
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "STORE_UNAVAILABLE");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(
        status(&b, &cached).await,
        StatusCode::OK,
        "cached: keeps working"
    );
    for _ in 0..3 {
        // Cached as revoked when b reloaded it after the notification.
        let r = b.get("/api/x", Some(&revoked)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNAUTHORIZED, "TOKEN_REVOKED"),
            "a revoked token never gets 2xx"
        );
    }
    let ready = common::send(b.admin_addr, Method::GET, "/readyz", &[], b"").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // Writes fail whole while the store is away: nothing half-done.
    assert!(b
        .gateway
        .issuer
        .revoke(&cached_id, &Default::default())
        .await
        .is_err());
    assert!(
        !b.gateway
            .last_used
            .flush(b.gateway.store.as_ref(), &b.gateway.metrics, b.clock.now())
            .await
    );
    // `cached` and `revoked` (used before its revocation) were both used on b.
    assert_eq!(
        b.gateway.last_used.pending(),
        2,
        "the failed flush kept its batch"
    );

    cut.restore();
    TestGateway::eventually("b recovers without a restart", || async {
        status(&b, &unseen).await == StatusCode::OK
    })
    .await;
    TestGateway::eventually("b is ready again", || async {
        common::send(b.admin_addr, Method::GET, "/readyz", &[], b"")
            .await
            .status
            == StatusCode::OK
    })
    .await;
    TestGateway::eventually("b's feed resynced", || async {
        b.gateway.metrics.feed_resyncs.get() >= 1
    })
    .await;
    let r = b.get("/api/x", Some(&revoked)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_REVOKED")
    );
    assert_eq!(
        status(&b, &cached).await,
        StatusCode::OK,
        "the failed revoke did not happen"
    );
    assert!(
        b.gateway
            .last_used
            .flush(b.gateway.store.as_ref(), &b.gateway.metrics, b.clock.now())
            .await
    );
    let row = a
        .gateway
        .store
        .get_token(&cached_id)
        .await
        .unwrap()
        .unwrap();
    assert!(row.last_used_at.is_some(), "last-used survived the outage");
    let audit_after = a.gateway.store.list_audit(None, 1000).await.unwrap().len();
    assert_eq!(
        audit_after, audit_before,
        "no audit event for the failed revoke"
    );
    drop(cut);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_a_tunnel_is_closed_by_another_instances_revocation() {
    let (a, b, _) = pair(LONG_TTL).await;
    let (t, id) = a.mint(TokenKind::Api, &["*"], None).await;
    let (_, other_id) = a.mint(TokenKind::Api, &["*"], None).await;
    let mut ws = ws::open(b.addr, &t).await;
    ws::echo(&mut ws, "before").await;

    // Another token's revocation, heard from the store, leaves it open.
    a.gateway
        .issuer
        .revoke(&other_id, &Default::default())
        .await
        .unwrap();
    TestGateway::eventually("b heard the first revocation", || async {
        b.gateway.metrics.invalidations_received.get() >= 3
    })
    .await;
    ws::echo(&mut ws, "after another revocation").await;
    assert_eq!(b.gateway.metrics.tunnels_refused.get(), 0);

    // Its own, made through a, closes the tunnel on b: the cache TTL (600 s)
    // cannot explain it.
    a.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    assert!(
        ws::closed_within(&mut ws, 20).await,
        "the tunnel on b outlived a revocation made through a"
    );
    assert_eq!(b.gateway.metrics.tunnels_refused.get(), 1);
}
