//! The HTTP/1.1 fast path (`tokengate::fast`) over real sockets: exact
//! bytes on both sides, pipelining, hand-off to hyper mid-connection,
//! stale upstream connections, interim and malformed upstream responses,
//! timeouts and `Connection: close`.
//!
//! Clients are raw TCP so the test controls every byte and sees every byte
//! back; the upstream is the scripted raw one (`common::raw::Upstream`):
//! every response says which upstream connection carried it (`X-Conn: N`,
//! counted from 1), and every request is recorded (head and decoded body)
//! so tests can count what reached the upstream.
//!
//! Which path served a response: the scripted upstream writes its marker
//! field as `X-Conn`; the fast path passes field names on byte for byte,
//! while hyper keeps them in a `HeaderMap` and writes them in lower case.
//! So a response with `x-conn` came through hyper;
//! [`fast_path_off_still_serves_requests`] pins that down, and the
//! hand-off test relies on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{get, post, Client, Upstream, CHUNKED_BODY, UPSTREAM_DATE, WAIT};
use common::{Opts, TestGateway};

async fn upstream() -> Upstream {
    Upstream::spawn().await
}

// ---------------------------------------------------------------------------
// Gateways.

/// Routes to the scripted upstream: `/up` without auth, `/authed` with.
fn routes(up: &Upstream) -> String {
    format!(
        r#"
[[upstreams]]
name = "raw"
url = "http://{}"
pool_idle_timeout_seconds = 60
response_timeout_ms = 5000
connect_timeout_ms = 2000

[[routes]]
path = "/up"
upstream = "raw"
auth = "none"

[[routes]]
path = "/authed"
upstream = "raw"
"#,
        up.addr
    )
}

async fn gateway(up: &Upstream) -> TestGateway {
    TestGateway::spawn_with(&routes(up)).await
}

/// A gateway with more `[server]` keys (`Opts::server`), routing to the
/// scripted upstream.
async fn gateway_opts(up: &Upstream, opts: Opts) -> TestGateway {
    opts.extra(&routes(up)).spawn().await
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn chunked_response_passes_through_byte_exact_and_the_connection_is_reused() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;

    let r = c.get("/up/chunked").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        !r.served_by_hyper(),
        "not served by the fast path:\n{}",
        r.head
    );
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{}", r.head);
    assert!(r.header("content-length").is_none(), "{}", r.head);
    assert_eq!(r.body, CHUNKED_BODY, "{:?}", r.body_str());
    let first = r.conn();

    // Same client connection, next request: the upstream connection the
    // chunked body ended on cleanly is reused.
    let r = c.get("/up/small").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("GET /up/small conn {first}"));
    assert_eq!(r.conn(), first);

    // And from another client connection too.
    let mut c2 = Client::connect(g.addr).await;
    let r = c2.get("/up/chunked").await;
    assert_eq!((r.status, r.conn()), (200, first));
    assert_eq!(r.body, CHUNKED_BODY);
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    let mut batch = get("/up/first");
    batch.push_str(&post("/up/echo/second", "pipelined body"));
    batch.push_str(&get("/up/third"));
    c.send(batch.as_bytes()).await;

    let r1 = c.response(false).await;
    let r2 = c.response(false).await;
    let r3 = c.response(false).await;
    assert_eq!((r1.status, r2.status, r3.status), (200, 200, 200));
    assert!(!r1.served_by_hyper(), "{}", r1.head);
    assert_eq!(r1.body_str(), format!("GET /up/first conn {}", r1.conn()));
    assert_eq!(r2.body_str(), "pipelined body");
    assert_eq!(r3.body_str(), format!("GET /up/third conn {}", r3.conn()));

    // Still open and in sync.
    let r4 = c.get("/up/fourth").await;
    assert_eq!(r4.body_str(), format!("GET /up/fourth conn {}", r4.conn()));
    let order: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        order,
        ["/up/first", "/up/echo/second", "/up/third", "/up/fourth"]
    );

    // Pipelined across a hand-off: the fast path answers the first, hyper
    // the chunked upload and what follows it, still in order.
    let mut c = Client::connect(g.addr).await;
    let mut batch = get("/up/p1");
    batch.push_str(
        "POST /up/echo/p2 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n0\r\n\r\n",
    );
    batch.push_str(&get("/up/p3"));
    c.send(batch.as_bytes()).await;
    let r1 = c.response(false).await;
    let r2 = c.response(false).await;
    let r3 = c.response(false).await;
    assert_eq!(r1.body_str(), format!("GET /up/p1 conn {}", r1.conn()));
    assert!(!r1.served_by_hyper(), "{}", r1.head);
    assert_eq!((r2.status, r2.body_str().as_str()), (200, "abc"));
    assert!(r2.served_by_hyper(), "{}", r2.head);
    assert_eq!(r3.body_str(), format!("GET /up/p3 conn {}", r3.conn()));
    assert_eq!(up.requests("/up/echo/p2")[0].body, b"abc");
}

