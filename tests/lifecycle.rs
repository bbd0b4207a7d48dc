//! Token lifecycle on the request path: cache behaviour, expiry, revocation,
//! store economy, last-used batching, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Opts, TestGateway};
use http::StatusCode;
use http_body_util::BodyExt;
use tokengate::store::TokenFilter;
use tokengate::token::{TokenFormat, TokenKind};

/// A gateway whose periodic last-used flush never ticks during the test
/// (but for the first tick, at start, with nothing pending): for tests that
/// count what is pending or written and flush by hand.
async fn without_periodic_flush() -> TestGateway {
    Opts::default()
        .store("last_used_flush_seconds", 3600)
        .spawn()
        .await
}

#[tokio::test]
async fn a_cached_token_expires_by_the_clock_not_the_cache() {
    let g = TestGateway::spawn().await;
    let now = g.clock.now();
    let (t, _) = g.mint(TokenKind::Api, &["*"], Some(now + 60)).await;
    assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    let lookups = g.store_lookups();
    assert_eq!(lookups, 1, "second request was a cache hit");

    g.clock.advance(59);
    assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    g.clock.advance(1);
    let r = g.get("/api/x", Some(&t)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "TOKEN_EXPIRED");
    assert_eq!(g.store_lookups(), lookups, "decided on the cached record");
}

