//! DESIGN section 8: every connection has a deadline, every upstream a cap.
//!
//! Each case runs on both public-listener paths where the path matters
//! (`server.fast_path = true` and `false`), with short configured
//! timeouts; waits are bounded generously, so a busy machine is slower,
//! never wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::clock::Clock;
use tokengate::config::Config;
use tokengate::gateway::Gateway;
use tokengate::server::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Far longer than any deadline configured here: a bound on waiting, not
/// a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

/// A gateway on `127.0.0.1:0` with `[server]` keys `server`, one upstream
/// `up` at `upstream` (with `upstream_keys`), and a catch-all route with
/// `auth = "none"` (the deadlines are the same for any route).
struct Gw {
    running: Option<Running>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gw {
    async fn spawn(server: &str, upstream: SocketAddr, upstream_keys: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace_seconds = 1
{server}

[store]
url = "sqlite://{db}"

[[upstreams]]
name = "up"
url = "http://{upstream}"
{upstream_keys}

[[routes]]
path = "/"
upstream = "up"
auth = "none"

[[routes]]
path = "/api/calls"
methods = ["GET"]
upstream = "up"
abilities = ["calls:read"]
"#,
            db = dir.path().join("tg.db").display(),
        );
        let config = Config::from_toml(std::path::Path::new("test.toml"), &text).unwrap();
        let store = tokengate::store::open(&config.store.url, 4, config.store.timeout)
            .await
            .unwrap();
        let gateway = Gateway::new(config, store, Clock::manual(1_800_000_000));
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = server::start_on(Arc::clone(&gateway), public, admin)
            .await
            .unwrap();
        Self {
            addr: running.public_addr,
            running: Some(running),
            _dir: dir,
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            tokio::spawn(r.shutdown());
        }
    }
}

fn fast(on: bool) -> String {
    format!("fast_path = {on}")
}

