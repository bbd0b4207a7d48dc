//! Every way the request path refuses, with its status, code and headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestGateway;
use http::{Method, StatusCode};
use tokengate::store::Status;
use tokengate::token::{TokenFormat, TokenKind};

#[tokio::test]
async fn a_valid_token_is_forwarded() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let r = g.get("/api/things", Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["ok"], true);
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn missing_token_is_401_with_bearer_challenge() {
    let g = TestGateway::spawn().await;
    let r = g.get("/api/things", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "TOKEN_MISSING");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn malformed_tokens_are_401() {
    let g = TestGateway::spawn().await;
    let good = g.token(&["*"]).await;
    let mut typo = good.clone().into_bytes();
    typo[8] = if typo[8] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in ["garbage", "tgk_tooshort", typo.as_str()] {
        let r = g.get("/api/things", Some(bad)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(r.code(), "TOKEN_MALFORMED");
        assert!(r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
    }
    let r = g
        .send(
            Method::GET,
            "/api/x",
            &[("authorization", "Basic dXNlcjpwdw==")],
            b"",
        )
        .await;
    assert_eq!(r.code(), "TOKEN_MALFORMED");
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn unknown_well_formed_token_is_401_invalid() {
    let g = TestGateway::spawn().await;
    let stranger = TokenFormat::default().generate(TokenKind::Api);
    let r = g.get("/api/things", Some(stranger.expose())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "TOKEN_INVALID");
}

#[tokio::test]
async fn revoked_expired_blocked_and_kind_are_refused() {
    let g = TestGateway::spawn().await;
    let now = g.clock.now();

    let (revoked, id) = g.mint(TokenKind::Api, &["*"], None).await;
    g.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    let r = g.get("/api/x", Some(&revoked)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_REVOKED")
    );

    let (expired, _) = g.mint(TokenKind::Api, &["*"], Some(now + 10)).await;
    g.clock.advance(10);
    let r = g.get("/api/x", Some(&expired)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED")
    );

    for kind in [TokenKind::Root, TokenKind::TenantAdmin] {
        let (admin, _) = g.mint(kind, &["*"], None).await;
        let r = g.get("/api/x", Some(&admin)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::FORBIDDEN, "TOKEN_KIND_NOT_ALLOWED"),
            "{kind}"
        );
    }

    let t = g.token(&["*"]).await;
    g.gateway
        .issuer
        .set_account_status(g.account_id, Status::Blocked, &Default::default())
        .await
        .unwrap();
    let r = g.get("/api/x", Some(&t)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "ACCOUNT_BLOCKED")
    );
    g.gateway
        .issuer
        .set_account_status(g.account_id, Status::Active, &Default::default())
        .await
        .unwrap();
    g.gateway
        .issuer
        .set_tenant_status(g.tenant_id, Status::Blocked, &Default::default())
        .await
        .unwrap();
    let r = g.get("/api/x", Some(&t)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "TENANT_BLOCKED")
    );
    g.gateway
        .issuer
        .set_tenant_status(g.tenant_id, Status::Active, &Default::default())
        .await
        .unwrap();
    assert_eq!(g.get("/api/x", Some(&t)).await.status, StatusCode::OK);
    assert_eq!(g.upstream.count(), 1, "only the last request was forwarded");
}

#[tokio::test]
async fn ability_missing_is_403() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["calls:read"]).await;
    let r = g
        .send(Method::POST, "/api/calls", &[("token", &t)], b"{}")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "ABILITY_MISSING");
    assert!(!r.headers.contains_key("www-authenticate"));
}

#[tokio::test]
async fn conflicting_credentials_are_400() {
    let g = TestGateway::spawn().await;
    let a = g.token(&["*"]).await;
    let b = g.token(&["*"]).await;
    let bearer = format!("Bearer {a}");
    let r = g
        .send(
            Method::GET,
            "/api/x",
            &[("authorization", &bearer), ("token", &b)],
            b"",
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "CONFLICTING_CREDENTIALS")
    );
    // The same token in both is fine.
    let r = g
        .send(
            Method::GET,
            "/api/x",
            &[("authorization", &bearer), ("token", &a)],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The token header alone works, and the scheme is case-insensitive.
    let r = g.send(Method::GET, "/api/x", &[("token", &a)], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    let lower = format!("bearer {a}");
    let r = g
        .send(Method::GET, "/api/x", &[("authorization", &lower)], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn routing_denials() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let r = g.get("/nowhere", Some(&t)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND")
    );
    let r = g
        .send(Method::POST, "/readonly", &[("token", &t)], b"")
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
    let r = g.get("/api/a%2Fb", Some(&t)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "BAD_PATH")
    );
    assert_eq!(g.upstream.count(), 0);
}

#[tokio::test]
async fn auth_none_and_optional_routes() {
    let g = TestGateway::spawn().await;
    assert_eq!(g.get("/public/x", None).await.status, StatusCode::OK);
    assert!(!g.upstream.last().headers.contains_key("x-tenant-id"));
    // Optional: anonymous is fine, a bad token is not.
    assert_eq!(g.get("/maybe/x", None).await.status, StatusCode::OK);
    assert!(!g.upstream.last().headers.contains_key("x-account-id"));
    let r = g.get("/maybe/x", Some("garbage")).await;
    assert_eq!(r.code(), "TOKEN_MALFORMED");
    let t = g.token(&["*"]).await;
    assert_eq!(g.get("/maybe/x", Some(&t)).await.status, StatusCode::OK);
    assert_eq!(
        g.upstream.last().headers["x-account-id"],
        g.account_id.to_string().as_str()
    );
}

#[tokio::test]
async fn dead_upstream_is_502_and_slow_upstream_is_504() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let r = g.get("/dead/x", Some(&t)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE")
    );
    let r = g.get("/slow/x", Some(&t)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT")
    );
    assert!(
        !String::from_utf8_lossy(&r.body).contains("hyper"),
        "no internals"
    );
}

#[tokio::test]
async fn denials_are_counted_in_metrics() {
    let g = TestGateway::spawn().await;
    g.get("/api/x", None).await;
    g.get("/api/x", Some("junk")).await;
    let r = common::send(g.admin_addr, Method::GET, "/metrics", &[], b"").await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        text.contains("tokengate_denied_total{code=\"TOKEN_MISSING\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tokengate_denied_total{code=\"TOKEN_MALFORMED\"} 1"),
        "{text}"
    );
    let r = common::send(g.admin_addr, Method::GET, "/healthz", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = common::send(g.admin_addr, Method::GET, "/readyz", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
}