#[tokio::test]
async fn the_first_request_after_a_revoke_returns_is_refused() {
    let g = TestGateway::spawn().await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    for _ in 0..3 {
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    }
    g.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    let r = g.get("/api/x", Some(&t)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "TOKEN_REVOKED");
    // Another token of the same account is untouched.
    let other = g.token(&["*"]).await;
    assert_eq!(g.get("/api/x", Some(&other)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn garbage_and_bad_checksums_never_reach_the_store() {
    let g = TestGateway::spawn().await;
    let real = g.token(&["*"]).await;
    let flipped = {
        let mut b = real.clone().into_bytes();
        let i = b.len() - 1;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let wrong_prefix = real.replacen("tgk", "zzz", 1);
    let before = g.store_lookups();
    let cache_before = g.gateway.metrics.cache_lookups.get();
    for junk in [
        "x",
        "tgk_",
        "' OR 1=1 --",
        &"A".repeat(4000),
        flipped.as_str(),
        wrong_prefix.as_str(),
    ] {
        let r = g
            .send(http::Method::GET, "/api/x", &[("token", junk)], b"")
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNAUTHORIZED, "TOKEN_MALFORMED"),
            "{junk}"
        );
    }
    assert_eq!(g.store_lookups(), before, "no store query for garbage");
    assert_eq!(
        g.gateway.metrics.cache_lookups.get(),
        cache_before,
        "not even a cache lookup"
    );

    // A well-formed unknown token costs one query, then the negative entry
    // answers.
    let stranger = TokenFormat::default().generate(TokenKind::Api);
    for _ in 0..5 {
        let r = g.get("/api/x", Some(stranger.expose())).await;
        assert_eq!(r.code(), "TOKEN_INVALID");
    }
    assert_eq!(g.store_lookups(), before + 1);
}

#[tokio::test]
async fn a_thousand_concurrent_requests_for_a_cold_token_make_one_store_query() {
    let g = Arc::new(TestGateway::spawn().await);
    let t = Arc::new(g.token(&["*"]).await);
    let before = g.store_lookups();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (g, t) = (Arc::clone(&g), Arc::clone(&t));
        tasks.push(tokio::spawn(async move {
            g.get("/api/x", Some(&t)).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(g.store_lookups(), before + 1);
}

#[tokio::test]
async fn last_used_is_batched_not_written_per_request() {
    let g = without_periodic_flush().await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    for _ in 0..20 {
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    }
    let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, None, "nothing written per request");
    assert_eq!(g.gateway.last_used.pending(), 1);

    assert!(
        g.gateway
            .last_used
            .flush(g.gateway.store.as_ref(), &g.gateway.metrics, g.clock.now())
            .await
    );
    let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, Some(g.clock.now()));
    assert_eq!(
        g.gateway.metrics.last_used_written.get(),
        1,
        "one row for twenty uses"
    );
    assert_eq!(g.gateway.last_used.pending(), 0);
}

/// One request with `token`, then a flush.
async fn use_then_flush(g: &TestGateway, token: &str) {
    assert_eq!(g.get("/api/x", Some(token)).await.status, StatusCode::OK);
    flush_last_used(g).await;
}

/// Writes the pending last-used times now, as the periodic flush would.
async fn flush_last_used(g: &TestGateway) {
    assert!(
        g.gateway
            .last_used
            .flush(g.gateway.store.as_ref(), &g.gateway.metrics, g.clock.now())
            .await
    );
}

#[tokio::test]
async fn a_busy_token_is_written_once_per_resolution_not_once_per_flush() {
    // The default resolution: 60 seconds.
    let g = without_periodic_flush().await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    let written_at = g.clock.now();
    use_then_flush(&g, &t).await;
    // Used on through the next 59 seconds: nothing more to write.
    for _ in 0..59 {
        g.clock.advance(1);
        use_then_flush(&g, &t).await;
    }
    assert_eq!(g.gateway.metrics.last_used_written.get(), 1);
    let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, Some(written_at));
    // A minute on, the next use is written.
    g.clock.advance(1);
    use_then_flush(&g, &t).await;
    assert_eq!(g.gateway.metrics.last_used_written.get(), 2);
    let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, Some(written_at + 60));
}

#[tokio::test]
async fn a_token_reloaded_within_the_resolution_is_still_written_a_period_after_its_last_write() {
    let g = without_periodic_flush().await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    let written_at = g.clock.now();
    use_then_flush(&g, &t).await;
    // 40 s on, the token is loaded again (a new cache entry) and used.
    g.clock.advance(40);
    g.gateway.cache.invalidate_all();
    use_then_flush(&g, &t).await;
    assert_eq!(g.gateway.metrics.last_used_written.get(), 1);
    // 65 s after the write, 25 s after the new entry's first use: written,
    // because the period runs from the write, whichever entry made it.
    g.clock.advance(25);
    use_then_flush(&g, &t).await;
    assert_eq!(g.gateway.metrics.last_used_written.get(), 2);
    let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, Some(written_at + 65));
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_stops_accepting_and_flushes() {
    // Only the final flush, at shutdown, can write the last use.
    let mut g = without_periodic_flush().await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;

    // An upload that is still going when shutdown begins.
    let (tx, pending) = g.upload("/echo/upload", &t);
    tx.send(Bytes::from_static(b"first,")).await.unwrap();
    let resp = pending.await.unwrap().unwrap();

    let running = g.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());

    // New connections are refused once the listener is closed.
    TestGateway::eventually("the listener is closed", || async {
        tokio::net::TcpStream::connect(g.addr).await.is_err()
    })
    .await;
    assert!(!shutdown.is_finished(), "shutdown waits for the upload");

    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first,second");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes once in-flight work is done")
        .unwrap();

    let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
    assert!(row.last_used_at.is_some(), "final flush wrote last-used");
}

#[tokio::test]
async fn shutdown_gives_in_flight_requests_the_grace_period_and_no_more() {
    // Not the default 30 s: a shutdown bounded by that would not show the
    // configured grace was read.
    const GRACE: Duration = Duration::from_secs(3);
    let mut g = TestGateway::spawn_full("", 3).await;
    let t = g.token(&["*"]).await;
    // Two uploads in flight: one that finishes during the grace period,
    // one that never does.
    let (finishing, pending) = g.upload("/echo/finishing", &t);
    finishing.send(Bytes::from_static(b"first,")).await.unwrap();
    let finishing_resp = pending.await.unwrap().unwrap();
    // On the h2 upstream, whose response timeout (the default 30 s) is far
    // past the grace: a body that stalls for `response_timeout_ms` ends its
    // exchange (DESIGN section 8), and the mock upstream's is 1 s.
    let (stuck, pending) = g.upload("/h2/echo/forever", &t);
    stuck.send(Bytes::from_static(b"x")).await.unwrap();
    let _stuck_resp = pending.await.unwrap().unwrap();

    let started = tokio::time::Instant::now();
    let shutdown = tokio::spawn(g.running.take().unwrap().shutdown());
    finishing.send(Bytes::from_static(b"second")).await.unwrap();
    drop(finishing);
    let body = finishing_resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"first,second");

    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown gave up on the stuck upload")
        .unwrap();
    let took = started.elapsed();
    // It waited the grace period out for the stuck upload (a lower bound:
    // never shorter however busy the machine) ...
    assert!(took >= GRACE, "shutdown took {took:?}, less than the grace");
    // ... and then stopped: not the default 30 s, nor anything near it.
    assert!(
        took < GRACE + Duration::from_secs(10),
        "shutdown took {took:?} for a {GRACE:?} grace"
    );
    drop(stuck);
}

