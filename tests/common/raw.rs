//! Raw HTTP/1.1 on both sides of the gateway, for tests that need every
//! byte: a scripted upstream ([`Upstream`]) and a client ([`Client`]).
//!
//! The upstream answers by the second path segment (`/up/<kind>/...`,
//! `/raw/<kind>`; see [`Upstream`] for the kinds), counts and records its
//! connections and the requests it read (head and de-chunked body), and
//! marks every response with the connection that carried it (`X-Conn: N`,
//! counted from 1, written in that letter case). [`Upstream::builder`]
//! adds kinds of a test's own ([`UpstreamBuilder::on`]) or makes an
//! upstream that accepts and never answers ([`UpstreamBuilder::mute`]).
//!
//! The client reads exactly one response at a time as its head frames it
//! (RFC 9112 6.3), never "until the gateway goes quiet", and every read is
//! bounded by [`WAIT`], so a slow gateway makes a test slow, never pass.
//!
//! Which path served a response: the fast path passes field names on byte
//! for byte, while hyper keeps them in a `HeaderMap` and writes them in
//! lower case, so a response carrying `x-conn` came through hyper
//! ([`Resp::served_by_hyper`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long any single wait may take before the test fails: a bound for
/// hangs, never a measure of speed.
pub const WAIT: Duration = Duration::from_secs(20);

/// The chunked body `chunked` sends: chunk extensions (one with a quoted
/// value) and a trailer field, to be passed through byte for byte.
pub const CHUNKED_BODY: &[u8] = b"4;ext=1\r\nWiki\r\n5;a=b;c=\"d e\"\r\npedia\r\n\
E\r\n in\r\n\r\nchunks.\r\n0\r\nx-checksum: abc\r\nx-other: 2\r\n\r\n";

/// The `Date` the upstream sends for `dated`.
pub const UPSTREAM_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// Size of the `big` kind's body: far more than any socket buffer holds,
/// so a client that stops reading leaves the upstream mid-body.
pub const BIG: usize = 8 << 20;

// ---------------------------------------------------------------------------
// The scripted upstream.

/// A request as the scripted upstream read it.
#[derive(Clone, Debug)]
pub struct UpReq {
    /// Which upstream connection carried it (from 1).
    pub conn: usize,
    pub method: String,
    /// The request target as sent, query included.
    pub target: String,
    /// The request target without its query.
    pub path: String,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
}

impl UpReq {
    /// The values of the fields called `name` (lower case), in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    /// The second path segment, which picks the answer.
    pub fn kind(&self) -> &str {
        self.path.split('/').nth(2).unwrap_or("")
    }
}

/// The values of the fields called `name` (lower case), in order.
pub fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// One step of a scripted answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Wait this long.
    Pause(Duration),
    /// Wait until the gateway has read every byte written so far, so that
    /// what follows reaches it in a read of its own.
    Drained,
    /// Wait until the test calls [`Upstream::open_gate`].
    Gate,
    /// Close the connection.
    Close,
}

/// A test's own answer for a kind: the steps for a request.
pub type Script = Arc<dyn Fn(&UpReq) -> Vec<Step> + Send + Sync>;

/// A `200 OK` from connection `conn` with `extra` fields (each ending in
/// CRLF) and `body` (left out for a `HEAD`), framed by `content-length`.
pub fn ok(req: &UpReq, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nX-Conn: {}\r\n{extra}content-length: {}\r\n\r\n",
        req.conn,
        body.len()
    )
    .into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body);
    }
    out
}