#[tokio::test]
async fn a_chunked_upload_hands_the_connection_to_hyper_mid_stream() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;

    let r = c.get("/up/before").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("GET /up/before conn {}", r.conn()));
    assert!(!r.served_by_hyper(), "{}", r.head);

    c.send(
        b"POST /up/echo/chunked-upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n7;ext=y\r\n, world\r\n0\r\n\r\n",
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.served_by_hyper(),
        "chunked upload not handed over:\n{}",
        r.head
    );
    assert_eq!(r.body_str(), "hello, world");
    let seen = up.requests("/up/echo/chunked-upload");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, b"hello, world");

    // The connection stays with hyper, and keeps working.
    let r = c.get("/up/after").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.served_by_hyper(), "{}", r.head);
    assert_eq!(r.body_str(), format!("GET /up/after conn {}", r.conn()));
    assert_eq!(up.count("/up/before"), 1);
    assert_eq!(up.count("/up/after"), 1);
}

#[tokio::test]
async fn large_and_split_request_bodies_reach_the_upstream_intact() {
    let up = upstream().await;
    let g = gateway(&up).await;

    // 200 KiB: over the fast path's buffering limit, so hyper streams it.
    let big: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut c = Client::connect(g.addr).await;
    let mut req = format!(
        "POST /up/echo/big HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    c.send(&req).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.body == big,
        "echoed body differs ({} bytes)",
        r.body.len()
    );
    let seen = up.requests("/up/echo/big");
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].body == big,
        "upstream got {} bytes",
        seen[0].body.len()
    );

    // A small body in a write of its own, after the head: the fast path
    // waits for it rather than forwarding the head alone.
    let mut c = Client::connect(g.addr).await;
    c.send(b"POST /up/echo/split HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\n")
        .await;
    c.wait_until_read().await;
    c.send(b"hello there").await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(!r.served_by_hyper(), "{}", r.head);
    assert_eq!(r.body_str(), "hello there");
    let seen = up.requests("/up/echo/split");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello there");
    assert_eq!(seen[0].values("content-length"), ["11"]);

    // The head itself split mid-line, too.
    c.send(b"POST /up/echo/split2 HTTP/1.1\r\nHost: gw\r\nContent-Le")
        .await;
    c.wait_until_read().await;
    c.send(b"ngth: 3\r\n\r\nabc").await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.body_str().as_str()), (200, "abc"));
    assert_eq!(up.requests("/up/echo/split2")[0].body, b"abc");
}

#[tokio::test]
async fn head_gets_the_length_but_no_body_and_the_connection_goes_on() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    c.send(b"HEAD /up/head HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let r = c.response(true).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length"), Some("11"), "{}", r.head);
    let conn = r.conn();

    // Had any body bytes followed the HEAD response, this response would
    // not start where the client expects it.
    let r = c.get("/up/head").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_str(), "hello world");
    // The HEAD left the upstream connection clean: reused.
    assert_eq!(r.conn(), conn);
    assert_eq!(up.accepted(), 1);
    assert_eq!(up.requests("/up/head")[0].method, "HEAD");
}

#[tokio::test]
async fn a_close_delimited_response_is_passed_whole_and_closes_the_client() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    c.send(get("/up/until-close").as_bytes()).await;
    // No length, no chunking: the body is whatever comes before the close.
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.says_close(), "{}", r.head);
    assert!(r.header("content-length").is_none(), "{}", r.head);
    assert_eq!(r.body_str(), "part one, part two");

    // The upstream connection is not reused.
    let r = g.get("/up/small", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"GET /up/small conn 2");
}