/// An upstream answering every request `200 ok` over HTTP/1.1 keep-alive.
async fn ok_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Whether the peer closes `s` (EOF or reset) within `within`; whatever it
/// sends first is read and dropped.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns its
/// head (as text) and body.
async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return (head, buf[end + 4..end + 4 + len].to_vec());
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a whole response");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no whole response in time")
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame header and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_part_of_a_head_is_closed_at_the_header_deadline() {
    let up = ok_upstream().await;
    // A HEADERS frame that never ends (no END_HEADERS, no CONTINUATION).
    let mut unfinished_h2 = H2_PREFACE.to_vec();
    unfinished_h2.extend(h2_frame(0x4, 0, 0, &[]));
    unfinished_h2.extend(h2_frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84]));
    let cases: [(&str, &[u8]); 4] = [
        ("nothing", b""),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM"),
        ("HEADERS without END_HEADERS", &unfinished_h2),
        ("part of an HTTP/1.1 head", b"GET / HTTP/1.1\r\nHost: x\r\n"),
    ];
    for on in [true, false] {
        let gw = Gw::spawn(
            &format!(
                "{}\nheader_read_timeout_seconds = 1\nidle_timeout_seconds = 600",
                fast(on)
            ),
            up,
            "",
        )
        .await;
        for (what, bytes) in cases {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            assert!(
                closed_within(&mut s, PATIENCE).await,
                "fast_path = {on}: a connection that sent {what} was held open"
            );
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_after_the_idle_timeout() {
    let up = ok_upstream().await;
    for on in [true, false] {
        // The header deadline is far away: only the idle timeout can close it.
        let gw = Gw::spawn(
            &format!(
                "{}\nheader_read_timeout_seconds = 600\nidle_timeout_seconds = 1",
                fast(on)
            ),
            up,
            "",
        )
        .await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        for _ in 0..2 {
            s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let (head, body) = read_response(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(body, b"ok");
        }
        assert!(
            closed_within(&mut s, PATIENCE).await,
            "fast_path = {on}: an idle keep-alive connection stayed open"
        );
    }
}

#[tokio::test]
async fn a_head_begun_after_idle_must_be_finished_within_the_header_timeout() {
    let up = ok_upstream().await;
    for on in [true, false] {
        let gw = Gw::spawn(
            &format!(
                "{}\nheader_read_timeout_seconds = 1\nidle_timeout_seconds = 600",
                fast(on)
            ),
            up,
            "",
        )
        .await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Idle for longer than the header timeout: still open (the idle
        // timeout is 600 s), and a request then is answered.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "fast_path = {on}: {head}");
        // A head that starts and never ends is cut off.
        s.write_all(b"GET /x HTTP/1.1\r\nHo").await.unwrap();
        assert!(
            closed_within(&mut s, PATIENCE).await,
            "fast_path = {on}: a slow head after idle was waited for"
        );
    }
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed() {
    let up = ok_upstream().await;
    let gw = Gw::spawn(
        "header_read_timeout_seconds = 600\nidle_timeout_seconds = 1",
        up,
        "",
    )
    .await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/x", gw.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await.unwrap();
    // The gateway ends the connection (GOAWAY, then close) once idle.
    let ended = tokio::time::timeout(PATIENCE, conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
}

/// An upstream that counts the connections open to it and the requests
/// in flight, and holds every response until `release` is called.
struct HoldingUpstream {
    addr: SocketAddr,
    most_connections: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HoldingUpstream {
    async fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let most_connections = Arc::new(AtomicUsize::new(0));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let (mc, mf) = (Arc::clone(&most_connections), Arc::clone(&most_in_flight));
        tokio::spawn(async move {
            let open = Arc::new(AtomicUsize::new(0));
            let in_flight = Arc::new(AtomicUsize::new(0));
            while let Ok((s, _)) = listener.accept().await {
                mc.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let (open, in_flight, mf) =
                    (Arc::clone(&open), Arc::clone(&in_flight), Arc::clone(&mf));
                let released = released.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let (in_flight, mf) = (Arc::clone(&in_flight), Arc::clone(&mf));
                        let mut released = released.clone();
                        async move {
                            mf.fetch_max(
                                in_flight.fetch_add(1, Ordering::SeqCst) + 1,
                                Ordering::SeqCst,
                            );
                            let _ = released.wait_for(|r| *r).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            most_connections,
            most_in_flight,
            release,
        }
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Status, JSON `code` and whether `Retry-After` came.
async fn outcome(resp: http::Response<hyper::body::Incoming>) -> (StatusCode, String, bool) {
    let status = resp.status();
    let retry_after = resp.headers().contains_key("retry-after");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(String::from))
        .unwrap_or_default();
    (status, code, retry_after)
}

/// Sends `n` GETs at once on one HTTP/2 connection.
fn h2_burst(
    send: &hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, String, bool)>> {
    (0..n)
        .map(|i| {
            let mut send = send.clone();
            let uri = format!("http://{addr}/x/{i}");
            tokio::spawn(async move {
                let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
                outcome(send.send_request(req).await.unwrap()).await
            })
        })
        .collect()
}

#[tokio::test]
async fn h2_streams_per_connection_are_capped() {
    let up = HoldingUpstream::spawn().await;
    let gw = Gw::spawn("h2_max_concurrent_streams = 3", up.addr, "").await;
    let send = h2_client(gw.addr).await;
    // Sent at once, before the client has read the gateway's SETTINGS:
    // streams past the third are refused by the gateway (REFUSED_STREAM),
    // never passed on.
    let streams: Vec<_> = (0..10)
        .map(|i| {
            let mut send = send.clone();
            let uri = format!("http://{}/x/{i}", gw.addr);
            tokio::spawn(async move {
                let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
                match send.send_request(req).await {
                    Ok(resp) => Ok(resp.status()),
                    Err(e) => Err(format!("{e:?}")),
                }
            })
        })
        .collect();
    TestWait::until("three streams in flight", || {
        up.most_in_flight.load(Ordering::SeqCst) >= 3
    })
    .await;
    up.release();
    let mut ok = 0;
    for s in streams {
        match s.await.unwrap() {
            Ok(status) => {
                assert_eq!(status, StatusCode::OK);
                ok += 1;
            }
            Err(e) => assert!(e.contains("REFUSED_STREAM"), "{e}"),
        }
    }
    assert!(ok >= 3, "{ok} streams answered");
    assert_eq!(up.most_in_flight.load(Ordering::SeqCst), 3);
}

/// Polls a condition every 10 ms, failing after [`PATIENCE`].
struct TestWait;

impl TestWait {
    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never happened: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn one_h2_client_with_many_streams_cannot_open_more_upstream_connections_than_the_cap() {
    let up = HoldingUpstream::spawn().await;
    let gw = Gw::spawn(
        "",
        up.addr,
        "max_connections = 4\nconnect_timeout_ms = 300\nresponse_timeout_ms = 20000",
    )
    .await;
    let send = h2_client(gw.addr).await;
    let n = 20;
    let streams = h2_burst(&send, gw.addr, n);
    // Those past the cap are refused while the four hold their connections.
    TestWait::until("the excess refused", || {
        streams.iter().filter(|s| s.is_finished()).count() >= n - 4
    })
    .await;
    up.release();
    let (mut ok, mut busy) = (0, 0);
    for s in streams {
        let (status, code, retry_after) = s.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(code, "UPSTREAM_BUSY");
                assert!(retry_after, "503 UPSTREAM_BUSY without Retry-After");
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, busy), (4, n - 4));
    assert_eq!(up.most_connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_cap_holds_on_the_fast_path_too() {
    let up = HoldingUpstream::spawn().await;
    let gw = Gw::spawn(
        "",
        up.addr,
        "max_connections = 2\nconnect_timeout_ms = 300\nresponse_timeout_ms = 20000",
    )
    .await;
    let n = 6;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(format!("GET /x/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                read_response(&mut s).await
            })
        })
        .collect();
    TestWait::until("the excess refused", || {
        clients.iter().filter(|c| c.is_finished()).count() >= n - 2
    })
    .await;
    up.release();
    let (mut ok, mut busy) = (0, 0);
    for c in clients {
        let (head, body) = c.await.unwrap();
        if head.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["code"], "UPSTREAM_BUSY");
            busy += 1;
        }
    }
    assert_eq!((ok, busy), (2, n - 2));
    assert_eq!(up.most_connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_connection_on_one_path_gives_way_to_a_request_on_the_other() {
    let up = HoldingUpstream::spawn().await;
    up.release();
    let gw = Gw::spawn(
        "",
        up.addr,
        "max_connections = 1\nconnect_timeout_ms = 300\nresponse_timeout_ms = 20000",
    )
    .await;
    let http1 = |i: u32| async move {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(format!("GET /x/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(&mut s).await.0
    };
    // The fast path's connection stays idle in its pool, holding the cap's
    // one place; hyper's path (HTTP/2 here) needs one of its own, and then
    // the fast path again.
    let head = http1(1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let send = h2_client(gw.addr).await;
    let (status, code, _) = h2_burst(&send, gw.addr, 1).remove(0).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{code}");
    let head = http1(2).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Sends a GET and reads until the first chunk (`hello`) has come.
async fn until_first_chunk(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        while !got.windows(5).any(|w| w == b"hello") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the first chunk");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no first chunk");
    s
}

#[tokio::test]
async fn a_stalled_upstream_body_is_released_when_its_client_leaves() {
    for on in [true, false] {
        let (up, closed) = common::counted::stalling().await;
        // The upstream's own timeout is far away: only the client leaving
        // can end the exchange.
        let gw = Gw::spawn(&fast(on), up, "response_timeout_ms = 600000").await;
        let s = until_first_chunk(gw.addr).await;
        drop(s);
        TestWait::until(
            &format!("fast_path = {on}: upstream connection released"),
            || closed.load(Ordering::SeqCst) == 1,
        )
        .await;
    }
}

#[tokio::test]
async fn an_upstream_body_that_stalls_for_the_response_timeout_ends_the_exchange() {
    for on in [true, false] {
        let (up, closed) = common::counted::stalling().await;
        let gw = Gw::spawn(&fast(on), up, "response_timeout_ms = 300").await;
        let mut s = until_first_chunk(gw.addr).await;
        // The client sees its response cut off (no last chunk), and the
        // upstream connection is closed, not kept for reuse.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "fast_path = {on}: a stalled body was waited for"
        );
        assert!(
            !rest.windows(5).any(|w| w == b"0\r\n\r\n"),
            "fast_path = {on}: the cut-off body was passed as complete"
        );
        TestWait::until(
            &format!("fast_path = {on}: upstream connection closed"),
            || closed.load(Ordering::SeqCst) == 1,
        )
        .await;
    }
}

#[tokio::test]
async fn a_client_that_reads_nothing_of_its_answer_is_closed_after_the_idle_timeout() {
    for on in [true, false] {
        let (up, closed) = common::counted::endless().await;
        // Only the idle timeout can end it: the upstream never pauses, and
        // its own timeout is far away.
        let gw = Gw::spawn(
            &format!(
                "{}\nheader_read_timeout_seconds = 600\nidle_timeout_seconds = 1",
                fast(on)
            ),
            up,
            "response_timeout_ms = 600000",
        )
        .await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        // The client reads nothing; once every buffer on the way is full,
        // the gateway's write waits, and the idle timeout later it gives
        // up: the upstream connection is closed, not held for ever.
        TestWait::until(
            &format!("fast_path = {on}: upstream connection released"),
            || closed.load(Ordering::SeqCst) == 1,
        )
        .await;
        // And the client's connection is closed too: what was buffered
        // for it, then the end (or a reset).
        let mut buf = vec![0u8; 1 << 20];
        let ended = tokio::time::timeout(PATIENCE, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "fast_path = {on}: the client's connection was kept open"
        );
    }
}

#[tokio::test]
async fn an_h2_client_that_grants_its_stream_no_window_is_closed_after_the_idle_timeout() {
    let (up, closed) = common::counted::endless().await;
    let gw = Gw::spawn(
        "header_read_timeout_seconds = 600\nidle_timeout_seconds = 1",
        up,
        "response_timeout_ms = 600000",
    )
    .await;
    let mut send = h2_client(gw.addr).await;
    let req = Request::get(format!("http://{}/endless", gw.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    // The head comes; the body is never read, so the client's connection
    // (which keeps running: it answers pings and settings) never opens
    // the stream's window again once its first window's worth is in.
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    TestWait::until("upstream connection released", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    // The client's connection is gone too: reading the body now ends in
    // an error, after what had come.
    let read = tokio::time::timeout(PATIENCE, resp.into_body().collect()).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "the connection was kept open, or the body passed as whole"
    );
}

#[tokio::test]
async fn case_variants_of_standard_methods_are_refused() {
    let up = ok_upstream().await;
    for on in [true, false] {
        let gw = Gw::spawn(&fast(on), up, "").await;
        for line in [
            "get /api/calls/7",
            "Get /api/calls/7",
            "post /anything",
            "dElEtE /x",
        ] {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(format!("{line} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let (head, body) = read_response(&mut s).await;
            assert!(
                head.starts_with("HTTP/1.1 400"),
                "fast_path = {on}, {line}: {head}"
            );
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["code"], "BAD_METHOD", "fast_path = {on}, {line}");
        }
        // Methods that are not standard ones pass by case as written.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "fast_path = {on}: {head}");
    }
}

#[tokio::test]
async fn a_tunnel_ended_by_revocation_sends_close_1008() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let g = common::TestGateway::spawn().await;
    let (t, id) = g.mint(tokengate::token::TokenKind::Api, &["*"], None).await;
    let mut req = format!("ws://{}/ws/chat", g.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    let stream = TcpStream::connect(g.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    let back = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap();
    assert_eq!(back.unwrap().unwrap().into_text().unwrap(), "hi");

    g.gateway
        .issuer
        .revoke(&id, &Default::default())
        .await
        .unwrap();
    let close = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("the tunnel ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the tunnel outlived its token");
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Policy));
}
