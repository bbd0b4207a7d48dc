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
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["code"], "TOKEN_MISSING", "{body}");
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
    assert_eq!(g.metric("tokengate_tunnels_refused_total").await, 1);
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

/// The ways in a request can take: HTTP/1.1 to a gateway with the fast
/// path on, to one with it off, and h2 (hyper's path either way).
const PATHS: [(&str, bool, bool); 3] = [
    ("fast path", true, false),
    ("hyper, HTTP/1.1", false, false),
    ("hyper, h2", true, true),
];

/// `GET target` with `fields` (written as given) through `g`, over h2 when
/// `h2`, else as raw HTTP/1.1.
async fn get_with(g: &TestGateway, h2: bool, target: &str, fields: &[(&str, &str)]) -> u16 {
    if h2 {
        g.send_h2(Method::GET, target, fields, b"")
            .await
            .status
            .as_u16()
    } else {
        let r = raw::Client::exchange(g.addr, &raw::request("GET", target, fields, b"")).await;
        r.status
    }
}

#[tokio::test]
async fn routes_match_case_sensitively_with_semicolons_as_ordinary_characters() {
    for (name, fast_path, h2) in PATHS {
        let g = common::Opts::default().fast_path(fast_path).spawn().await;
        // Any valid token may use /api; /api/calls needs calls:read.
        let t = g.token(&["other"]).await;
        let bearer = format!("Bearer {t}");
        let auth = [("Authorization", bearer.as_str())];
        for (target, status, forwarded) in [
            // Another letter case is another path: no route at all.
            ("/API/x", 404, None),
            ("/Admin", 404, None),
            // ... or a path of the catch-all /api route, not /api/calls.
            ("/api/Calls/1", 200, Some("/api/Calls/1")),
            ("/api/calls/1", 403, None),
            // `;` does not end a segment: /api/calls;x is not /api/calls.
            (
                "/api/calls;jsessionid=1",
                200,
                Some("/api/calls;jsessionid=1"),
            ),
            ("/api/calls/1;x", 403, None),
            ("/admin;x", 404, None),
        ] {
            let before = g.upstream.count();
            let got = get_with(&g, h2, target, &auth).await;
            assert_eq!(got, status, "{name}: {target}");
            match forwarded {
                Some(path) => assert_eq!(g.upstream.last().uri, path, "{name}: {target}"),
                None => assert_eq!(g.upstream.count(), before, "{name}: {target}"),
            }
        }
    }
}

