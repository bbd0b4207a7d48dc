//! The HTTP/1.1 fast path (`tokengate::fast`) over real sockets: exact
//! bytes on both sides, pipelining, hand-off to hyper mid-connection,
//! stale upstream connections, interim and malformed upstream responses,
//! timeouts and `Connection: close`.
//!
//! Clients are raw TCP so the test controls every byte and sees every byte
//! back. The upstream is scripted on raw TCP too: every response says which
//! upstream connection carried it (`X-Conn: N`, counted from 1), and every
//! request is recorded (head and decoded body) so tests can count what
//! reached the upstream.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single wait may take before the test fails: a bound for
/// hangs, never a measure of speed.
const WAIT: Duration = Duration::from_secs(10);

/// The chunked body `/up/chunked` sends: chunk extensions (one with a
/// quoted value) and a trailer field, to be passed through byte for byte.
const CHUNKED_BODY: &[u8] = b"4;ext=1\r\nWiki\r\n5;a=b;c=\"d e\"\r\npedia\r\n\
E\r\n in\r\n\r\nchunks.\r\n0\r\nx-checksum: abc\r\nx-other: 2\r\n\r\n";

/// The `Date` the upstream sends on `/up/dated`.
const UPSTREAM_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

// ---------------------------------------------------------------------------
// The scripted upstream.

/// A request as the scripted upstream read it.
#[derive(Clone, Debug)]
struct UpReq {
    /// Which upstream connection carried it.
    conn: usize,
    method: String,
    /// The request target without its query.
    path: String,
    /// Header fields, names lowercased, in order.
    headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    body: Vec<u8>,
}

impl UpReq {
    fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
}

/// The values of the fields called `name` (lower case), in order.
fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<usize>>>,
    seen: Arc<Mutex<Vec<UpReq>>>,
}

impl Upstream {
    /// The requests the upstream read for `path`.
    fn requests(&self, path: &str) -> Vec<UpReq> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }

    async fn wait_closed(&self, conn: usize) {
        TestGateway::eventually(&format!("upstream connection {conn} closed"), || async {
            self.closed.lock().unwrap().contains(&conn)
        })
        .await;
    }
}

/// Answers by the second path segment (`/up/<kind>/...`, `/authed/<kind>`):
/// - `chunked`: 200 with [`CHUNKED_BODY`], written in two parts;
/// - `echo`: 200 with the request body (`Content-Length`);
/// - `head`: 200 with `Content-Length: 11` (and the body unless HEAD);
/// - `until-close`: 200 with neither length nor chunking, then closes;
/// - `hangup`: a keep-alive 200, then closes anyway (an upstream idle
///   timeout);
/// - `hints`: a `103 Early Hints`, then a 200;
/// - `switch`: a `101 Switching Protocols` nobody asked for, then closes;
/// - `garbage`: a status line that is not HTTP, then closes;
/// - `te-split`: chunked, with `Transfer-Encoding` over two field lines
///   (`gzip`, then `chunked`);
/// - `stray`: a 200, then an unsolicited `408` and a close (as some
///   servers do at their idle timeout);
/// - `cookies`: a 200 with repeated fields (`set-cookie`, `x-multi`);
/// - anything else: 200 `"<METHOD> <path> conn <n>"`.
async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen: Arc<Mutex<Vec<UpReq>>> = Arc::default();
    let (a, c, s) = (
        Arc::clone(&accepted),
        Arc::clone(&closed),
        Arc::clone(&seen),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            let (c, s) = (Arc::clone(&c), Arc::clone(&s));
            tokio::spawn(async move {
                serve_upstream(stream, n, &s).await;
                // The stream is dropped (closed) before this is recorded.
                c.lock().unwrap().push(n);
            });
        }
    });
    Upstream {
        addr,
        accepted,
        closed,
        seen,
    }
}

/// Reads until `buf` holds at least `n` bytes; false on EOF or error.
async fn fill_to(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    while buf.len() < n {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    true
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
async fn take_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Some(line);
        }
        let need = buf.len() + 1;
        if !fill_to(stream, buf, need).await {
            return None;
        }
    }
}

