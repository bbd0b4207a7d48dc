//! Every way the request path refuses, with its status, code and headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::outage::Outage;
use common::{raw, Opts, TestGateway};
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
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_MALFORMED")
    );
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

/// How a request reaches the gateway.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// HTTP/1.1 with `server.fast_path = true` (the default).
    FastPath,
    /// HTTP/1.1 with `server.fast_path = false`: hyper's path.
    HyperHttp1,
    /// HTTP/2 (prior knowledge): hyper's path whatever `fast_path` says.
    H2,
}

async fn send_via(
    g: &TestGateway,
    via: Via,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> common::Reply {
    match via {
        Via::H2 => g.send_h2(method, path, headers, b"").await,
        Via::FastPath | Via::HyperHttp1 => g.send(method, path, headers, b"").await,
    }
}

/// The JSON denial, with its status, code and the headers README promises
/// (`WWW-Authenticate` on 401, `Retry-After` on 503).
fn assert_denial(r: &common::Reply, status: StatusCode, code: &str, what: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{what}: {:?}",
        r.body
    );
    assert_eq!(r.headers["content-type"], "application/json", "{what}");
    match status {
        StatusCode::UNAUTHORIZED => {
            let challenge = r.headers["www-authenticate"].to_str().unwrap();
            if code == "TOKEN_MISSING" {
                assert_eq!(challenge, "Bearer", "{what}");
            } else {
                assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
                assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
            }
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            assert_eq!(r.headers["retry-after"], "1", "{what}");
        }
        _ => assert!(!r.headers.contains_key("www-authenticate"), "{what}"),
    }
}