#[tokio::test]
async fn an_upstream_closing_an_idle_connection_costs_no_request() {
    for fast_path in [true, false] {
        an_upstream_closing_an_idle_connection_costs_no_request_on(fast_path).await;
    }
}

/// With `fast_path` off, hyper's path: it must not send a request twice
/// either.
async fn an_upstream_closing_an_idle_connection_costs_no_request_on(fast_path: bool) {
    let up = upstream().await;
    let g = gateway_opts(&up, Opts::default().fast_path(fast_path)).await;
    let mut c = Client::connect(g.addr).await;

    // GET: the stale connection is found out by sending, and the request
    // is sent again on a new connection.
    let r = c.get("/up/hangup/1").await;
    assert_eq!((r.status, r.conn()), (200, 1));
    assert_eq!(r.served_by_hyper(), !fast_path, "{}", r.head);
    up.wait_closed(1).await;
    let r = c.get("/up/after-hangup").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.conn(), 2);
    let seen = up.requests("/up/after-hangup");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].conn, 2);

    // POST: never sent twice, so the closed connection must be noticed
    // before it is used.
    let r = c.get("/up/hangup/2").await;
    assert_eq!((r.status, r.conn()), (200, 2));
    up.wait_closed(2).await;
    c.send(post("/up/echo/after-hangup", "once only").as_bytes())
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_str(), "once only");
    assert_eq!(r.conn(), 3);
    let seen = up.requests("/up/echo/after-hangup");
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].conn, &seen[0].body[..]), (3, &b"once only"[..]));
    assert_eq!(up.count("/up/hangup/1"), 1);
    assert_eq!(up.count("/up/hangup/2"), 1);
    assert_eq!(up.accepted(), 3);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    let r = c.get("/up/hints").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.header("link").is_none(), "{}", r.head);
    assert_eq!(r.body_str(), "after hints");
    // Nothing of the 103 trails behind either.
    let r2 = c.get("/up/hints").await;
    assert_eq!((r2.status, r2.body_str().as_str()), (200, "after hints"));
    assert_eq!(r2.conn(), r.conn());
}

#[tokio::test]
async fn unasked_upgrades_and_malformed_status_lines_are_502() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;

    let r = c.get("/up/switch").await;
    assert_eq!(r.status, 502, "{}\n{}", r.head, r.body_str());
    assert!(
        r.body_str().contains("UPSTREAM_UNAVAILABLE"),
        "{}",
        r.body_str()
    );
    assert!(!r.body_str().contains("raw bytes"));

    let r = c.get("/up/garbage").await;
    assert_eq!(r.status, 502, "{}\n{}", r.head, r.body_str());
    assert!(
        r.body_str().contains("UPSTREAM_UNAVAILABLE"),
        "{}",
        r.body_str()
    );

    // The client connection is fine, and neither broken upstream
    // connection is reused.
    let r = c.get("/up/small").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.conn(), 3);
    assert_eq!(up.count("/up/switch"), 1);
    assert_eq!(up.count("/up/garbage"), 1);
}

#[tokio::test]
async fn a_stalled_request_head_is_cut_off_at_the_header_read_timeout() {
    // On both paths at once.
    tokio::join!(stalled_head_cut_off(true), stalled_head_cut_off(false));
}

/// On the fast path, or (`fast_path` off) on hyper's.
async fn stalled_head_cut_off(fast_path: bool) {
    let up = upstream().await;
    let g = gateway_opts(
        &up,
        Opts::default()
            .server("header_read_timeout_seconds", 1)
            .server("idle_timeout_seconds", 1)
            .fast_path(fast_path),
    )
    .await;
    let addr = g.addr;

    // Half a head, then nothing.
    let started = tokio::time::Instant::now();
    let mut stalled = Client::connect(addr).await;
    stalled
        .send(b"GET /up/small HTTP/1.1\r\nHost: gw\r\nX-Half")
        .await;
    // An idle keep-alive connection after a whole request is bounded too
    // (by `idle_timeout_seconds`).
    let mut idle = Client::connect(addr).await;
    idle.send(get("/up/small").as_bytes()).await;
    assert_eq!(idle.response(false).await.status, 200);

    let (a, b) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), stalled.expect_eof()),
        tokio::time::timeout(Duration::from_secs(5), idle.expect_eof()),
    );
    a.unwrap_or_else(|_| {
        panic!("fast_path = {fast_path}: the stalled connection was not closed within 5 s")
    });
    b.unwrap_or_else(|_| {
        panic!("fast_path = {fast_path}: the idle connection was not closed within 5 s")
    });
    // Not cut off before the timeout, either (a lower bound only: a busy
    // machine makes this longer, never shorter).
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(up.count("/up/small"), 1);
}

