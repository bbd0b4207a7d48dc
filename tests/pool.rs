//! The HTTP/1.1 upstream pool: connections are reused only when that is
//! safe, and never carry one response's leftovers into another's.
//!
//! The upstream here is the scripted raw one (`common::raw::Upstream`), so
//! the test sees connections: every response says which connection
//! (`X-Conn: N`, counted from 1) carried it, and the upstream records when
//! a connection was closed. Its kinds used here: `close` answers with
//! `Connection: close` and closes; `trailers` answers chunked, with a
//! trailer; `hangup` answers (keep-alive) and then closes the connection
//! anyway, as an upstream's idle timeout would; `empty` is a 204; `big`
//! sends `raw::BIG` bytes; `gated` waits for the test; anything else a
//! short 200 naming the request and the connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::raw::{self, Client, Upstream};
use common::{Opts, TestGateway};
use http::{Method, StatusCode};

/// A gateway routing `/raw` to `up`, on the fast path's pool or (with
/// `fast_path` off) on hyper's path and its pool.
async fn gateway(up: &Upstream, idle_timeout_seconds: u64, fast_path: bool) -> TestGateway {
    Opts::default()
        .fast_path(fast_path)
        .extra(&format!(
            r#"
[[upstreams]]
name = "raw"
url = "http://{}"
pool_idle_timeout_seconds = {idle_timeout_seconds}

[[routes]]
path = "/raw"
upstream = "raw"
auth = "none"
"#,
            up.addr
        ))
        .spawn()
        .await
}

/// Runs each pool test twice: `fast_path::<name>` on the fast path's pool,
/// `hyper_path::<name>` with `server.fast_path = false`.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        mod fast_path {
            $(#[tokio::test]
            async fn $name() {
                super::$name(true).await
            })*
        }
        mod hyper_path {
            $(#[tokio::test]
            async fn $name() {
                super::$name(false).await
            })*
        }
    };
}

on_both_paths!(
    one_upstream_connection_serves_sequential_requests_of_every_shape,
    a_response_abandoned_mid_body_closes_its_upstream_connection,
    connections_the_upstream_closes_are_not_reused,
    concurrent_requests_each_get_a_whole_response,
    idle_connections_are_closed_after_the_idle_timeout,
    no_more_than_pool_max_idle_connections_are_kept,
);

fn conn_of(r: &common::Reply) -> usize {
    r.headers
        .get("x-conn")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-conn on a {} reply", r.status))
}

async fn one_upstream_connection_serves_sequential_requests_of_every_shape(fast_path: bool) {
    let up = Upstream::spawn().await;
    let g = gateway(&up, 60, fast_path).await;
    for i in 0..40 {
        let r = match i % 4 {
            0 => g.get("/raw/small", None).await,
            1 => g.send(Method::HEAD, "/raw/small", &[], b"").await,
            2 => g.get("/raw/trailers", None).await,
            _ => g.get("/raw/empty", None).await,
        };
        assert!(r.status.is_success(), "request {i}: {}", r.status);
        assert_eq!(conn_of(&r), 1, "request {i} took a new connection");
        match i % 4 {
            0 => assert_eq!(&r.body[..], b"GET /raw/small conn 1"),
            1 | 3 => assert!(r.body.is_empty(), "request {i}: {:?}", r.body),
            _ => assert_eq!(&r.body[..], b"conn 1"),
        }
    }
    assert_eq!(up.accepted(), 1);
}