#[tokio::test]
async fn listings_never_show_a_secret_or_hash() {
    let g = TestGateway::spawn().await;
    let (t, _) = g.mint(TokenKind::Api, &["*"], None).await;
    let rows = g
        .gateway
        .store
        .list_tokens(TokenFilter::Account(g.account_id))
        .await
        .unwrap();
    let text = serde_json::to_string(&rows).unwrap();
    let hash = tokengate::token::TokenHash::of(&t).to_hex();
    assert!(!text.contains(&t[4..]), "secret in listing");
    assert!(!text.contains(&hash), "hash in listing");
    assert!(text.contains(&t[..8]), "display prefix shown");
}

/// The token id the upstream saw on its last request.
fn upstream_token_id(g: &TestGateway) -> String {
    g.upstream.last().headers["x-token-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_connections_last_request_still_uses_the_token_it_remembers() {
    let g = TestGateway::spawn().await;
    let (t, _) = g.mint(TokenKind::Api, &["*"], None).await;
    let mut conn = common::KeepAlive::open(g.addr).await;
    assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);
    let last = conn.get_last("/api/x", &t).await;
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.headers["connection"], "close");
    assert_eq!(
        g.gateway.metrics.memo_hits.get(),
        1,
        "the last request read the memo"
    );
    assert_eq!(g.store_lookups(), 1);
}

#[tokio::test]
async fn a_keep_alive_connection_reuses_its_token_but_never_past_a_revoke() {
    let g = TestGateway::spawn().await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    let mut conn = common::KeepAlive::open(g.addr).await;
    for _ in 0..5 {
        assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);
    }
    assert_eq!(g.store_lookups(), 1);
    assert_eq!(
        g.gateway.metrics.memo_hits.get(),
        4,
        "repeats skip the cache"
    );
    assert_eq!(g.metric("tokengate_memo_hits_total").await, 4);

    g.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    let r = conn.get("/api/x", &t).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "TOKEN_REVOKED");
}

#[tokio::test]
async fn a_keep_alive_connection_sees_a_block_and_expiry_at_once() {
    let g = TestGateway::spawn().await;
    let now = g.clock.now();
    let (t, _) = g.mint(TokenKind::Api, &["*"], Some(now + 60)).await;
    let mut conn = common::KeepAlive::open(g.addr).await;
    assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);
    assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);

    // Expiry is decided on every request, memo or not.
    g.clock.advance(60);
    let r = conn.get("/api/x", &t).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED")
    );

    let (t2, _) = g.mint(TokenKind::Api, &["*"], None).await;
    assert_eq!(conn.get("/api/x", &t2).await.status, StatusCode::OK);
    g.gateway
        .issuer
        .set_account_status(
            g.account_id,
            tokengate::store::Status::Blocked,
            &Default::default(),
        )
        .await
        .unwrap();
    let r = conn.get("/api/x", &t2).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "ACCOUNT_BLOCKED"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn tokens_alternating_on_one_connection_each_keep_their_identity() {
    let g = TestGateway::spawn().await;
    let (a, id_a) = g.mint(TokenKind::Api, &["*"], None).await;
    let (b, id_b) = g.mint(TokenKind::Api, &["*"], None).await;
    let garbage = TokenFormat::default().generate(TokenKind::Api);
    let mut conn = common::KeepAlive::open(g.addr).await;
    for _ in 0..3 {
        assert_eq!(conn.get("/api/x", &a).await.status, StatusCode::OK);
        assert_eq!(upstream_token_id(&g), id_a);
        assert_eq!(conn.get("/api/x", &b).await.status, StatusCode::OK);
        assert_eq!(upstream_token_id(&g), id_b);
        // An unknown token right after a good one is not mistaken for it.
        let r = conn.get("/api/x", garbage.expose()).await;
        assert_eq!(r.code(), "TOKEN_INVALID");
        assert_eq!(conn.get("/api/x", &a).await.status, StatusCode::OK);
        assert_eq!(conn.get("/api/x", &a).await.status, StatusCode::OK);
        assert_eq!(upstream_token_id(&g), id_a);
    }
}