async fn serve_upstream(mut stream: TcpStream, n: usize, seen: &Mutex<Vec<UpReq>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let need = buf.len() + 1;
            if !fill_to(&mut stream, &mut buf, need).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_string();
        let target = request_line.next().unwrap_or("").to_string();
        let path = target.split('?').next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let Some(line) = take_line(&mut stream, &mut buf).await else {
                    return;
                };
                let line = String::from_utf8_lossy(&line).to_string();
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16).unwrap();
                if size == 0 {
                    // Trailer fields up to the blank line.
                    loop {
                        match take_line(&mut stream, &mut buf).await {
                            None => return,
                            Some(l) if l.is_empty() => break,
                            Some(_) => {}
                        }
                    }
                    break;
                }
                if !fill_to(&mut stream, &mut buf, size + 2).await {
                    return;
                }
                body.extend_from_slice(&buf[..size]);
                assert_eq!(
                    &buf[size..size + 2],
                    b"\r\n",
                    "chunk data not ended by CRLF"
                );
                buf.drain(..size + 2);
            }
        } else if let Some(len) = header("content-length") {
            let len: usize = len.parse().unwrap();
            if !fill_to(&mut stream, &mut buf, len).await {
                return;
            }
            body = buf.drain(..len).collect();
        }
        seen.lock().unwrap().push(UpReq {
            conn: n,
            method: method.clone(),
            path: path.clone(),
            headers,
            body: body.clone(),
        });

        let kind = path.split('/').nth(2).unwrap_or("");
        let ok = |extra: &str, body: &[u8]| {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nX-Conn: {n}\r\n{extra}content-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(body);
            }
            out
        };
        let mut close = false;
        let written = match kind {
            "chunked" => {
                // Head and part of the body, then the rest: the gateway has
                // to keep following the chunks across reads.
                let mut first =
                    format!("HTTP/1.1 200 OK\r\nX-Conn: {n}\r\ntransfer-encoding: chunked\r\n\r\n")
                        .into_bytes();
                let cut = 12;
                first.extend_from_slice(&CHUNKED_BODY[..cut]);
                let ok = stream.write_all(&first).await.is_ok();
                tokio::time::sleep(Duration::from_millis(20)).await;
                ok && stream.write_all(&CHUNKED_BODY[cut..]).await.is_ok()
            }
            "echo" => stream.write_all(&ok("", &body)).await.is_ok(),
            "head" => stream.write_all(&ok("", b"hello world")).await.is_ok(),
            "until-close" => {
                close = true;
                let first = format!("HTTP/1.1 200 OK\r\nX-Conn: {n}\r\n\r\npart one, ");
                let ok = stream.write_all(first.as_bytes()).await.is_ok();
                tokio::time::sleep(Duration::from_millis(20)).await;
                ok && stream.write_all(b"part two").await.is_ok()
            }
            "hangup" => {
                close = true;
                let body = format!("conn {n}");
                stream.write_all(&ok("", body.as_bytes())).await.is_ok()
            }
            "hints" => {
                let mut out =
                    b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n".to_vec();
                out.extend_from_slice(&ok("", b"after hints"));
                stream.write_all(&out).await.is_ok()
            }
            "switch" => {
                close = true;
                let out = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                           upgrade: something\r\n\r\nraw bytes";
                stream.write_all(out.as_bytes()).await.is_ok()
            }
            "te-split" => {
                // One transfer coding per field line: the framing is
                // decided by the last, chunked.
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nX-Conn: {n}\r\ntransfer-encoding: gzip\r\n\
                     transfer-encoding: chunked\r\n\r\n"
                )
                .into_bytes();
                out.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
                stream.write_all(&out).await.is_ok()
            }
            "stray" => {
                // A whole response, then (once it has surely been read) an
                // unsolicited one, and the connection closes.
                let body = format!("conn {n}");
                let ok = stream.write_all(&ok("", body.as_bytes())).await.is_ok();
                tokio::time::sleep(Duration::from_millis(50)).await;
                close = true;
                ok && stream
                    .write_all(
                        b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
                          content-length: 0\r\n\r\n",
                    )
                    .await
                    .is_ok()
            }
            "dated" => {
                let extra = format!("date: {UPSTREAM_DATE}\r\n");
                stream.write_all(&ok(&extra, b"dated")).await.is_ok()
            }
            "cookies" => {
                let extra =
                    "set-cookie: a=1\r\nset-cookie: b=2\r\nx-multi: one\r\nx-multi: two\r\n";
                stream.write_all(&ok(extra, b"cookies")).await.is_ok()
            }
            "garbage" => {
                close = true;
                stream
                    .write_all(b"THIS IS NOT HTTP\r\nx: y\r\n\r\n")
                    .await
                    .is_ok()
            }
            _ => {
                let body = format!("{method} {path} conn {n}");
                stream.write_all(&ok("", body.as_bytes())).await.is_ok()
            }
        };
        if !written || close {
            return;
        }
    }
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

/// A gateway with extra `[server]` settings (which the harness config
/// cannot take: it already has a `[server]` table), routing `/up` to the
/// scripted upstream. Returns the public address; the rest must outlive
/// the test.
async fn gateway_with_server(
    server: &str,
    up: &Upstream,
) -> (SocketAddr, tokengate::server::Running, tempfile::TempDir) {
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
{routes}
"#,
        db = dir.path().join("tg.db").display(),
        routes = routes(up),
    );
    let config =
        tokengate::config::Config::from_toml(std::path::Path::new("test.toml"), &text).unwrap();
    let store = tokengate::store::open(&config.store.url, 2, config.store.timeout)
        .await
        .unwrap();
    let gateway = tokengate::gateway::Gateway::new(
        config,
        store,
        tokengate::clock::Clock::manual(1_800_000_000),
    );
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = tokengate::server::start_on(gateway, public, admin)
        .await
        .unwrap();
    (running.public_addr, running, dir)
}