#[tokio::test]
async fn method_and_prefix_override_headers_never_reach_the_upstream() {
    let overrides = [
        ("X-Forwarded-Prefix", "/admin"),
        ("x-forwarded-prefix", "/admin2"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("x-method-override", "PUT"),
        ("X-HTTP-Method-Override", "DELETE"),
    ];
    for (name, fast_path, h2) in PATHS {
        let g = common::Opts::default().fast_path(fast_path).spawn().await;
        let t = g.token(&["*"]).await;
        let bearer = format!("Bearer {t}");
        let mut fields = vec![("Authorization", bearer.as_str()), ("X-Kept", "yes")];
        // Over h2 the names go lower-cased (two of some, all the same).
        fields.extend(overrides);
        // To the HTTP/1.1 upstream, and to the h2 one.
        for (target, up) in [("/api/x", &g.upstream), ("/h2/x", &g.h2_upstream)] {
            assert_eq!(
                get_with(&g, h2, target, &fields).await,
                200,
                "{name}: {target}"
            );
            let seen = up.last();
            assert!(seen.uri.ends_with(target), "{name}: {}", seen.uri);
            assert_eq!(values(&seen, "x-kept"), ["yes"], "{name}: {target}");
            for (gone, _) in overrides {
                assert!(
                    !seen.headers.contains_key(gone),
                    "{name}: {gone} reached the upstream of {target}"
                );
            }
            assert_eq!(seen.method, Method::GET, "{name}: {target}");
        }
    }
}

#[tokio::test]
async fn custom_token_prefixes_and_header_names_hold_end_to_end() {
    const CUSTOM: &str = r#"
[tokens]
root_prefix = "acmeroot"
tenant_admin_prefix = "acmeadm"
session_prefix = "acmesess"
api_prefix = "acme"

[headers]
tenant_id = "X-Org"
account_id = "X-Customer"
token_id = "X-Key"
request_id = "X-Trace"
"#;
    for (name, fast_path, h2) in PATHS {
        let g = common::Opts::default()
            .fast_path(fast_path)
            .extra(CUSTOM)
            .spawn()
            .await;
        // Minted through the native API, in the configured format.
        let (root, _) = g
            .mint(tokengate::token::TokenKind::Root, &["*"], None)
            .await;
        assert!(root.starts_with("acmeroot_"), "{root}");
        let r = common::call(
            g.admin_addr,
            Method::POST,
            &format!("/v1/accounts/{}/tokens", g.account_id),
            Some(&root),
            Some(serde_json::json!({"name": "ci"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let t = r.json()["token"].as_str().unwrap().to_string();
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert!(t.starts_with("acme_"), "{t}");
        let bearer = format!("Bearer {t}");

        // Used on the proxy, to both upstreams: the context arrives under
        // the configured names, and client-sent copies of them do not.
        for (target, up) in [("/api/x", &g.upstream), ("/h2/x", &g.h2_upstream)] {
            let fields = [
                ("Authorization", bearer.as_str()),
                ("X-Org", "999"),
                ("x-customer", "998"),
                ("X-Key", "forged"),
            ];
            assert_eq!(
                get_with(&g, h2, target, &fields).await,
                200,
                "{name}: {target}"
            );
            let seen = up.last();
            assert_eq!(values(&seen, "x-org"), [g.tenant_id.to_string()], "{name}");
            assert_eq!(
                values(&seen, "x-customer"),
                [g.account_id.to_string()],
                "{name}"
            );
            assert_eq!(values(&seen, "x-key"), [id.as_str()], "{name}");
            assert_eq!(values(&seen, "x-trace").len(), 1, "{name}");
            assert_eq!(
                values(&seen, "x-workspace-id"),
                [g.workspace_id.to_string()],
                "{name}: the names not configured keep their defaults"
            );
            for default in ["x-tenant-id", "x-account-id", "x-token-id", "x-request-id"] {
                assert!(
                    !seen.headers.contains_key(default),
                    "{name}: {default} sent though renamed"
                );
            }
        }
        // A look-alike of a renamed header is refused like one of the defaults.
        let fields = [("Authorization", bearer.as_str()), ("x_org", "1")];
        assert_eq!(get_with(&g, h2, "/api/x", &fields).await, 400, "{name}");

        // A token of the default format is not one of ours any more:
        // refused before any cache or store access.
        let lookups = g.store_lookups();
        let cache_lookups = g.gateway.metrics.cache_lookups.get();
        let default =
            tokengate::token::TokenFormat::default().generate(tokengate::token::TokenKind::Api);
        let fields = [("token", default.expose())];
        assert_eq!(get_with(&g, h2, "/api/x", &fields).await, 401, "{name}");
        assert_eq!(g.store_lookups(), lookups, "{name}");
        assert_eq!(
            g.gateway.metrics.cache_lookups.get(),
            cache_lookups,
            "{name}"
        );
    }
}

#[tokio::test]
async fn an_upstream_url_path_is_put_before_every_forwarded_path() {
    let h1 = common::MockUpstream::spawn(false).await;
    let h2 = common::MockUpstream::spawn(true).await;
    let extra = format!(
        r#"
[[upstreams]]
name = "based"
url = "http://{h1}/base/v1"

[[upstreams]]
name = "slashed"
url = "http://{h1}/slashed/"

[[upstreams]]
name = "based-h2"
url = "http://{h2}/h2base"
protocol = "h2"

[[routes]]
path = "/based"
upstream = "based"

[[routes]]
path = "/slashed"
upstream = "slashed"

[[routes]]
path = "/based-h2"
upstream = "based-h2"
"#,
        h1 = h1.addr,
        h2 = h2.addr
    );
    for (name, fast_path, over_h2) in PATHS {
        let g = common::Opts::default()
            .fast_path(fast_path)
            .extra(&extra)
            .spawn()
            .await;
        let t = g.token(&["*"]).await;
        let bearer = format!("Bearer {t}");
        let auth = [("Authorization", bearer.as_str())];
        for (target, up, forwarded) in [
            ("/based/x?q=1", &h1, "/base/v1/based/x?q=1"),
            ("/based", &h1, "/base/v1/based"),
            ("/based/a/../b", &h1, "/base/v1/based/b"),
            ("/slashed/y", &h1, "/slashed/slashed/y"),
            ("/based-h2/z?q=2", &h2, "/h2base/based-h2/z?q=2"),
        ] {
            assert_eq!(
                get_with(&g, over_h2, target, &auth).await,
                200,
                "{name}: {target}"
            );
            let uri = up.last().uri;
            // An h2 upstream sees the absolute form.
            let path = uri
                .split_once("://")
                .map_or(uri.as_str(), |(_, rest)| &rest[rest.find('/').unwrap()..]);
            assert_eq!(path, forwarded, "{name}: {target}");
        }
    }
}

#[tokio::test]
async fn a_websocket_tunnel_is_closed_when_its_account_or_tenant_is_blocked() {
    use tokengate::store::Status;

    let g = TestGateway::spawn().await;
    let actor = Default::default();
    let issuer = &g.gateway.issuer;
    let t = g.token(&["*"]).await;

    // Its account.
    let mut ws = ws::open(g.addr, &t).await;
    ws::echo(&mut ws, "before the block").await;
    issuer
        .set_account_status(g.account_id, Status::Blocked, &actor)
        .await
        .unwrap();
    assert!(
        ws::closed_within(&mut ws, 5).await,
        "the tunnel outlived its account's block"
    );
    assert_eq!(g.gateway.metrics.tunnels_refused.get(), 1);
    issuer
        .set_account_status(g.account_id, Status::Active, &actor)
        .await
        .unwrap();

    // Its tenant.
    let mut ws = ws::open(g.addr, &t).await;
    ws::echo(&mut ws, "unblocked").await;
    issuer
        .set_tenant_status(g.tenant_id, Status::Blocked, &actor)
        .await
        .unwrap();
    assert!(
        ws::closed_within(&mut ws, 5).await,
        "the tunnel outlived its tenant's block"
    );
    assert_eq!(g.gateway.metrics.tunnels_refused.get(), 2);
}

#[tokio::test]
async fn a_tunnel_sees_a_revocation_made_by_another_process_within_the_cache_ttl() {
    // On SQLite nothing tells the gateway about another process's change:
    // the tunnel finds it when it checks again, at least once per
    // `cache.ttl_seconds`.
    let g = TestGateway::spawn_with("[cache]\nttl_seconds = 1\n").await;
    let (t, id) = g.mint(tokengate::token::TokenKind::Api, &["*"], None).await;
    let mut ws = ws::open(g.addr, &t).await;
    ws::echo(&mut ws, "before").await;
    let other = g.other_process_store().await;
    let revoked = other
        .revoke_token(&id, g.clock.now(), &Default::default())
        .await
        .unwrap();
    assert!(revoked.is_some());
    assert!(
        ws::closed_within(&mut ws, 20).await,
        "the tunnel outlived another process's revocation"
    );
    assert_eq!(g.gateway.metrics.tunnels_refused.get(), 1);
}
