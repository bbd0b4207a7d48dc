//! `tokengate echo` as the gateway's upstream: real sockets on 127.0.0.1:0,
//! the echo's answer showing what the upstream received through the
//! gateway (tenant headers in, credentials out), over HTTP/1.1 and h2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::TestGateway;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Starts an echo upstream on 127.0.0.1:0; it serves until the test ends.
async fn echo() -> SocketAddr {
    let listener = tokengate::echo::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tokengate::echo::serve(listener, std::future::pending()));
    addr
}

async fn gateway_in_front_of(echo: SocketAddr) -> TestGateway {
    TestGateway::spawn_with(&format!(
        r#"
[[upstreams]]
name = "echo"
url = "http://{echo}"

[[upstreams]]
name = "echo-h2"
url = "http://{echo}"
protocol = "h2"

[[routes]]
path = "/e"
upstream = "echo"

[[routes]]
path = "/e2"
upstream = "echo-h2"
"#
    ))
    .await
}

#[tokio::test]
async fn the_upstream_sees_the_tenant_headers_and_no_credential() {
    let echo = echo().await;
    let g = gateway_in_front_of(echo).await;
    let t = g.token(&["*"]).await;
    let bearer = format!("Bearer {t}");
    let r = common::send_bytes(
        g.addr,
        Method::POST,
        "/e/calls/7?x=1&y=2",
        &[
            ("authorization", &bearer),
            ("x-tenant-id", "666"),
            ("x-dup", "a"),
            ("x-dup", "b"),
            ("content-type", "text/plain"),
        ],
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/e/calls/7?x=1&y=2");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["body_bytes"], 5);
    let h = &v["headers"];
    assert_eq!(h["x-tenant-id"], g.tenant_id.to_string(), "{h}");
    assert_eq!(h["x-account-id"], g.account_id.to_string());
    assert_eq!(h["x-workspace-id"], g.workspace_id.to_string());
    assert_eq!(h["x-token-name"], "test token");
    assert_eq!(h["x-token-abilities"], "*");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["x-request-id"].is_string());
    assert!(h["x-token-id"].is_string());
    assert_eq!(h["x-dup"], json!(["a", "b"]), "repeated headers kept");
    assert_eq!(h["content-type"], "text/plain");
    assert!(
        h.get("authorization").is_none(),
        "credential reached the upstream: {h}"
    );

    // A body the fast path hands to hyper (over 64 KiB) is counted whole.
    let big = vec![b'x'; 100 * 1024 + 3];
    let r = common::send_bytes(
        g.addr,
        Method::PUT,
        "/e/upload",
        &[("authorization", &bearer)],
        big,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["body_bytes"], 100 * 1024 + 3);
    assert_eq!(r.json()["method"], "PUT");
}

#[tokio::test]
async fn echo_serves_h2_upstream_connections_and_h2_clients() {
    let echo = echo().await;
    let g = gateway_in_front_of(echo).await;
    let t = g.token(&["*"]).await;
    let r = g.get("/e2/x?q=1", Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["version"], "HTTP/2");
    assert_eq!(v["path"], "/e2/x?q=1");
    assert_eq!(v["headers"]["x-tenant-id"], g.tenant_id.to_string());

    // Straight to the echo, h2 prior knowledge, with a body.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::post(format!("http://{echo}/direct"))
        .header("x-a", "1")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        (
            v["method"].as_str(),
            v["version"].as_str(),
            v["body_bytes"].as_u64()
        ),
        (Some("POST"), Some("HTTP/2"), Some(10))
    );
    assert_eq!(v["headers"]["x-a"], "1");
}

#[tokio::test]
async fn a_taken_address_is_named() {
    let echo = echo().await;
    let err = tokengate::echo::bind(echo).await.unwrap_err().to_string();
    assert!(err.contains(&echo.to_string()), "{err}");
    assert!(err.contains("echo"), "{err}");
}