// ---------------------------------------------------------------------------
// A raw client.

/// A response as the client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// The head, as sent (status line and fields).
    head: String,
    /// Header fields, names lowercased, in order.
    headers: Vec<(String, String)>,
    /// The body as framed on the wire (chunk framing included).
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }

    fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    fn conn(&self) -> usize {
        self.header("x-conn")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no x-conn on:\n{}", self.head))
    }

    fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// Whether hyper (not the fast path) wrote this response (see the
    /// module docs).
    fn served_by_hyper(&self) -> bool {
        match (
            self.head.contains("\r\nx-conn:"),
            self.head.contains("\r\nX-Conn:"),
        ) {
            (true, false) => true,
            (false, true) => false,
            _ => panic!(
                "no single upstream marker to tell the paths by:\n{}",
                self.head
            ),
        }
    }

    fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Where a chunked body that starts `buf` ends, if it is all there.
fn chunked_end(buf: &[u8]) -> Option<usize> {
    let line_end = |from: usize| {
        buf[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
    };
    let mut p = 0;
    loop {
        let end = line_end(p)?;
        let line = String::from_utf8_lossy(&buf[p..end]).to_string();
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        p = end + 2;
        if size == 0 {
            loop {
                let end = line_end(p)?;
                let blank = end == p;
                p = end + 2;
                if blank {
                    return Some(p);
                }
            }
        }
        if buf.len() < p + size + 2 {
            return None;
        }
        assert_eq!(
            &buf[p + size..p + size + 2],
            b"\r\n",
            "chunk not ended by CRLF"
        );
        p += size + 2;
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at EOF (or a reset).
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the gateway went silent");
        match read {
            Ok(0) | Err(_) => false,
            Ok(k) => {
                self.buf.extend_from_slice(&chunk[..k]);
                true
            }
        }
    }

    /// Reads one response; `head_request` says it answers a HEAD.
    /// Sends a GET for `path` and reads its response.
    async fn get(&mut self, path: &str) -> Resp {
        self.send(get(path).as_bytes()).await;
        self.response(false).await
    }

    async fn response(&mut self, head_request: bool) -> Resp {
        let mut resp = self.head().await;
        self.body(&mut resp, head_request).await;
        resp
    }

    /// Reads a response head.
    async fn head(&mut self) -> Resp {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.more().await,
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        assert!(status_line.starts_with("HTTP/1.1 "), "{head}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            head,
            headers,
            body: Vec::new(),
        }
    }

    /// Reads the body of `resp` as its head frames it (RFC 9112 6.3).
    async fn body(&mut self, resp: &mut Resp, head_request: bool) {
        let status = resp.status;
        let no_body = head_request || status < 200 || status == 204 || status == 304;
        if no_body {
            return;
        }
        let codings = resp.values("transfer-encoding").join(",");
        if !codings.is_empty() {
            let last = codings.rsplit(',').next().unwrap_or("").trim();
            if last.eq_ignore_ascii_case("chunked") {
                let end = loop {
                    if let Some(end) = chunked_end(&self.buf) {
                        break end;
                    }
                    assert!(self.more().await, "closed mid chunked body");
                };
                resp.body = self.buf.drain(..end).collect();
                return;
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.more().await, "closed mid body");
            }
            resp.body = self.buf.drain(..len).collect();
            return;
        }
        while self.more().await {}
        resp.body = std::mem::take(&mut self.buf);
    }

    /// Waits (bounded) for the gateway to close the connection; panics if
    /// it sends anything more first.
    async fn expect_eof(&mut self) {
        while self.more().await {}
        assert!(
            self.buf.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
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
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
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
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    tokio::time::sleep(Duration::from_millis(50)).await;
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
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
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
    let up = upstream().await;
    let g = gateway(&up).await;
    let mut c = Client::connect(g.addr).await;

    // GET: the stale connection is found out by sending, and the request
    // is sent again on a new connection.
    let r = c.get("/up/hangup/1").await;
    assert_eq!((r.status, r.conn()), (200, 1));
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
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
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
    let up = upstream().await;
    let (addr, _running, _dir) = gateway_with_server(
        "header_read_timeout_seconds = 1\nidle_timeout_seconds = 1",
        &up,
    )
    .await;

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
    a.expect("the stalled connection was not closed within 5 s");
    b.expect("the idle connection was not closed within 5 s");
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
    let (hyper_addr, _r1, _d1) =
        gateway_with_server("header_read_timeout_seconds = 1\nfast_path = false", &up).await;
    let (fast_addr, _r2, _d2) = gateway_with_server("header_read_timeout_seconds = 1", &up).await;
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
    let (addr, _running, _dir) = gateway_with_server("fast_path = false", &up).await;
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
    let (addr, _running2, _dir2) = gateway_with_server("", &up).await;
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
    // fast path must not refuse what hyper would serve.
    let up = upstream().await;
    let slow_post = |addr: SocketAddr, path: &'static str| async move {
        let mut c = Client::connect(addr).await;
        c.send(
            format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nhello")
                .as_bytes(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2000)).await;
        // The write may fail if the gateway has already closed.
        let _ = c.stream.write_all(b"world").await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, async {
            loop {
                let mut chunk = [0u8; 4096];
                match c.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got.extend_from_slice(&chunk[..k]),
                }
                if got.ends_with(b"helloworld") {
                    break;
                }
            }
        })
        .await;
        String::from_utf8_lossy(&got).to_string()
    };
    let (hyper_addr, _r1, _d1) =
        gateway_with_server("header_read_timeout_seconds = 1\nfast_path = false", &up).await;
    let (fast_addr, _r2, _d2) = gateway_with_server("header_read_timeout_seconds = 1", &up).await;
    let (via_hyper, via_fast) = tokio::join!(
        slow_post(hyper_addr, "/up/echo/slow-hyper"),
        slow_post(fast_addr, "/up/echo/slow-fast"),
    );
    assert!(
        via_hyper.starts_with("HTTP/1.1 200") && via_hyper.ends_with("helloworld"),
        "control (hyper): {via_hyper:?}"
    );
    assert!(
        via_fast.starts_with("HTTP/1.1 200") && via_fast.ends_with("helloworld"),
        "fast path: {via_fast:?}"
    );
    assert_eq!(up.requests("/up/echo/slow-fast")[0].body, b"helloworld");
}