#[tokio::test]
async fn a_stalled_request_body_ends_as_it_does_through_hyper() {
    // Half a body, then nothing. Through hyper, the request is forwarded
    // as its head arrives and the upstream's response timeout (5 s for
    // `/up`) cuts it off: 504. The fast path used to wait for the rest
    // without end; it now hands the connection to hyper once the header
    // read timeout is up, so the client gets the same answer.
    let up = upstream().await;
    let stalled = |addr: SocketAddr| async move {
        let mut c = Client::connect(addr).await;
        c.send(b"POST /up/echo/stalled HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nhello")
            .await;
        c.response(false).await
    };
    let via_hyper = gateway_opts(
        &up,
        Opts::default()
            .server("header_read_timeout_seconds", 1)
            .fast_path(false),
    )
    .await;
    let via_fast = gateway_opts(
        &up,
        Opts::default().server("header_read_timeout_seconds", 1),
    )
    .await;
    let (hyper_addr, fast_addr) = (via_hyper.addr, via_fast.addr);
    let (via_hyper, via_fast) = tokio::join!(stalled(hyper_addr), stalled(fast_addr));
    assert_eq!(via_hyper.status, 504, "control (hyper): {}", via_hyper.head);
    assert_eq!(via_fast.status, 504, "fast path: {}", via_fast.head);
    assert!(
        via_fast.body_str().contains("UPSTREAM_TIMEOUT"),
        "{}",
        via_fast.body_str()
    );
    // Neither upstream request was complete, so none was recorded.
    assert_eq!(up.count("/up/echo/stalled"), 0);
}