/// The scripted upstream. Kinds (the second path segment):
/// - `chunked`: 200 with [`CHUNKED_BODY`], written in two parts, the
///   second once the gateway has read the first;
/// - `echo`: 200 with the request body (`Content-Length`);
/// - `head`: 200 with `Content-Length: 11` (and the body unless HEAD);
/// - `until-close`: 200 with neither length nor chunking, then closes;
/// - `hangup`: a keep-alive 200 (`conn N`), then closes anyway (an
///   upstream idle timeout);
/// - `close`: 200 with `Connection: close`, then closes;
/// - `hints`: a `103 Early Hints`, then a 200;
/// - `switch`: a `101 Switching Protocols` nobody asked for, then closes;
/// - `garbage`: a status line that is not HTTP, then closes;
/// - `te-split`: chunked, with `Transfer-Encoding` over two field lines
///   (`gzip`, then `chunked`);
/// - `stray`: a 200, then an unsolicited `408` and a close (as some
///   servers do at their idle timeout);
/// - `cookies`: a 200 with repeated fields (`set-cookie`, `x-multi`);
/// - `dated`: a 200 with `Date: `[`UPSTREAM_DATE`];
/// - `trailers`: 200 chunked `conn N`, with a trailer field;
/// - `empty`: 204;
/// - `big`: 200 with [`BIG`] bytes of `x`;
/// - `many-fields`: 200 with 90 fields `x-h0` .. `x-h89`;
/// - `gated`: the default answer once [`Upstream::open_gate`] is called;
/// - anything else: 200 `"<METHOD> <path> conn <n>"`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections closed so far (recorded after the socket is dropped).
    pub closed: Arc<Mutex<Vec<usize>>>,
    /// Every request read, in order.
    pub seen: Arc<Mutex<Vec<UpReq>>>,
    gate: Arc<watch::Sender<bool>>,
}

/// Builds an [`Upstream`] with kinds of a test's own.
#[derive(Default)]
pub struct UpstreamBuilder {
    scripts: Vec<(String, Script)>,
    mute: bool,
}

impl UpstreamBuilder {
    /// Answers requests of `kind` with the steps `script` gives (before the
    /// built-in kinds, so it can replace one).
    pub fn on(
        mut self,
        kind: &str,
        script: impl Fn(&UpReq) -> Vec<Step> + Send + Sync + 'static,
    ) -> Self {
        self.scripts.push((kind.to_string(), Arc::new(script)));
        self
    }

    /// Accepts connections and holds them open without reading or writing
    /// a byte (a TLS handshake or a request is never answered).
    pub fn mute(mut self) -> Self {
        self.mute = true;
        self
    }

    pub async fn spawn(self) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream {
            addr,
            accepted: Arc::default(),
            closed: Arc::default(),
            seen: Arc::default(),
            gate: Arc::new(watch::channel(false).0),
        };
        let scripts = Arc::new(self.scripts);
        let mute = self.mute;
        let u = up.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let n = u.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                if mute {
                    held.push(stream);
                    continue;
                }
                let (u, scripts) = (u.clone(), Arc::clone(&scripts));
                tokio::spawn(async move {
                    serve(stream, n, &u, &scripts).await;
                    // The stream is dropped (closed) before this is recorded.
                    u.closed.lock().unwrap().push(n);
                });
            }
        });
        up
    }
}

impl Upstream {
    /// A scripted upstream with the built-in kinds only.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder::default()
    }

    /// The requests the upstream read for `path` (without query).
    pub fn requests(&self, path: &str) -> Vec<UpReq> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests for `path` the upstream read.
    pub fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }

    /// Every request read, in order.
    pub fn all(&self) -> Vec<UpReq> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request read.
    pub fn last(&self) -> UpReq {
        self.all()
            .pop()
            .expect("the scripted upstream read no request")
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed so far.
    pub fn closed(&self) -> Vec<usize> {
        self.closed.lock().unwrap().clone()
    }

    /// Waits (bounded) until connection `conn` has closed.
    pub async fn wait_closed(&self, conn: usize) {
        super::TestGateway::eventually(&format!("upstream connection {conn} closed"), || async {
            self.closed.lock().unwrap().contains(&conn)
        })
        .await;
    }

    /// Lets every request held at a [`Step::Gate`] (the `gated` kind) be
    /// answered, now and from now on.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
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

/// Reads one request (head and body); `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<UpReq> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let need = buf.len() + 1;
        if !fill_to(stream, buf, need).await {
            return None;
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
    let header = |name: &str| values(&headers, name).first().map(|v| v.to_string());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let line = take_line(stream, buf).await?;
            let line = String::from_utf8_lossy(&line).to_string();
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                // Trailer fields up to the blank line.
                loop {
                    if take_line(stream, buf).await?.is_empty() {
                        break;
                    }
                }
                break;
            }
            if !fill_to(stream, buf, size + 2).await {
                return None;
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
        if !fill_to(stream, buf, len).await {
            return None;
        }
        body = buf.drain(..len).collect();
    }
    Some(UpReq {
        conn: n,
        method,
        target,
        path,
        headers,
        body,
    })
}