// ---------------------------------------------------------------------------
// Found by review: each of these got past the first version of the fast path.

/// Sends `req` on a new connection and reads until the gateway closes or
/// goes quiet.
async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

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
    let r = exchange(g.addr, req.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The upstream read one request, whose body is the would-be request.
    assert!(r.ends_with(inner), "the body came back whole: {r}");
    let seen = g.upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, http::Method::POST);
    assert_eq!(
        seen[0].headers["content-length"],
        inner.len().to_string().as_str()
    );
}

#[tokio::test]
async fn a_fragment_in_the_target_cannot_change_the_route() {
    let g = TestGateway::spawn().await;
    let t = g.token(&[]).await;
    let plain = exchange(
        g.addr,
        format!("GET /api/admin HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 403"), "{plain}");
    for target in ["/api/admin#x", "http://g/api/admin#x"] {
        let r = exchange(
            g.addr,
            format!("GET {target} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(!r.starts_with("HTTP/1.1 200"), "{target}: {r}");
    }
    assert_eq!(g.upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_response_with_many_fields_passes_as_through_hyper() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b).await;
                let mut r = String::from("HTTP/1.1 200 OK\r\n");
                for i in 0..90 {
                    r.push_str(&format!("x-h{i}: v\r\n"));
                }
                r.push_str("content-length: 2\r\n\r\nok");
                let _ = s.write_all(r.as_bytes()).await;
                let _ = s.read(&mut b).await;
            });
        }
    });
    let g = TestGateway::spawn_with(&format!(
        "[[upstreams]]\nname = \"many\"\nurl = \"http://{up}\"\n\
         [[routes]]\npath = \"/many\"\nupstream = \"many\"\nauth = \"none\"\n"
    ))
    .await;
    let r = exchange(
        g.addr,
        b"GET /many/x HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("x-h89: v\r\n") && r.ends_with("ok"), "{r}");
}

#[tokio::test]
async fn a_request_handed_to_hyper_during_shutdown_is_still_answered() {
    let mut g = TestGateway::spawn().await;
    let t = g.token(&["*"]).await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    // Half a head: the connection is mid-request, not idle, when shutdown
    // begins.
    s.write_all(b"POST /api/x/echo HTTP/1.1\r\nHost: g\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = tokio::spawn(g.running.take().unwrap().shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!shutdown.is_finished(), "shutdown waits for the request");
    // The rest of it makes a chunked upload, which goes to hyper.
    s.write_all(
        format!(
            "Authorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("the gateway closes after answering")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("hello"), "{got}");
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown completes once the request is answered")
        .unwrap();
}

#[tokio::test]
async fn every_response_carries_one_date_on_both_paths() {
    let up = upstream().await;
    let g = gateway(&up).await;
    let (hyper_only, _running, _dir) = gateway_with_server("fast_path = false", &up).await;
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
