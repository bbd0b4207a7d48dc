//! What the upstream sees: header hygiene, normalised paths, streaming,
//! upgrades, h2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{self, Resp};
use common::{ws, TestGateway};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

/// Sends raw bytes (so header letter case is exactly as written) on a new
/// connection and reads the response whole.
async fn exchange(g: &TestGateway, request: String) -> Resp {
    raw::Client::exchange(g.addr, request.as_bytes()).await
}

fn values(seen: &common::Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn client_tenant_headers_never_reach_the_upstream_in_any_case_or_count() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["calls:read", "reports:*"]).await;
    let head = exchange(
        &g,
        format!(
            "GET /api/x HTTP/1.1\r\nHost: public.example\r\nAuthorization: Bearer {t}\r\n\
             X-Tenant-Id: 999\r\nx-TENANT-id: 998\r\nX-TENANT-ID: 997\r\n\
             X-Account-Id: 5\r\nX-Token-Abilities: *\r\nX-Token-Id: forged\r\n\
             X-Request-Id: forged\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n\
             Connection: close, X-Workspace-Id, X-Custom-Hop\r\n\
             X-Workspace-Id: 77\r\nX-Custom-Hop: hop\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\
             Forwarded: for=6.6.6.6;host=evil\r\nX-Real-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\n\
             X-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\nX-Forwarded-Port: 1\r\n\
             HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(head.status, 200, "{}{}", head.head, head.body_str());
    let seen = g.upstream.last();
    assert_eq!(values(&seen, "x-tenant-id"), vec![g.tenant_id.to_string()]);
    assert_eq!(
        values(&seen, "x-account-id"),
        vec![g.account_id.to_string()]
    );
    assert_eq!(
        values(&seen, "x-workspace-id"),
        vec![g.workspace_id.to_string()]
    );
    assert_eq!(
        values(&seen, "x-token-abilities"),
        vec!["calls:read,reports:*"]
    );
    assert_eq!(values(&seen, "x-token-name"), vec!["test token"]);
    assert_eq!(values(&seen, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(values(&seen, "x-forwarded-host"), vec!["public.example"]);
    assert_eq!(values(&seen, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(values(&seen, "x-kept"), vec!["yes"]);
    assert_ne!(values(&seen, "x-token-id"), vec!["forged"]);
    let rid = values(&seen, "x-request-id");
    assert_eq!(rid.len(), 1);
    assert_ne!(rid[0], "forged");
    assert_eq!(head.header("x-request-id"), Some(rid[0].as_str()));
    for gone in [
        "authorization",
        "token",
        "x-custom-hop",
        "keep-alive",
        "proxy-authorization",
        "connection",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-forwarded-port",
        "http2-settings",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(values(&seen, "host"), vec![g.upstream.addr.to_string()]);
    // Hop-by-hop response headers do not come back either.
    assert_eq!(head.header("keep-alive"), None, "{}", head.head);
}

#[tokio::test]
async fn a_connection_header_cannot_strip_the_gateways_own_headers() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let head = exchange(
        &g,
        format!(
            "GET /api/x HTTP/1.1\r\nHost: h\r\ntoken: {t}\r\n\
             Connection: close, X-Tenant-Id, X-Account-Id\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(head.status, 200, "{}{}", head.head, head.body_str());
    let seen = g.upstream.last();
    assert_eq!(values(&seen, "x-tenant-id"), vec![g.tenant_id.to_string()]);
    assert_eq!(
        values(&seen, "x-account-id"),
        vec![g.account_id.to_string()]
    );
}

#[tokio::test]
async fn underscore_lookalikes_of_gateway_headers_are_refused() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    for name in [
        "X_Tenant_Id",
        "x_account-id",
        "X-Token_Abilities",
        "x.tenant.id",
        "XTenantId",
        "x-tenant--id",
    ] {
        let head = exchange(
            &g,
            format!("GET /api/x HTTP/1.1\r\nHost: h\r\ntoken: {t}\r\n{name}: 1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(
            (head.status, head.code().as_str()),
            (400, "FORBIDDEN_HEADER"),
            "{name}: {}",
            head.head
        );
    }
    assert_eq!(g.upstream.count(), 0);
    // An unrelated underscore header is fine.
    let head = exchange(
        &g,
        format!("GET /api/x HTTP/1.1\r\nHost: h\r\ntoken: {t}\r\nmy_header: 1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(head.status, 200, "{}{}", head.head, head.body_str());
}

#[tokio::test]
async fn auth_none_routes_still_strip_credentials_and_context() {
    let g = TestGateway::spawn().await;
    let r = g
        .send(
            Method::GET,
            "/public/x",
            &[("authorization", "Bearer whatever"), ("x-tenant-id", "1")],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = g.upstream.last();
    assert!(!seen.headers.contains_key("authorization"));
    assert!(!seen.headers.contains_key("x-tenant-id"));
}

#[tokio::test]
async fn paths_are_matched_as_forwarded() {
    let g = TestGateway::spawn().await;
    let reader = g.token(&["calls:read"]).await;
    let all = g.token(&["*"]).await;
    // Each of these would reach an admin path if matched as written.
    for (raw_path, forwarded) in [
        ("/api/calls/../admin", "/api/admin"),
        ("/api/calls/%2e%2e/admin", "/api/admin"),
        ("//admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/api/calls/./../../admin/", "/admin/"),
    ] {
        let r = g.get(raw_path, Some(&reader)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{raw_path} slipped past");
        assert_eq!(r.code(), "ABILITY_MISSING");
        let r = g.get(raw_path, Some(&all)).await;
        assert_eq!(r.status, StatusCode::OK, "{raw_path}");
        assert_eq!(g.upstream.last().uri, forwarded, "{raw_path}");
    }
    assert_eq!(
        g.upstream.count(),
        5,
        "only the allowed requests were forwarded"
    );

    for bad in ["/api/x%2Fadmin", "/api/x%2fy", "/api/x%5Cy"] {
        let r = g.get(bad, Some(&all)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.code(), "BAD_PATH");
    }
    // The query string never takes part in matching and is kept as sent.
    let r = g
        .get("/api/calls?next=%2F..%2Fadmin&x=1", Some(&reader))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(g.upstream.last().uri, "/api/calls?next=%2F..%2Fadmin&x=1");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_without_being_buffered() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 512; // 32 MiB
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;

    let (tx, pending) = g.upload("/echo/big", &t);
    let chunk = |i: usize| Bytes::from(vec![(i % 251) as u8; CHUNK]);
    let mut expected = Sha256::new();

    tx.send(chunk(0)).await.unwrap();
    expected.update(chunk(0));
    // Response headers arrive while the request body is still open: the
    // gateway forwarded before the body ended.
    let resp = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("response began before the request body ended")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Sha256::new();
    let mut received = 0usize;

    // Lockstep: each chunk must come back before the next is sent. A gateway
    // that buffered either body whole would never echo chunk 0 and time out.
    for i in 1..4 {
        while received < i * CHUNK {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("echo of a chunk arrived while the request was still open")
                .unwrap()
                .unwrap();
            if let Ok(d) = frame.into_data() {
                received += d.len();
                got.update(&d);
            }
        }
        tx.send(chunk(i)).await.unwrap();
        expected.update(chunk(i));
    }
    // Then the rest at full speed.
    let sender = tokio::spawn(async move {
        for i in 4..CHUNKS {
            tx.send(chunk(i)).await.unwrap();
        }
    });
    for i in 4..CHUNKS {
        expected.update(chunk(i));
    }
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .unwrap()
    {
        if let Ok(d) = frame.unwrap().into_data() {
            received += d.len();
            got.update(&d);
        }
    }
    sender.await.unwrap();
    assert_eq!(received, CHUNK * CHUNKS);
    assert_eq!(got.finalize(), expected.finalize());
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let mut ws = ws::open(g.addr, &t).await;
    for msg in ["hello", "again"] {
        ws::echo(&mut ws, msg).await;
    }
    ws.close(None).await.unwrap();
    assert_eq!(
        values(&g.upstream.last(), "x-account-id"),
        vec![g.account_id.to_string()]
    );

    // Without a token there is no upgrade at all.
    let req = format!("ws://{}/ws/chat", g.addr)
        .into_client_request()
        .unwrap();
    let stream = TcpStream::connect(g.addr).await.unwrap();
    match tokio_tungstenite::client_async(req, stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(g.upstream.count(), 1);
}

#[tokio::test]
async fn a_websocket_tunnel_is_closed_when_its_token_is_revoked() {
    use tokengate::token::TokenKind;

    let g = TestGateway::spawn().await;
    let (t, id) = g.mint(TokenKind::Api, &["*"], None).await;
    let (_, other_id) = g.mint(TokenKind::Api, &["*"], None).await;
    let mut ws = ws::open(g.addr, &t).await;
    ws::echo(&mut ws, "before").await;

    // Another token's revocation is checked against this tunnel and leaves
    // it open.
    let actor = Default::default();
    g.gateway.issuer.revoke(&other_id, &actor).await.unwrap();
    ws::echo(&mut ws, "after another revocation").await;
    assert_eq!(g.gateway.metrics.tunnels_refused.get(), 0);

    // Its own closes it, at once: the cache TTL (30 s) is far longer.
    g.gateway.issuer.revoke(&id, &actor).await.unwrap();
    assert!(
        ws::closed_within(&mut ws, 5).await,
        "the tunnel outlived its token's revocation"
    );
    assert_eq!(g.gateway.metrics.tunnels_refused.get(), 1);
}

#[tokio::test]
async fn a_websocket_tunnel_is_closed_when_its_token_expires() {
    use tokengate::token::TokenKind;

    let g = TestGateway::spawn().await;
    let now = g.clock.now();
    let (t, _) = g.mint(TokenKind::Api, &["*"], Some(now + 1)).await;
    let mut ws = ws::open(g.addr, &t).await;
    ws::echo(&mut ws, "before expiry").await;
    // The tunnel wakes about a second from now to check the expiry; the
    // (manual) clock is past it by then.
    g.clock.advance(2);
    assert!(
        ws::closed_within(&mut ws, 5).await,
        "the tunnel outlived its token's expiry"
    );
    assert_eq!(g.gateway.metrics.tunnels_refused.get(), 1);
}

#[tokio::test]
async fn omitted_gateway_headers_are_not_sent_and_client_copies_still_go() {
    let g = TestGateway::spawn_with(
        "[headers]\nomit = [\"token_name\", \"token_abilities\", \"forwarded_host\", \"request_id\"]\n",
    )
    .await;
    let t = g.token(&["*"]).await;
    let forged = "X-Token-Name: forged\r\nX-Token-Abilities: *\r\n\
                  X-Forwarded-Host: evil\r\nX-Request-Id: forged\r\n";
    // HTTP/1.1 upstream (the fast path), then h2 (hyper's client).
    let mut heads = Vec::new();
    for path in ["/api/x", "/h2/x"] {
        let head = exchange(
            &g,
            format!(
                "GET {path} HTTP/1.1\r\nHost: public.example\r\nAuthorization: Bearer {t}\r\n\
                 {forged}Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(head.status, 200, "{}{}", head.head, head.body_str());
        heads.push(head);
    }
    let [head, head2] = <[Resp; 2]>::try_from(heads).unwrap();
    for (seen, head) in [(g.upstream.last(), head), (g.h2_upstream.last(), head2)] {
        for gone in [
            "x-token-name",
            "x-token-abilities",
            "x-forwarded-host",
            "x-request-id",
        ] {
            assert!(
                !seen.headers.contains_key(gone),
                "{gone} reached the upstream"
            );
        }
        // The rest are sent as always.
        assert_eq!(values(&seen, "x-tenant-id"), vec![g.tenant_id.to_string()]);
        assert_eq!(
            values(&seen, "x-account-id"),
            vec![g.account_id.to_string()]
        );
        assert_eq!(values(&seen, "x-forwarded-for"), vec!["127.0.0.1"]);
        assert_eq!(values(&seen, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(values(&seen, "x-token-id").len(), 1);
        // The client still gets its request id.
        assert_eq!(head.values("x-request-id").len(), 1, "{}", head.head);
    }
}

#[tokio::test]
async fn h2_upstream_and_h2_client() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let r = g.get("/h2/x?q=1", Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = g.h2_upstream.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert!(seen.uri.ends_with("/h2/x?q=1"), "{}", seen.uri);
    assert_eq!(values(&seen, "x-tenant-id"), vec![g.tenant_id.to_string()]);
    assert!(!seen.headers.contains_key("authorization"));

    // An h2 (prior knowledge) client to the gateway, HTTP/1.1 upstream.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(g.url("/api/h2client"))
        .header("authorization", format!("Bearer {t}"))
        .header("x-tenant-id", "666")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = g.upstream.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.uri, "/api/h2client");
    assert_eq!(values(&seen, "x-tenant-id"), vec![g.tenant_id.to_string()]);
    assert_eq!(values(&seen, "x-forwarded-host"), vec![g.addr.to_string()]);
}

#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    // h2c would hand the client a raw HTTP/2 connection to the upstream.
    for upgrade in ["h2c", "TLS/1.0", "websocket, h2c"] {
        let head = exchange(
            &g,
            format!(
                "GET /api/x HTTP/1.1\r\nHost: h\r\ntoken: {t}\r\nUpgrade: {upgrade}\r\n\
                 Connection: close, Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(
            (head.status, head.code().as_str()),
            (400, "UPGRADE_NOT_ALLOWED"),
            "{upgrade}: {}",
            head.head
        );
    }
    // Also on a route without auth.
    let head = exchange(
        &g,
        "GET /public/x HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, close\r\n\r\n"
            .into(),
    )
    .await;
    assert_eq!(
        (head.status, head.code().as_str()),
        (400, "UPGRADE_NOT_ALLOWED"),
        "{}",
        head.head
    );
    assert_eq!(g.upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn request_trailers_are_filtered_like_headers() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let client: Client<_, http_body_util::combinators::BoxBody<Bytes, Infallible>> =
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-tenant-id", "666".parse().unwrap());
    trailers.insert("authorization", "Bearer forged".parse().unwrap());
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = Request::post(g.url("/h2/echo"))
        .header("authorization", format!("Bearer {t}"))
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let echoed = collected
        .trailers()
        .cloned()
        .expect("the h2 upstream echoed trailers");
    assert_eq!(echoed["x-checksum"], "abc", "ordinary trailers pass");
    assert!(
        !echoed.contains_key("x-tenant-id"),
        "forged tenant trailer reached the upstream"
    );
    assert!(!echoed.contains_key("authorization"));
    assert_eq!(&collected.to_bytes()[..], b"payload");
}

#[tokio::test]
async fn split_cookies_from_h2_clients_are_joined_for_http1_upstreams() {
    let g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(g.url("/api/cookies"))
        .header("authorization", format!("Bearer {t}"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
    assert_eq!(values(&g.upstream.last(), "cookie"), vec!["a=1; b=2"]);
}