async fn a_response_abandoned_mid_body_closes_its_upstream_connection(fast_path: bool) {
    let up = Upstream::spawn().await;
    let g = gateway(&up, 60, fast_path).await;
    assert_eq!(conn_of(&g.get("/raw/small", None).await), 1);

    // A client that reads the head and a little of a large body, then goes.
    let mut client = Client::connect(g.addr).await;
    client.send(raw::get("/raw/big").as_bytes()).await;
    let head = client.head().await;
    assert_eq!((head.status, head.conn()), (200, 1), "{}", head.head);
    assert_eq!(
        head.header("content-length"),
        Some(raw::BIG.to_string().as_str())
    );
    drop(client);

    // The next request must not land on the connection that still has
    // megabytes of the abandoned body in it.
    up.wait_closed(1).await;
    let r = g.get("/raw/small", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(conn_of(&r), 2);
    assert_eq!(&r.body[..], b"GET /raw/small conn 2");
}

async fn connections_the_upstream_closes_are_not_reused(fast_path: bool) {
    let up = Upstream::spawn().await;
    let g = gateway(&up, 60, fast_path).await;
    // `Connection: close`: the next request needs a new connection.
    assert_eq!(conn_of(&g.get("/raw/close", None).await), 1);
    let r = g.get("/raw/small", None).await;
    assert_eq!((r.status, conn_of(&r)), (StatusCode::OK, 2));
    // Closed without notice after a keep-alive response (an upstream's
    // idle timeout): found closed at checkout, never a 502.
    assert_eq!(conn_of(&g.get("/raw/hangup", None).await), 2);
    up.wait_closed(2).await;
    let r = g.get("/raw/small", None).await;
    assert_eq!((r.status, conn_of(&r)), (StatusCode::OK, 3));
    assert_eq!(&r.body[..], b"GET /raw/small conn 3");
}

async fn concurrent_requests_each_get_a_whole_response(fast_path: bool) {
    let up = Upstream::spawn().await;
    let g = Arc::new(gateway(&up, 60, fast_path).await);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let g = Arc::clone(&g);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10 {
                let r = g.get("/raw/small", None).await;
                assert_eq!(r.status, StatusCode::OK);
                // The body names the connection its header names: no
                // response was read from another request's connection.
                assert_eq!(
                    r.body,
                    format!("GET /raw/small conn {}", conn_of(&r)).into_bytes()
                );
                seen.push(conn_of(&r));
            }
            seen
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let opened = up.accepted();
    assert!(
        (1..=64).contains(&opened),
        "{opened} connections for at most 64 requests in flight"
    );
}

async fn idle_connections_are_closed_after_the_idle_timeout(fast_path: bool) {
    let up = Upstream::spawn().await;
    let g = gateway(&up, 1, fast_path).await;
    assert_eq!(conn_of(&g.get("/raw/small", None).await), 1);
    // Nothing else happens: the gateway's sweep closes it.
    up.wait_closed(1).await;
    let r = g.get("/raw/small", None).await;
    assert_eq!((r.status, conn_of(&r)), (StatusCode::OK, 2));
}

#[tokio::test]
async fn a_tls_handshake_the_upstream_never_answers_fails_at_the_connect_timeout() {
    // Accepts TCP, then says nothing: the ClientHello is never answered.
    let mute = Upstream::builder().mute().spawn().await;
    let addr = mute.addr;
    let g = TestGateway::spawn_with(&format!(
        r#"
[[upstreams]]
name = "mute"
url = "https://{addr}"
connect_timeout_ms = 200
response_timeout_ms = 30000

[[routes]]
path = "/mute"
upstream = "mute"
auth = "none"
"#
    ))
    .await;
    // 502 from the connect bound, well before the 30 s response bound
    // (the harness client itself gives up after 10 s).
    let r = g.get("/mute/x", None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
}

async fn no_more_than_pool_max_idle_connections_are_kept(fast_path: bool) {
    let up = Upstream::spawn().await;
    let g = Arc::new(
        Opts::default()
            .fast_path(fast_path)
            .extra(&format!(
                r#"
[[upstreams]]
name = "raw"
url = "http://{}"
pool_max_idle = 1
pool_idle_timeout_seconds = 600

[[routes]]
path = "/raw"
upstream = "raw"
auth = "none"
"#,
                up.addr
            ))
            .spawn()
            .await,
    );
    // Three requests held by the upstream at once: three connections.
    let held: Vec<_> = (0..3)
        .map(|_| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.get("/raw/gated", None).await })
        })
        .collect();
    TestGateway::eventually("three requests in flight upstream", || async {
        up.count("/raw/gated") == 3
    })
    .await;
    assert_eq!(up.accepted(), 3, "fast_path = {fast_path}");
    up.open_gate();
    let mut conns = Vec::new();
    for h in held {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "fast_path = {fast_path}");
        conns.push(conn_of(&r));
    }
    conns.sort();
    assert_eq!(conns, [1, 2, 3], "fast_path = {fast_path}");

    // Back from their requests, one is kept idle and two are closed,
    // long before the idle timeout.
    TestGateway::eventually("the connections over pool_max_idle closed", || async {
        up.closed().len() == 2
    })
    .await;
    let closed = up.closed();
    let r = g.get("/raw/again", None).await;
    assert_eq!(r.status, StatusCode::OK, "fast_path = {fast_path}");
    assert!(
        !closed.contains(&conn_of(&r)),
        "fast_path = {fast_path}: {} was closed",
        conn_of(&r)
    );
    assert_eq!(
        up.accepted(),
        3,
        "fast_path = {fast_path}: the kept one served it"
    );
}