#[tokio::test]
async fn the_memo_does_not_outlive_the_cache_ttl() {
    // The cache TTL runs on the monotonic clock, not the injectable one, so
    // this waits it out. 3 s leaves the first two requests ample time to
    // fall within it on a busy machine.
    const TTL: Duration = Duration::from_secs(3);
    let g = TestGateway::spawn_with("[cache]\nttl_seconds = 3\n").await;
    let (t, _) = g.mint(TokenKind::Api, &["*"], None).await;
    let mut conn = common::KeepAlive::open(g.addr).await;
    assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);
    // The store read was made before this.
    let loaded_by = tokio::time::Instant::now();
    assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);
    assert_eq!(g.store_lookups(), 1);
    assert_eq!(
        g.gateway.metrics.memo_hits.get(),
        1,
        "the repeat was a memo hit"
    );
    // Past the TTL from the store read, the entry is read again, as a cache
    // entry would be, and the memo is not used.
    tokio::time::sleep_until(loaded_by + TTL + Duration::from_millis(100)).await;
    assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);
    assert_eq!(g.store_lookups(), 2);
    assert_eq!(g.gateway.metrics.memo_hits.get(), 1);
}

/// Inserts an api token for `g`'s seeded account straight into the store
/// through `store`, as another process would: nothing tells `g`.
async fn mint_elsewhere(
    g: &TestGateway,
    store: &dyn tokengate::store::TokenStore,
    secret: &tokengate::token::Secret,
) {
    store
        .insert_token(
            &tokengate::store::NewToken {
                id: uuid::Uuid::now_v7().to_string(),
                kind: TokenKind::Api,
                tenant_id: Some(g.tenant_id),
                account_id: Some(g.account_id),
                workspace_id: Some(g.workspace_id),
                name: "from another process".into(),
                abilities: vec!["*".into()],
                display_prefix: secret.display_prefix().into(),
                hash: secret.hash(),
                created_at: g.clock.now(),
                expires_at: None,
                created_by: None,
                rate_limit: None,
                quota: None,
            },
            &Default::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unknown_token_entry_lives_for_the_negative_ttl() {
    // Monotonic time again: the negative TTL is waited out.
    const NEGATIVE_TTL: Duration = Duration::from_secs(3);
    let g = TestGateway::spawn_with("[cache]\nnegative_ttl_seconds = 3\n").await;
    let secret = TokenFormat::default().generate(TokenKind::Api);
    let started = tokio::time::Instant::now();
    let r = g.get("/api/x", Some(secret.expose())).await;
    assert_eq!(r.code(), "TOKEN_INVALID");
    let lookups = g.store_lookups();

    // The token appears in the store behind the gateway's back.
    let other = g.other_process_store().await;
    mint_elsewhere(&g, other.as_ref(), &secret).await;
    let r = g.get("/api/x", Some(secret.expose())).await;
    assert_eq!(r.code(), "TOKEN_INVALID", "the negative entry answers");
    assert_eq!(g.store_lookups(), lookups);

    // Once it expires, the store is asked again, once, and says yes.
    TestGateway::eventually("the negative entry expires", || async {
        g.get("/api/x", Some(secret.expose())).await.status == StatusCode::OK
    })
    .await;
    assert!(
        started.elapsed() >= NEGATIVE_TTL - Duration::from_millis(50),
        "the negative entry went after {:?}",
        started.elapsed()
    );
    assert_eq!(g.store_lookups(), lookups + 1);
}

#[tokio::test]
async fn a_mint_through_the_gateway_clears_the_unknown_token_entry_at_once() {
    let g = TestGateway::spawn_with(
        "[cache]\nnegative_ttl_seconds = 600\n[tokens]\naccept_legacy = true\n",
    )
    .await;
    let legacy = "2|abc123xyz789-legacy";
    for _ in 0..2 {
        let r = g.get("/api/x", Some(legacy)).await;
        assert_eq!(r.code(), "TOKEN_INVALID");
    }
    g.gateway
        .issuer
        .import_legacy(
            tokengate::token::TokenHash::of(legacy),
            tokengate::issuer::MintRequest {
                kind: TokenKind::Api,
                tenant_id: Some(g.tenant_id),
                account_id: Some(g.account_id),
                workspace_id: None,
                name: "imported".into(),
                abilities: vec![tokengate::auth::Ability::parse("*").unwrap()],
                expires_at: None,
            },
            &Default::default(),
        )
        .await
        .unwrap();
    let r = g.get("/api/x", Some(legacy)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn a_change_made_by_another_process_on_sqlite_is_seen_within_the_cache_ttl() {
    // Two gateways on one SQLite file: one trusts a cached record for 1 s,
    // the other for 600 s. A revocation made by a third process reaches
    // the first when its record expires; the second shows that nothing
    // else told them.
    let short = TestGateway::spawn_with("[cache]\nttl_seconds = 1\n").await;
    let long = short
        .peer(&short.store_url(), "[cache]\nttl_seconds = 600\n")
        .await;
    let (t, id) = short.mint(TokenKind::Api, &["*"], None).await;
    let mut conn = common::KeepAlive::open(short.addr).await;
    for g in [&short, &long] {
        assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    }
    assert_eq!(conn.get("/api/x", &t).await.status, StatusCode::OK);

    let other = short.other_process_store().await;
    assert!(other
        .revoke_token(&id, short.clock.now(), &Default::default())
        .await
        .unwrap()
        .is_some());
    TestGateway::eventually("the 1 s gateway sees the revocation", || async {
        short.get("/api/x", Some(&t)).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    // The memo of a keep-alive connection is no longer-lived than the cache.
    let r = conn.get("/api/x", &t).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_REVOKED")
    );
    assert_eq!(
        long.get("/api/x", Some(&t)).await.status,
        StatusCode::OK,
        "still cached for 600 s: the TTL is what bounds staleness on SQLite"
    );
}

#[tokio::test]
async fn a_resolution_of_zero_writes_every_flush() {
    let g = Opts::default()
        .store("last_used_flush_seconds", 3600)
        .store("last_used_resolution_seconds", 0)
        .spawn()
        .await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    for i in 1..=3 {
        use_then_flush(&g, &t).await;
        assert_eq!(g.gateway.metrics.last_used_written.get(), i);
        let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
        assert_eq!(row.last_used_at, Some(g.clock.now()));
        g.clock.advance(1);
    }
}

#[tokio::test]
async fn a_failed_flush_keeps_its_batch_for_the_next() {
    let outage = common::outage::Outage::default();
    let g = Opts::default()
        .store("last_used_flush_seconds", 3600)
        .outage(&outage)
        .spawn()
        .await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    let used_at = g.clock.now();
    assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    outage.begin();
    let flush = || {
        g.gateway
            .last_used
            .flush(g.gateway.store.as_ref(), &g.gateway.metrics, g.clock.now())
    };
    assert!(!flush().await, "the flush reports its failure");
    assert_eq!(g.gateway.last_used.pending(), 1, "the batch is kept");
    assert_eq!(g.gateway.metrics.last_used_flush_failures.get(), 1);
    outage.end();
    g.clock.advance(5);
    assert!(flush().await);
    assert_eq!(g.gateway.last_used.pending(), 0);
    let row = g.gateway.store.get_token(&id).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, Some(used_at), "the use's own time, kept");
}