/// The built-in answer for a request.
fn builtin(req: &UpReq) -> Vec<Step> {
    use Step::{Close, Drained, Gate, Write};
    let n = req.conn;
    let default_body = || format!("{} {} conn {n}", req.method, req.path).into_bytes();
    match req.kind() {
        "chunked" => {
            // Head and part of the body, then the rest: the gateway has to
            // keep following the chunks across reads.
            let mut first =
                format!("HTTP/1.1 200 OK\r\nX-Conn: {n}\r\ntransfer-encoding: chunked\r\n\r\n")
                    .into_bytes();
            let cut = 12;
            first.extend_from_slice(&CHUNKED_BODY[..cut]);
            vec![Write(first), Drained, Write(CHUNKED_BODY[cut..].to_vec())]
        }
        "echo" => vec![Write(ok(req, "", &req.body))],
        "head" => vec![Write(ok(req, "", b"hello world"))],
        "until-close" => vec![
            Write(format!("HTTP/1.1 200 OK\r\nX-Conn: {n}\r\n\r\npart one, ").into_bytes()),
            Drained,
            Write(b"part two".to_vec()),
            Close,
        ],
        "hangup" => vec![Write(ok(req, "", format!("conn {n}").as_bytes())), Close],
        "close" => vec![
            Write(ok(req, "connection: close\r\n", &default_body())),
            Close,
        ],
        "hints" => {
            let mut out =
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n".to_vec();
            out.extend_from_slice(&ok(req, "", b"after hints"));
            vec![Write(out)]
        }
        "switch" => vec![
            Write(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                  upgrade: something\r\n\r\nraw bytes"
                    .to_vec(),
            ),
            Close,
        ],
        "te-split" => {
            // One transfer coding per field line: the framing is decided
            // by the last, chunked.
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nX-Conn: {n}\r\ntransfer-encoding: gzip\r\n\
                 transfer-encoding: chunked\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
            vec![Write(out)]
        }
        "stray" => vec![
            // A whole response, then (once it has been read) an
            // unsolicited one, and the connection closes.
            Write(ok(req, "", format!("conn {n}").as_bytes())),
            Drained,
            Write(
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\
                  content-length: 0\r\n\r\n"
                    .to_vec(),
            ),
            Close,
        ],
        "dated" => vec![Write(ok(
            req,
            &format!("date: {UPSTREAM_DATE}\r\n"),
            b"dated",
        ))],
        "cookies" => vec![Write(ok(
            req,
            "set-cookie: a=1\r\nset-cookie: b=2\r\nx-multi: one\r\nx-multi: two\r\n",
            b"cookies",
        ))],
        "garbage" => vec![Write(b"THIS IS NOT HTTP\r\nx: y\r\n\r\n".to_vec()), Close],
        "trailers" => {
            let body = format!("conn {n}");
            let mut out =
                format!("HTTP/1.1 200 OK\r\nX-Conn: {n}\r\ntransfer-encoding: chunked\r\n\r\n");
            if req.method != "HEAD" {
                out.push_str(&format!(
                    "{:x}\r\n{body}\r\n0\r\nx-checksum: 1\r\n\r\n",
                    body.len()
                ));
            }
            vec![Write(out.into_bytes())]
        }
        "empty" => vec![Write(
            format!("HTTP/1.1 204 No Content\r\nX-Conn: {n}\r\n\r\n").into_bytes(),
        )],
        "big" => vec![Write(ok(req, "", &vec![b'x'; BIG]))],
        "many-fields" => {
            let extra: String = (0..90).map(|i| format!("x-h{i}: v\r\n")).collect();
            vec![Write(ok(req, &extra, b"ok"))]
        }
        "gated" => vec![Gate, Write(ok(req, "", &default_body()))],
        _ => vec![Write(ok(req, "", &default_body()))],
    }
}