#[tokio::test]
async fn client_connection_close_is_honoured() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    // A pipelined request after it must not be answered.
    let mut batch = "GET /up/closing HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_string();
    batch.push_str(&get("/up/never"));
    c.send(batch.as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(!r.served_by_hyper(), "{}", r.head);
    assert!(r.says_close(), "{}", r.head);
    assert_eq!(r.body_str(), "GET /up/closing conn 1");
    c.expect_eof().await;
    assert_eq!(up.count("/up/never"), 0);
    // The upstream connection was fine: kept for the next request.
    let r = g.get("/up/again", None).await;
    assert_eq!(&r.body[..], b"GET /up/again conn 1");

    // A refusal on a closing connection closes it too.
    let mut c = Client::connect(g.addr).await;
    c.send(b"GET /nowhere HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 404, "{}", r.head);
    assert!(r.says_close(), "{}", r.head);
    c.expect_eof().await;
}

/// A connection's last answer leaves in one segment with its FIN (the
/// gateway holds its tail back for the close, `MSG_MORE`), where a FIN of
/// its own would be one more segment for the client to take in: proxied,
/// refused, and with a request pipelined behind it (the lingering close's
/// FIN). Counted by the kernel on the client's socket (`ss -ti`); skipped
/// without `ss`.
#[tokio::test]
async fn a_closing_answer_carries_its_fin() {
    if std::process::Command::new("ss").arg("-V").output().is_err() {
        eprintln!("skipped: no `ss` (iproute2) to count segments with");
        return;
    }
    let up = upstream().await;
    let g = gateway(&up).await;
    let closing =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    let pipelined = closing("/up/first") + &get("/up/never");
    for (request, status) in [
        (closing("/up/closing"), 200),
        (closing("/nowhere"), 404),
        (pipelined, 200),
    ] {
        let mut c = Client::connect(g.addr).await;
        c.send(request.as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, status, "{}", r.head);
        assert!(r.says_close(), "{}", r.head);
        c.expect_eof().await;
        // Still open on this side, so the kernel still has its counts.
        let ours = c.stream.local_addr().unwrap();
        let out = std::process::Command::new("ss")
            .args(["-tinH", "src", &ours.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |name: &str| -> u64 {
            text.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text:?}"))
        };
        let (segs, data) = (count("segs_in"), count("data_segs_in"));
        // The SYN-ACK and the request's ACK carry no data; every other
        // segment does.
        assert!(
            segs <= data + 2,
            "{request:?}: {segs} segments in, {data} with data: the FIN came on its own"
        );
    }
    assert_eq!(up.count("/up/never"), 0);
}

#[tokio::test]
async fn gateway_headers_and_credentials_from_the_client_never_reach_the_upstream() {
    // tests/proxy.rs covers a single `Connection: close` GET; this is a
    // keep-alive POST with a body, second on its connection, answered by
    // the fast path (checked), so the rewrite is proven on this path.
    let up = upstream().await;
    let g = gateway(&up).await;
    let t = g.token(&["*"]).await;
    let mut c = Client::connect(g.addr).await;
    c.send(format!("GET /authed/first HTTP/1.1\r\nHost: gw\r\ntoken: {t}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(c.response(false).await.status, 200);
    let body = "payload";
    c.send(
        format!(
            "POST /authed/echo HTTP/1.1\r\nHost: public.example\r\n\
             Authorization: Bearer {t}\r\n\
             X-Tenant-Id: 999\r\nx-tenant-id: 998\r\nX-Account-Id: 5\r\n\
             X-Workspace-Id: 77\r\nX-Token-Abilities: *\r\nX-Token-Id: forged\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Request-Id: forged\r\n\
             Proxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body_str());
    assert!(!r.served_by_hyper(), "not the fast path:\n{}", r.head);
    assert_eq!(r.body_str(), body);

    let seen = up.requests("/authed/echo");
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.values("x-tenant-id"), [g.tenant_id.to_string()]);
    assert_eq!(s.values("x-account-id"), [g.account_id.to_string()]);
    assert_eq!(s.values("x-workspace-id"), [g.workspace_id.to_string()]);
    assert_eq!(s.values("x-token-abilities"), ["*"]);
    assert_ne!(s.values("x-token-id"), ["forged"]);
    assert_eq!(s.values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(s.values("x-forwarded-host"), ["public.example"]);
    assert_eq!(s.values("x-kept"), ["yes"]);
    let rid = s.values("x-request-id");
    assert_eq!(rid.len(), 1);
    assert_ne!(rid[0], "forged");
    assert_eq!(r.header("x-request-id"), Some(rid[0]));
    assert_eq!(s.values("host"), [up.addr.to_string()]);
    for gone in ["authorization", "token", "proxy-authorization"] {
        assert!(s.values(gone).is_empty(), "{gone} reached the upstream");
    }
    assert!(
        !s.headers.iter().any(|(_, v)| v.contains(&t)),
        "credential leaked"
    );
}

#[tokio::test]
async fn fast_path_off_still_serves_requests() {
    let up = upstream().await;
    let off = gateway_opts(&up, Opts::default().fast_path(false)).await;
    let addr = off.addr;
    let mut c = Client::connect(addr).await;
    let r = c.get("/up/plain").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_str(), format!("GET /up/plain conn {}", r.conn()));
    // Served by hyper: the marker the other tests use to tell the paths
    // apart.
    assert!(r.served_by_hyper(), "{}", r.head);
    c.send(get("/up/plain").as_bytes()).await;
    assert_eq!(c.response(false).await.status, 200);
    assert_eq!(up.count("/up/plain"), 2);

    // With it on (the default), the same request is answered without.
    let on = gateway_opts(&up, Opts::default()).await;
    let addr = on.addr;
    let mut c = Client::connect(addr).await;
    let r = c.get("/up/plain").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(!r.served_by_hyper(), "{}", r.head);
}

#[tokio::test]
async fn repeated_response_fields_all_reach_the_client() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    let r = c.get("/up/cookies").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(!r.served_by_hyper(), "{}", r.head);
    assert_eq!(r.values("set-cookie"), ["a=1", "b=2"], "{}", r.head);
    assert_eq!(r.values("x-multi"), ["one", "two"], "{}", r.head);
    assert_eq!(r.body_str(), "cookies");
}

#[tokio::test]
async fn transfer_coding_over_two_field_lines_keeps_its_chunked_framing() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    c.send(get("/up/te-split").as_bytes()).await;
    let mut r = c.head().await;
    assert_eq!(r.status, 200, "{}", r.head);
    // The gateway passes the body through chunk-framed, so the client must
    // be told the final coding is chunked, or it reads the framing as data.
    let codings = r.values("transfer-encoding").join(", ");
    assert!(
        codings.to_ascii_lowercase().ends_with("chunked"),
        "client told transfer-encoding {codings:?} for a chunk-framed body:\n{}",
        r.head
    );
    c.body(&mut r, false).await;
    assert_eq!(r.body, b"3\r\nabc\r\n0\r\n\r\n");
    // And the connection is still in step.
    let r = c.get("/up/small").await;
    assert_eq!(r.body_str(), format!("GET /up/small conn {}", r.conn()));
}

#[tokio::test]
async fn an_unsolicited_response_on_an_idle_connection_is_not_taken_as_the_next_answer() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;
    let r = c.get("/up/stray").await;
    assert_eq!((r.status, r.conn()), (200, 1));
    // Connection 1 has written its stray 408 and closed while idle.
    up.wait_closed(1).await;

    let r = c.get("/up/after-stray").await;
    assert_eq!(
        r.status, 200,
        "a request the upstream never saw was answered with:\n{}",
        r.head
    );
    assert_eq!(r.body_str(), "GET /up/after-stray conn 2");
    assert_eq!(up.count("/up/after-stray"), 1);

    // Not a GET: checked before use, so never affected.
    c.send(get("/up/stray").as_bytes()).await;
    assert_eq!(c.response(false).await.status, 200);
    up.wait_closed(2).await;
    c.send(post("/up/echo/after-stray", "x").as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.body_str().as_str()), (200, "x"), "{}", r.head);
}

#[tokio::test]
async fn a_slow_request_body_is_not_bound_by_the_header_read_timeout() {
    // hyper bounds only the head by `header_read_timeout_seconds`; the
    // fast path must not refuse what hyper would serve. It hands the
    // connection to hyper, with what it has read, once that time is up.
    let up = upstream().await;
    let slow_post = |addr: SocketAddr, path: &'static str| async move {
        let mut c = Client::connect(addr).await;
        c.send(
            format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nhello")
                .as_bytes(),
        )
        .await;
        // The rest comes well after the 1 s timeout, counted from before
        // the gateway read the first part.
        c.wait_until_read().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.send(b"world").await;
        c.response(false).await
    };
    let via_hyper = gateway_opts(
        &up,
        Opts::default()
            .server("header_read_timeout_seconds", 1)
            .fast_path(false),
    )
    .await;
    let via_fast = gateway_opts(
        &up,
        Opts::default().server("header_read_timeout_seconds", 1),
    )
    .await;
    let (via_hyper, via_fast) = tokio::join!(
        slow_post(via_hyper.addr, "/up/echo/slow-hyper"),
        slow_post(via_fast.addr, "/up/echo/slow-fast"),
    );
    assert_eq!(
        (via_hyper.status, via_hyper.body_str().as_str()),
        (200, "helloworld"),
        "control (hyper): {}",
        via_hyper.head
    );
    assert_eq!(
        (via_fast.status, via_fast.body_str().as_str()),
        (200, "helloworld"),
        "fast path: {}",
        via_fast.head
    );
    assert!(
        via_fast.served_by_hyper(),
        "the fast path kept a body past the header read timeout:\n{}",
        via_fast.head
    );
    assert_eq!(up.requests("/up/echo/slow-fast")[0].body, b"helloworld");
    assert_eq!(up.requests("/up/echo/slow-hyper")[0].body, b"helloworld");
}

