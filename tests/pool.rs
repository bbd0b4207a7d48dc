//! The HTTP/1.1 upstream pool: connections are reused only when that is
//! safe, and never carry one response's leftovers into another's.
//!
//! The upstream here is scripted on raw TCP so the test sees connections:
//! every response says which connection (`x-conn: N`, counted from 1)
//! carried it, and the upstream records when a connection was closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::TestGateway;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Size of `/raw/big`'s body: far more than any socket buffer holds, so a
/// client that stops reading leaves the upstream mid-body.
const BIG: usize = 8 << 20;

struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<usize>>>,
}

/// Paths: `/raw/close` answers with `Connection: close` and closes;
/// `/raw/trailers` answers chunked, with a trailer;
/// `/raw/hangup` answers (keep-alive) and then closes the connection
/// anyway, as an upstream's idle timeout would; `/raw/empty` is a 204;
/// `/raw/big` sends `BIG` bytes; anything else a short 200.
async fn scripted() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (a, c) = (Arc::clone(&accepted), Arc::clone(&closed));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                serve_scripted(stream, n).await;
                c.lock().unwrap().push(n);
            });
        }
    });
    Scripted {
        addr,
        accepted,
        closed,
    }
}

async fn serve_scripted(mut stream: TcpStream, n: usize) {
    let mut buf = Vec::new();
    loop {
        // One request head (the gateway sends GET / HEAD without a body).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let mut line = head.split_whitespace();
        let method = line.next().unwrap_or("").to_string();
        let path = line.next().unwrap_or("").to_string();
        let body: Vec<u8> = match path.as_str() {
            "/raw/big" => vec![b'x'; BIG],
            "/raw/empty" => Vec::new(),
            _ => format!("conn {n}").into_bytes(),
        };
        let mut out = match path.as_str() {
            "/raw/empty" => format!("HTTP/1.1 204 No Content\r\nx-conn: {n}\r\n\r\n"),
            "/raw/trailers" => format!(
                "HTTP/1.1 200 OK\r\nx-conn: {n}\r\ntransfer-encoding: chunked\r\n\r\n\
                 6\r\nconn {n}\r\n0\r\nx-checksum: 1\r\n\r\n"
            ),
            "/raw/close" => format!(
                "HTTP/1.1 200 OK\r\nx-conn: {n}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            ),
            _ => format!(
                "HTTP/1.1 200 OK\r\nx-conn: {n}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            ),
        }
        .into_bytes();
        if method != "HEAD" && path != "/raw/trailers" {
            out.extend_from_slice(&body);
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        if path == "/raw/close" || path == "/raw/hangup" {
            return;
        }
    }
}

async fn gateway(up: &Scripted, idle_timeout_seconds: u64) -> TestGateway {
    TestGateway::spawn_with(&format!(
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
    .await
}

fn conn_of(r: &common::Reply) -> usize {
    r.headers
        .get("x-conn")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-conn on a {} reply", r.status))
}

#[tokio::test]
async fn one_upstream_connection_serves_sequential_requests_of_every_shape() {
    let up = scripted().await;
    let g = gateway(&up, 60).await;
    for i in 0..40 {
        let r = match i % 4 {
            0 => g.get("/raw/small", None).await,
            1 => g.send(Method::HEAD, "/raw/small", &[], b"").await,
            2 => g.get("/raw/trailers", None).await,
            _ => g.get("/raw/empty", None).await,
        };
        assert!(r.status.is_success(), "request {i}: {}", r.status);
        assert_eq!(conn_of(&r), 1, "request {i} took a new connection");
        if i % 4 == 0 || i % 4 == 2 {
            assert_eq!(&r.body[..], b"conn 1");
        }
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_abandoned_mid_body_closes_its_upstream_connection() {
    let up = scripted().await;
    let g = gateway(&up, 60).await;
    assert_eq!(conn_of(&g.get("/raw/small", None).await), 1);

    // A client that reads the head and a little of a large body, then goes.
    let mut client = TcpStream::connect(g.addr).await.unwrap();
    client
        .write_all(b"GET /raw/big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    let k = client.read(&mut got).await.unwrap();
    assert!(String::from_utf8_lossy(&got[..k]).contains("x-conn: 1"));
    drop(client);

    // The next request must not land on the connection that still has
    // megabytes of the abandoned body in it.
    common::TestGateway::eventually("the abandoned connection is closed", || async {
        up.closed.lock().unwrap().contains(&1)
    })
    .await;
    let r = g.get("/raw/small", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(conn_of(&r), 2);
    assert_eq!(&r.body[..], b"conn 2");
}

#[tokio::test]
async fn connections_the_upstream_closes_are_not_reused() {
    let up = scripted().await;
    let g = gateway(&up, 60).await;
    // `Connection: close`: the next request needs a new connection.
    assert_eq!(conn_of(&g.get("/raw/close", None).await), 1);
    let r = g.get("/raw/small", None).await;
    assert_eq!((r.status, conn_of(&r)), (StatusCode::OK, 2));
    // Closed without notice after a keep-alive response (an upstream's
    // idle timeout): found closed at checkout, never a 502.
    assert_eq!(conn_of(&g.get("/raw/hangup", None).await), 2);
    common::TestGateway::eventually("the upstream closed connection 2", || async {
        up.closed.lock().unwrap().contains(&2)
    })
    .await;
    let r = g.get("/raw/small", None).await;
    assert_eq!((r.status, conn_of(&r)), (StatusCode::OK, 3));
    assert_eq!(&r.body[..], b"conn 3");
}

#[tokio::test]
async fn concurrent_requests_each_get_a_whole_response() {
    let up = scripted().await;
    let g = Arc::new(gateway(&up, 60).await);
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
                assert_eq!(r.body, format!("conn {}", conn_of(&r)).into_bytes());
                seen.push(conn_of(&r));
            }
            seen
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=64).contains(&opened),
        "{opened} connections for at most 64 requests in flight"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let up = scripted().await;
    let g = gateway(&up, 1).await;
    assert_eq!(conn_of(&g.get("/raw/small", None).await), 1);
    // Nothing else happens: the gateway's sweep closes it.
    common::TestGateway::eventually("the idle connection is closed", || async {
        up.closed.lock().unwrap().contains(&1)
    })
    .await;
    let r = g.get("/raw/small", None).await;
    assert_eq!((r.status, conn_of(&r)), (StatusCode::OK, 2));
}

#[tokio::test]
async fn a_tls_handshake_the_upstream_never_answers_fails_at_the_connect_timeout() {
    // Accepts TCP, then says nothing: the ClientHello is never answered.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
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