/// Every denial code of README's table, on one way in, then a request that
/// is allowed (so the ones before were refused by policy, not by a broken
/// path).
async fn every_denial(via: Via) {
    let outage = Outage::default();
    let g = Opts::default()
        .fast_path(via != Via::HyperHttp1)
        .outage(&outage)
        .spawn()
        .await;
    let now = g.clock.now();
    let all = g.token(&["*"]).await;
    let reader = g.token(&["calls:read"]).await;
    let bearer = format!("Bearer {all}");
    let reader_bearer = format!("Bearer {reader}");
    let send = |method: Method, path: &'static str, headers: Vec<(&'static str, String)>| {
        let g = &g;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send_via(g, via, method, path, &headers).await
        }
    };
    let get = |path: &'static str, token: Option<&str>| {
        let headers = token
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default();
        send(Method::GET, path, headers)
    };

    // 400
    let r = send(
        Method::GET,
        "/api/x",
        vec![("authorization", bearer.clone()), ("token", reader.clone())],
    )
    .await;
    assert_denial(
        &r,
        StatusCode::BAD_REQUEST,
        "CONFLICTING_CREDENTIALS",
        "two credentials",
    );
    let r = send(
        Method::GET,
        "/api/x",
        vec![
            ("authorization", bearer.clone()),
            ("authorization", reader_bearer.clone()),
        ],
    )
    .await;
    assert_denial(
        &r,
        StatusCode::BAD_REQUEST,
        "CONFLICTING_CREDENTIALS",
        "two Authorization",
    );
    let r = send(
        Method::GET,
        "/api/x",
        vec![("token", all.clone()), ("token", reader.clone())],
    )
    .await;
    assert_denial(
        &r,
        StatusCode::BAD_REQUEST,
        "CONFLICTING_CREDENTIALS",
        "two token",
    );
    let r = get("/api/a%2Fb", Some(&all)).await;
    assert_denial(&r, StatusCode::BAD_REQUEST, "BAD_PATH", "encoded slash");
    let r = send(
        Method::GET,
        "/api/x",
        vec![
            ("authorization", bearer.clone()),
            ("x_tenant_id", "1".into()),
        ],
    )
    .await;
    assert_denial(
        &r,
        StatusCode::BAD_REQUEST,
        "FORBIDDEN_HEADER",
        "look-alike",
    );
    if via != Via::H2 {
        // HTTP/1.1 only: h2 has no `Upgrade`.
        let r = raw::Client::exchange(
            g.addr,
            &raw::request(
                "GET",
                "/api/x",
                &[
                    ("Authorization", &bearer),
                    ("Upgrade", "h2c"),
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
                ],
                b"",
            ),
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "UPGRADE_NOT_ALLOWED"),
            "{}",
            r.head
        );
    }

    // 401
    let r = get("/api/x", None).await;
    assert_denial(&r, StatusCode::UNAUTHORIZED, "TOKEN_MISSING", "no token");
    let r = get("/api/x", Some("garbage")).await;
    assert_denial(&r, StatusCode::UNAUTHORIZED, "TOKEN_MALFORMED", "garbage");
    let r = send(
        Method::GET,
        "/api/x",
        vec![("authorization", "Basic dXNlcjpwdw==".into())],
    )
    .await;
    assert_denial(&r, StatusCode::UNAUTHORIZED, "TOKEN_MALFORMED", "Basic");
    let stranger = TokenFormat::default().generate(TokenKind::Api);
    let r = get("/api/x", Some(stranger.expose())).await;
    assert_denial(&r, StatusCode::UNAUTHORIZED, "TOKEN_INVALID", "unknown");
    let (revoked, id) = g.mint(TokenKind::Api, &["*"], None).await;
    g.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    let r = get("/api/x", Some(&revoked)).await;
    assert_denial(&r, StatusCode::UNAUTHORIZED, "TOKEN_REVOKED", "revoked");
    let (expired, _) = g.mint(TokenKind::Api, &["*"], Some(now + 10)).await;
    g.clock.advance(10);
    let r = get("/api/x", Some(&expired)).await;
    assert_denial(&r, StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED", "expired");

    // 403
    let r = send(
        Method::POST,
        "/api/calls",
        vec![("authorization", reader_bearer.clone())],
    )
    .await;
    assert_denial(&r, StatusCode::FORBIDDEN, "ABILITY_MISSING", "ability");
    for kind in [TokenKind::Root, TokenKind::TenantAdmin] {
        let (t, _) = g.mint(kind, &["*"], None).await;
        let r = get("/api/x", Some(&t)).await;
        assert_denial(&r, StatusCode::FORBIDDEN, "TOKEN_KIND_NOT_ALLOWED", "kind");
    }
    let actor = Default::default();
    let issuer = &g.gateway.issuer;
    issuer
        .set_account_status(g.account_id, Status::Blocked, &actor)
        .await
        .unwrap();
    let r = get("/api/x", Some(&all)).await;
    assert_denial(&r, StatusCode::FORBIDDEN, "ACCOUNT_BLOCKED", "account");
    issuer
        .set_account_status(g.account_id, Status::Active, &actor)
        .await
        .unwrap();
    issuer
        .set_tenant_status(g.tenant_id, Status::Blocked, &actor)
        .await
        .unwrap();
    let r = get("/api/x", Some(&all)).await;
    assert_denial(&r, StatusCode::FORBIDDEN, "TENANT_BLOCKED", "tenant");
    issuer
        .set_tenant_status(g.tenant_id, Status::Active, &actor)
        .await
        .unwrap();

    // 404, 405
    let r = get("/nowhere", Some(&all)).await;
    assert_denial(&r, StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND", "route");
    let r = send(
        Method::POST,
        "/readonly",
        vec![("authorization", bearer.clone())],
    )
    .await;
    assert_denial(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method",
    );

    // 502, 504
    let r = get("/dead/x", Some(&all)).await;
    assert_denial(&r, StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE", "dead");
    let r = get("/slow/x", Some(&all)).await;
    assert_denial(&r, StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT", "slow");

    // 503: a token the cache has never seen, with the store away.
    let unseen = g.token(&["*"]).await;
    outage.begin();
    let r = get("/api/x", Some(&unseen)).await;
    assert_denial(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "STORE_UNAVAILABLE",
        "store down",
    );
    let ready = common::send(g.admin_addr, Method::GET, "/readyz", &[], b"").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // A cached token keeps working through the outage.
    assert_eq!(get("/api/ok", Some(&all)).await.status, StatusCode::OK);
    outage.end();
    assert_eq!(get("/api/ok", Some(&unseen)).await.status, StatusCode::OK);

    // Only the slow request and the allowed ones reached the upstream.
    let seen: Vec<String> = g
        .upstream
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(seen, ["/slow/x", "/api/ok", "/api/ok"], "{via:?}");
}

#[tokio::test]
async fn every_denial_on_the_fast_path() {
    every_denial(Via::FastPath).await;
}

#[tokio::test]
async fn every_denial_on_hyper_over_http1() {
    every_denial(Via::HyperHttp1).await;
}

#[tokio::test]
async fn every_denial_on_hyper_over_h2() {
    every_denial(Via::H2).await;
}

#[tokio::test]
async fn a_credential_repeated_with_the_same_value_counts_once_on_every_path() {
    for via in [Via::FastPath, Via::HyperHttp1, Via::H2] {
        let g = Opts::default()
            .fast_path(via != Via::HyperHttp1)
            .spawn()
            .await;
        let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
        let bearer = format!("Bearer {t}");
        for headers in [
            vec![
                ("authorization", bearer.as_str()),
                ("authorization", bearer.as_str()),
            ],
            vec![("token", t.as_str()), ("token", t.as_str())],
            vec![
                ("authorization", bearer.as_str()),
                ("token", t.as_str()),
                ("authorization", bearer.as_str()),
            ],
        ] {
            let r = send_via(&g, via, Method::GET, "/api/x", &headers).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{via:?} {headers:?}: {:?}",
                r.body
            );
            let seen = g.upstream.last();
            assert_eq!(seen.headers["x-token-id"], id.as_str(), "{via:?}");
            assert!(!seen.headers.contains_key("authorization"), "{via:?}");
            assert!(!seen.headers.contains_key("token"), "{via:?}");
        }
    }
}