// ---------------------------------------------------------------------------
// Found by review: each of these got past the first version of the fast path.

#[tokio::test]
async fn connection_listing_content_length_cannot_smuggle_a_request() {
    let g = TestGateway::spawn().await;
    let t = g.token(&[]).await;
    let inner = "GET /api/admin/secret HTTP/1.1\r\nHost: m\r\nX-Tenant-Id: evil\r\n\r\n";
    let req = format!(
        "POST /api/x/echo HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n\
         Connection: content-length\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let mut c = Client::connect(g.addr).await;
    c.send(req.as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    // The upstream read one request, whose body is the would-be request.
    assert_eq!(r.body_str(), inner, "the body came back whole");
    // And the next request on the connection is answered as itself, so
    // nothing of the body was taken for a request on either side.
    c.send(
        format!("GET /api/x/after HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "{\"ok\":true}"),
        "{}",
        r.head
    );
    let seen = g.upstream.seen.lock().unwrap().clone();
    let seen: Vec<(http::Method, &str)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.uri.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (http::Method::POST, "/api/x/echo"),
            (http::Method::GET, "/api/x/after")
        ]
    );
    assert_eq!(
        g.upstream.seen.lock().unwrap()[0].headers["content-length"],
        inner.len().to_string().as_str()
    );
}

#[tokio::test]
async fn a_fragment_in_the_target_cannot_change_the_route() {
    let g = TestGateway::spawn().await;
    let t = g.token(&[]).await;
    let plain = Client::exchange(
        g.addr,
        format!("GET /api/admin HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(
        (plain.status, plain.code().as_str()),
        (403, "ABILITY_MISSING"),
        "{}",
        plain.head
    );
    for target in ["/api/admin#x", "http://g/api/admin#x"] {
        let r = Client::exchange(
            g.addr,
            format!("GET {target} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n\r\n")
                .as_bytes(),
        )
        .await;
        // The fragment is no part of the path: the route is /api/admin's.
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "ABILITY_MISSING"),
            "{target}: {}",
            r.head
        );
    }
    assert_eq!(g.upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_response_with_many_fields_passes_as_through_hyper() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let r = Client::exchange(
        g.addr,
        b"GET /up/many-fields HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let fields: Vec<String> = (0..90).map(|i| format!("x-h{i}")).collect();
    for f in &fields {
        assert_eq!(r.values(f), ["v"], "{f}: {}", r.head);
    }
    assert_eq!(r.body_str(), "ok");
}

#[tokio::test]
async fn a_request_handed_to_hyper_during_shutdown_is_still_answered() {
    let mut g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    // Half a head: the connection is mid-request, not idle, when shutdown
    // begins.
    let mut c = Client::connect(g.addr).await;
    c.send(b"POST /api/x/echo HTTP/1.1\r\nHost: g\r\n").await;
    c.wait_until_read().await;
    let shutdown = tokio::spawn(g.running.take().unwrap().shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!shutdown.is_finished(), "shutdown waits for the request");
    // The rest of it makes a chunked upload, which goes to hyper.
    c.send(
        format!(
            "Authorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_str(), "5\r\nhello\r\n0\r\n\r\n", "{}", r.head);
    assert!(r.says_close(), "{}", r.head);
    c.expect_eof().await;
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown completes once the request is answered")
        .unwrap();
}

#[tokio::test]
async fn every_response_carries_one_date_on_both_paths() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let off = gateway_opts(&up, Opts::default().fast_path(false)).await;
    let hyper_only = off.addr;
    for (addr, fast) in [(g.addr, true), (hyper_only, false)] {
        let mut c = Client::connect(addr).await;
        // The upstream's own `Date` passes on as it came, alone.
        let r = c.get("/up/dated").await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.served_by_hyper(), !fast, "{}", r.head);
        assert_eq!(r.values("date"), [UPSTREAM_DATE], "{}", r.head);
        // Without one, the gateway dates the response, as RFC 9110 6.6.1
        // asks of a forwarding recipient with a clock; its refusals too.
        let proxied = c.get("/up/plain").await;
        assert_eq!(proxied.status, 200, "{}", proxied.head);
        let refused = c.get("/authed/x").await;
        assert_eq!(refused.status, 401, "{}", refused.head);
        for r in [proxied, refused] {
            let dates = r.values("date");
            assert_eq!(dates.len(), 1, "{}", r.head);
            let at = httpdate::parse_http_date(dates[0]).unwrap();
            // The current time, not a fixed or stale one.
            let age = std::time::SystemTime::now()
                .duration_since(at)
                .unwrap_or_default();
            assert!(age < Duration::from_secs(300), "{}", r.head);
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_at_once_at_shutdown() {
    // A grace far past WAIT: only a connection closed by the shutdown
    // itself lets it finish in time.
    let up = upstream().await;
    let mut g = gateway_opts(&up, Opts::default().grace_seconds(60)).await;
    let mut c = Client::connect(g.addr).await;
    let r = c.get("/up/plain").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(!r.served_by_hyper(), "{}", r.head);
    // Idle between requests, waiting on the fast path for the next.
    let shutdown = tokio::spawn(g.running.take().unwrap().shutdown());
    c.expect_eof().await;
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown waited for an idle connection")
        .unwrap();
}