async fn serve(mut stream: TcpStream, n: usize, up: &Upstream, scripts: &[(String, Script)]) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf, n).await {
        up.seen.lock().unwrap().push(req.clone());
        let steps = match scripts.iter().find(|(k, _)| k == req.kind()) {
            Some((_, script)) => script(&req),
            None => builtin(&req),
        };
        for step in steps {
            match step {
                Step::Write(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Drained => read_by_peer(&stream).await,
                Step::Gate => {
                    let mut open = up.gate.subscribe();
                    let _ = open.wait_for(|o| *o).await;
                }
                Step::Close => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The raw client.

/// A response as the client read it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The head, as sent (status line and fields).
    pub head: String,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as framed on the wire (chunk framing included).
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }

    pub fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    /// The scripted upstream connection that carried it (`X-Conn`).
    pub fn conn(&self) -> usize {
        self.header("x-conn")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no x-conn on:\n{}", self.head))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}):\n{}{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The denial code of a gateway JSON error.
    pub fn code(&self) -> String {
        let v = self.json();
        assert_eq!(v["error"], true, "not an error body: {v}");
        v["code"].as_str().unwrap().to_string()
    }

    /// Whether hyper (not the fast path) wrote this response: the
    /// scripted upstream's `X-Conn` arrives lower-cased through hyper
    /// (see the module docs).
    pub fn served_by_hyper(&self) -> bool {
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

    pub fn says_close(&self) -> bool {
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

/// One raw client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Sends `req` on a new connection and reads one whole response (for a
    /// request that is not `HEAD`).
    pub async fn exchange(addr: SocketAddr, req: &[u8]) -> Resp {
        let mut c = Self::connect(addr).await;
        c.send(req).await;
        c.response(false).await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at EOF (or a reset). Panics after [`WAIT`] of
    /// silence.
    pub async fn more(&mut self) -> bool {
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

    /// Sends a GET for `path` and reads its response.
    pub async fn get(&mut self, path: &str) -> Resp {
        self.send(get(path).as_bytes()).await;
        self.response(false).await
    }

    /// Reads one response; `head_request` says it answers a HEAD.
    pub async fn response(&mut self, head_request: bool) -> Resp {
        let mut resp = self.head().await;
        self.body(&mut resp, head_request).await;
        resp
    }

    /// Reads a response head.
    pub async fn head(&mut self) -> Resp {
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
    pub async fn body(&mut self, resp: &mut Resp, head_request: bool) {
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

    /// Waits (bounded) until the gateway has read every byte sent so far on
    /// this connection: none is left in flight or in its socket's receive
    /// queue. So a request sent in two writes is certain to reach the
    /// gateway in two reads, however busy the machine.
    pub async fn wait_until_read(&self) {
        read_by_peer(&self.stream).await;
    }

    /// Waits (bounded) for the gateway to close the connection; panics if
    /// it sends anything more first.
    pub async fn expect_eof(&mut self) {
        while self.more().await {}
        assert!(
            self.buf.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// Waits (bounded by [`WAIT`]) until the other end of `stream` has read
/// every byte written to it so far. Linux only (it reads `/proc/net/tcp`);
/// elsewhere it waits 200 ms and hopes.
pub async fn read_by_peer(stream: &TcpStream) {
    let (local, peer) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match unread(local, peer) {
            Some(0) => return,
            Some(_) => {}
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other end never read what was sent"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Bytes sent from `local` to `peer` (both IPv4 loopback sockets of this
/// machine) that `peer`'s owner has not read yet: unacknowledged in
/// `local`'s send queue plus waiting in `peer`'s receive queue, from
/// `/proc/net/tcp`. `None` where that file cannot be read.
fn unread(local: SocketAddr, peer: SocketAddr) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v.ip().octets()),
            v.port()
        ),
        SocketAddr::V6(_) => panic!("IPv4 sockets only"),
    };
    let queues = |from: SocketAddr, to: SocketAddr| {
        let (from, to) = (hex(from), hex(to));
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 4 && f[1] == from && f[2] == to {
                let (tx, rx) = f[4].split_once(':')?;
                Some((
                    usize::from_str_radix(tx, 16).unwrap(),
                    usize::from_str_radix(rx, 16).unwrap(),
                ))
            } else {
                None
            }
        })
    };
    let (sending, _) = queues(local, peer).expect("our socket is not in /proc/net/tcp");
    let (_, waiting) = queues(peer, local).expect("the gateway's socket is not in /proc/net/tcp");
    Some(sending + waiting)
}

/// `GET path` with a `Host` and nothing else.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n")
}

/// `POST path` with a `Content-Length` body.
pub fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A request head with `Host: gw`, the fields as written (name and value,
/// letter case kept) and, when `body` is not empty, its `Content-Length`.
pub fn request(method: &str, target: &str, fields: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: gw\r\n");
    for (k, v) in fields {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}
