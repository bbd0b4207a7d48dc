//! The fast path: plain HTTP/1.1 requests served without hyper.
//!
//! Through hyper a proxied request is parsed into a `Request`, handed to a
//! service future, written out again by hyper's client dispatcher, and its
//! response comes back the same way, each body chunk through a channel:
//! about three quarters of the gateway's CPU per request, measured. Here a
//! connection on the public listener is one loop on one task, the shape
//! nginx has: read a request head, run the same policy steps the hyper path
//! runs ([`Snapshot::route`](crate::gateway::Snapshot::route), [`Gateway::admit`], the same header rewrite),
//! write the head to an idle upstream connection, then pass the response
//! through, rewriting its head and copying its body as framed. The
//! connection is a TCP socket or a TLS stream over one ([`ClientStream`]):
//! HTTP/1.1 over TLS takes this same path, so TLS costs the crypto and
//! nothing else.
//!
//! # What it takes, and what it hands over
//!
//! It takes HTTP/1.1 requests in origin or absolute form with no body or a
//! `Content-Length` body of at most [`wire::MAX_BUFFERED_BODY`], no
//! `Transfer-Encoding`, `Expect` or `Upgrade`, routed to a plain `http`
//! HTTP/1.1 upstream. Anything else (h2, HTTP/1.0, chunked or large
//! uploads, WebSocket, the seed token endpoints, `https` and h2 upstreams,
//! a head `httparse` refuses) is decided *before any side effect*: the
//! connection, with every byte read so far, goes to hyper for the rest of
//! its life ([`Ended::Handoff`]), which serves it exactly as it would have
//! without a fast path. So the two paths never disagree on a request; they
//! differ only in who parses it. A forward-auth request
//! (`crate::forward_auth`) is answered here whatever its route's
//! upstream: nothing is forwarded.
//!
//! # Promises it keeps
//!
//! - The same request identity ([`Gateway::identify`]: request id,
//!   `traceparent`) and the same record: each request answered here ends
//!   in one [`Exchange`] handed to [`crate::signals::Signals::finish`]
//!   once its answer is written (metrics and the access line, as on
//!   hyper's path); one handed to hyper is recorded there alone.
//! - The same policy, in the same order, with the same refusals
//!   (`Denial::parts`) and the same header rewrite
//!   ([`strip_request`], the rule book's, into a byte sink where hyper's
//!   path has a map; a property test holds the two sinks equal; the byte
//!   form of [`crate::rules::strip_response`] for responses).
//! - The deadlines `crate::deadline` holds hyper's connections to: the
//!   first head within `server.header_read_timeout_seconds` of the
//!   accept, at most `server.idle_timeout_seconds` idle between requests,
//!   a later head within the header timeout of its first byte. A body
//!   still arriving when that time is up goes to hyper with the bytes read
//!   so far ([`Ended::Handoff`]; no policy has run yet), which streams it
//!   upstream under the upstream's `response_timeout_ms`, as any body.
//!   And a write to the client that has waited the idle timeout for it to
//!   read ends the connection, and the exchange with it (the upstream
//!   connection closed).
//! - A response head within the upstream's `response_timeout_ms` (504),
//!   and no gap longer than that in its body; a client that leaves
//!   mid-body ends the exchange at once. Either way the upstream
//!   connection is closed, never reused.
//! - Every response it writes is dated, as through hyper's server: the
//!   upstream's `Date` fields pass as they came, and only when none reaches
//!   the client (none sent, or one the upstream listed in `Connection`)
//!   does the gateway add one from its clock (RFC 9110 6.6.1); its
//!   refusals are dated too.
//! - Upstream connections reused only after a response read to its end
//!   with nothing left over and no `Connection: close`, and only if, when
//!   taken from the pool, the upstream has neither closed nor written to
//!   them. One that still closes before any byte of the response comes
//!   back had gone stale in between: a safe-method request (`GET`, `HEAD`,
//!   `OPTIONS`, `TRACE`) is sent once more on a new connection (RFC 9110
//!   9.2.2); any other fails (502), never sent twice.
//! - The upstream reads exactly the body the gateway read: its
//!   `Content-Length` is written by the gateway, never copied (a
//!   `Connection: content-length` would otherwise strip it and let the
//!   body pass for a second, unauthenticated request).
//! - A target with a fragment (`#`), or one `http` would refuse, goes to
//!   hyper: routing must see the path the upstream will see.
//! - Response heads of up to 100 fields pass, as through hyper's client.
//!   A chunked body passes through as it came, so its framing is checked
//!   strictly (hex sizes, CRLF only, no control bytes, well-formed trailer
//!   fields): a bare LF that a lenient client took for a line end could
//!   otherwise smuggle a response of the upstream's making onto the
//!   client's connection. A body that fails the check closes both
//!   connections.
//! - At shutdown an idle connection closes at once; one mid-request
//!   finishes that request, answered with `Connection: close`; one handed
//!   to hyper then is served its request and closed. Closing, the fast
//!   path lingers (FIN, then reads and drops for up to two seconds), so
//!   requests pipelined behind the last answer do not provoke a reset
//!   that could cut its end off; it closes at once only when the client
//!   said `Connection: close` (it sends no more requests) and nothing it
//!   sent is unread, as far as the runtime has seen, as nginx does (over
//!   TLS after its `close_notify`, not waiting for the client's, as
//!   nginx's `SSL_shutdown`). What the client sends after that check is
//!   answered with a reset: its own `close_notify`, sent once it has read
//!   the answer (harmless), or bytes it should not have sent after its
//!   `Connection: close`, which may then cost it the answer's end, as from
//!   nginx; TLS bytes rustls holds short of a whole record are not seen.
//!   The last answer's writes say so first ([`ClientStream::last_writes`]):
//!   the client socket holds their tail back, and the close (or the
//!   lingering close's FIN) sends it with the FIN in one segment.

pub mod wire;

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::cache::{AuthEntry, MemoUse};
use crate::error::Denial;
use crate::fields::X_REQUEST_ID;
use crate::forward_auth;
use crate::gateway::{Admission, Gateway};
use crate::metrics::RouteSeries;
use crate::ratelimit::LimitFields;
use crate::route::{normalize_path, PathError};
use crate::rules::{
    caller_headers, request_headers, strip_request, upstream_target_parts, ForwardContext,
    GatewayHeader, HeaderNames, Peer,
};
use crate::signals::Exchange;
use crate::upstream::raw::{RawConn, RawPool, UPSTREAM_READ_BUF};
use crate::upstream::{Failure, UpstreamConfig};
use wire::{Chunked, Framing, Parsed, RequestHead, ResponseHead};

/// Read buffer size of a client connection.
const CLIENT_READ_BUF: usize = 8 * 1024;

/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// How much of it, at most.
const LINGER_BYTES: usize = 256 * 1024;

/// How much a client may send ahead (pipelined requests) while a response
/// body is passed to it; beyond it, the client is not read from until the
/// response is done.
const MAX_PIPELINED: usize = 64 * 1024;

/// Longest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How a fast-path connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Closed, by either side or at shutdown.
    Closed,
    /// To be served by hyper from here on, starting with these bytes
    /// (already read from the socket, not yet answered).
    Handoff(Bytes),
}

/// What to do after a request.
enum Next {
    KeepAlive,
    Close,
    Handoff,
    /// The answer was cut short (the upstream failed or stalled
    /// mid-body), or could not be written (the client is gone, or read
    /// nothing of it in time): the connection ends without a clean close
    /// (over TLS no `close_notify`, which would say the body ended whole),
    /// so that the client can tell, whatever the body's framing.
    Abort,
}

/// What a client connection is: a TCP socket, or a TLS stream over one
/// (`crate::tls`). The fast path is the same code over either, so TLS
/// costs the crypto and nothing else.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether the client has sent nothing that is not yet read, as far as
    /// the runtime has seen (no read readiness since a read last came up
    /// short): nothing a close could answer with a reset. `false` when it
    /// cannot tell, and then a closing connection lingers.
    fn nothing_unread(&self) -> bool {
        false
    }

    /// Whether a close owes the client a word first (TLS: `close_notify`).
    const OWES_CLOSE_NOTIFY: bool = false;

    /// Says that the writes from here on are the connection's last: its
    /// close follows them at once, and may carry their tail (a plain TCP
    /// socket sends the last segment with the FIN). Nothing by default.
    fn last_writes(&mut self) {}
}

impl ClientStream for tokio::net::TcpStream {
    fn nothing_unread(&self) -> bool {
        // Readiness as the reactor last saw it: no syscall. The waker is
        // never woken; the connection is closing.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        self.poll_read_ready(&mut cx).is_pending()
    }
}

impl<S: ClientStream> ClientStream for crate::tls::TlsStream<S> {
    /// Nothing unread by TLS (no plaintext waiting, no `close_notify`
    /// taken in) nor on the socket below it.
    fn nothing_unread(&self) -> bool {
        let (tcp, tls) = self.get_ref();
        tls.wants_read() && tcp.nothing_unread()
    }

    const OWES_CLOSE_NOTIFY: bool = true;

    /// The socket's: the last records, `close_notify` among them, go
    /// with its FIN.
    fn last_writes(&mut self) {
        self.get_mut().0.last_writes();
    }
}

/// One client connection's state.
struct Client<'a, S> {
    stream: &'a mut S,
    gateway: &'a Gateway,
    peer: &'a Peer,
    /// Bytes read from the client, not yet taken as a request.
    buf: BytesMut,
    /// The request head (and body) being written upstream; the refusals.
    out: Vec<u8>,
    /// The response head (and first body bytes) being written to the client.
    resp: Vec<u8>,
    /// When the connection was accepted (before any TLS handshake): its
    /// first request head is due within the header read timeout of it.
    accepted: Instant,
    /// Whether a request has been answered on it (later ones may wait
    /// `idle_timeout` before their first byte).
    answered: bool,
    /// When the last answer was finished (the idle timeout counts from
    /// it): the clock as its exchange was finished, not read again.
    done: Instant,
    /// The connection's one deadline, for the phase it is in: waiting for
    /// a request (first head, idle, or a head begun after idle), then for
    /// the upstream's response head, then between its body's reads. The
    /// phases never overlap, so one timer serves them all: a connection
    /// registers one timer with the runtime, not one per phase.
    timer: Deadline<'a>,
    /// How long a write may wait for the client to read
    /// (`server.idle_timeout_seconds`; see [`finish_within`]).
    send_within: Duration,
    /// The request being answered is a HEAD: its refusals have no body.
    head_request: bool,
    /// Room for the next request's field spans.
    room: wire::Spans,
}

/// Serves a public-listener connection for as long as its requests suit
/// the fast path. `accepted`: when the connection was accepted, which its
/// first request head's deadline counts from.
pub async fn serve<S: ClientStream>(
    stream: &mut S,
    gateway: &Gateway,
    peer: &Peer,
    shutdown: &mut watch::Receiver<bool>,
    accepted: Instant,
) -> Ended {
    let Buffers {
        buf,
        out,
        resp,
        room,
    } = Buffers::take();
    // The connection's one timer, made for its first request head's
    // deadline (which `read_request` sets first).
    let server = &gateway.config.server;
    let sleep = std::pin::pin!(tokio::time::sleep_until(
        accepted + server.header_read_timeout
    ));
    let mut c = Client {
        stream,
        gateway,
        peer,
        buf,
        out,
        resp,
        accepted,
        answered: false,
        done: accepted,
        timer: Deadline::new(sleep),
        send_within: server.idle_timeout,
        head_request: false,
        room,
    };
    // One wait for shutdown for the connection's life, not one per request
    // (each registered with the watch, then dropped, as the next request
    // came in first).
    let mut stop_rx = shutdown.clone();
    let changed = std::pin::pin!(stop_rx.changed());
    let mut stop = Stop::new(changed);
    stop.arm().await;
    loop {
        let Some((head, request)) = c.read_request(shutdown, &mut stop).await else {
            return Ended::Closed;
        };
        let Some(head) = head else {
            return Ended::Handoff(request);
        };
        let shutting_down = *shutdown.borrow();
        c.answered = true;
        // The client said it sends no more requests (RFC 9112 9.6).
        let client_done = head.close;
        let next = c.respond(&head, &request, shutting_down).await;
        c.room = head.into_room();
        match next {
            Next::KeepAlive => {}
            Next::Abort => return Ended::Closed,
            Next::Close => {
                c.close(client_done).await;
                return Ended::Closed;
            }
            Next::Handoff => {
                // The request, then whatever followed it.
                let mut bytes = BytesMut::with_capacity(request.len() + c.buf.len());
                bytes.extend_from_slice(&request);
                bytes.extend_from_slice(&c.buf);
                return Ended::Handoff(bytes.freeze());
            }
        }
    }
}

/// Most sets of [`Buffers`] a thread keeps for connections to come.
const SPARE_BUFFERS: usize = 32;

/// Largest request or response buffer (`out`, `resp`) kept for reuse.
const SPARE_VEC: usize = 4 * 1024;

/// A client connection's buffers (and the room for its request heads'
/// field spans): made for the first connections a thread
/// serves, then passed on from each closed connection to the next (up to
/// [`SPARE_BUFFERS`] held), unless they have grown past twice their size
/// ([`SPARE_VEC`] for `out` and `resp`). Allocating and freeing them cost
/// about 1,500 of the 27,400 user-space instructions of a connection that
/// serves one request (`Connection: close`, callgrind): the 8 KB read
/// buffer is beyond glibc's per-thread cache, and each such allocation had
/// it sort its free lists. What a reused buffer still holds is never read:
/// each is empty when it is handed out.
struct Buffers {
    buf: BytesMut,
    out: Vec<u8>,
    resp: Vec<u8>,
    /// Room for request heads' field spans.
    room: wire::Spans,
}

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buffers {
    /// A thread's spare set, or a new one.
    fn take() -> Self {
        let spare = SPARE
            .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten();
        spare.unwrap_or_else(|| Buffers {
            buf: BytesMut::with_capacity(CLIENT_READ_BUF),
            out: Vec::with_capacity(1024),
            resp: Vec::with_capacity(1024),
            room: wire::Spans::default(),
        })
    }

    /// Keeps the set for the thread's next connection, if it is as it was
    /// made: the read buffer whole again (no bytes of it still held
    /// elsewhere, as by a hand-over to hyper) and none of them grown.
    fn give_back(mut self) {
        self.buf.clear();
        if !self.buf.try_reclaim(CLIENT_READ_BUF)
            || self.buf.capacity() > CLIENT_READ_BUF * 2
            || self.out.capacity() > SPARE_VEC
            || self.resp.capacity() > SPARE_VEC
            || !self.room.is_spare()
        {
            return;
        }
        self.out.clear();
        self.resp.clear();
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut() {
                if spare.len() < SPARE_BUFFERS {
                    spare.push(self);
                }
            }
        });
    }
}

impl<S> Drop for Client<'_, S> {
    fn drop(&mut self) {
        Buffers {
            buf: std::mem::take(&mut self.buf),
            out: std::mem::take(&mut self.out),
            resp: std::mem::take(&mut self.resp),
            room: std::mem::take(&mut self.room),
        }
        .give_back();
    }
}

/// A deadline that is cheap to move later, as every request moves it: the
/// timer underneath is re-armed only when it goes off before the deadline
/// (at most once per timeout period) or must go off sooner (a response due
/// before the idle deadline the timer was last armed for: again at most
/// once per time it goes off). Re-arming a tokio timer on every request
/// was a measurable share of the fast path.
/// The timer (a `Sleep` in the connection's own future, not boxed apart)
/// is registered with the runtime when the deadline is first waited on,
/// for the deadline then in force: one never waited on (a request that was
/// in when the connection was first read, a connection closed before its
/// response head was awaited) costs no registration at all, and none is
/// ever registered already expired (that woke the runtime's driver, then
/// the connection's task, for nothing, once per timer).
struct Deadline<'a> {
    /// Made (not registered) for the first request head's deadline.
    sleep: Pin<&'a mut Sleep>,
    /// Whether `sleep` has been waited on, and so registered.
    armed: bool,
    at: Instant,
}

impl<'a> Deadline<'a> {
    /// Not yet armed: [`Self::set`] before the first [`Self::expired`].
    fn new(sleep: Pin<&'a mut Sleep>) -> Self {
        let at = sleep.deadline();
        Self {
            sleep,
            armed: false,
            at,
        }
    }

    /// Moves the deadline.
    fn set(&mut self, at: Instant) {
        if self.armed && at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
        self.at = at;
    }

    /// Completes once the deadline has passed.
    async fn expired(&mut self) {
        if !self.armed {
            // Registered here: by the reset, or by the first poll below.
            if self.sleep.deadline() != self.at {
                self.sleep.as_mut().reset(self.at);
            }
            self.armed = true;
        }
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.at {
                return;
            }
            self.sleep.as_mut().reset(self.at);
        }
    }
}

/// The caller's gateway headers ([`caller_headers`]) as written on the
/// wire: made on an entry's first use and kept with it, so a request copies
/// them rather than writing them field by field.
pub fn caller_fields<'a>(names: &HeaderNames, a: &'a AuthEntry) -> &'a [u8] {
    a.wire.get_or_init(|| {
        let mut fields = Vec::new();
        caller_headers(names, a, |n, v| {
            wire::push_field(&mut fields, n.as_str().as_bytes(), v.as_bytes());
        });
        fields
    })
}

/// `forward_auth::allowed` as the fast path writes it, into `out`: the caller's fields
/// as cached with its entry ([`caller_fields`]), the route's `RateLimit`
/// fields, dated `at`, with an empty body.
pub fn write_forward_auth_allowed(
    out: &mut Vec<u8>,
    names: &HeaderNames,
    admission: &Admission,
    request_id: &HeaderValue,
    close: bool,
    at: std::time::Instant,
) {
    // The fixed parts of the head in as few copies as can be: it is the
    // whole of the answer.
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ndate: ");
    wire::with_date(at, |d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    if let Some(a) = admission.entry.as_deref() {
        out.extend_from_slice(caller_fields(names, a));
    }
    push_limit_fields(out, admission.limits.as_ref());
    wire::push_field(out, X_REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
    out.extend_from_slice(match close {
        true => b"content-length: 0\r\nconnection: close\r\n\r\n",
        false => &b"content-length: 0\r\n\r\n"[..],
    });
}

/// Writes the `RateLimit-Policy` and `RateLimit` fields [`Gateway::admit`]
/// made, if any, into a response head.
fn push_limit_fields(out: &mut Vec<u8>, limits: Option<&LimitFields>) {
    if let Some(l) = limits {
        for (n, v) in l.pairs() {
            wire::push_field(out, n.as_str().as_bytes(), v.as_bytes());
        }
    }
}

/// Whether a retry after a stale connection is allowed without checking.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Where a response body is up to.
struct BodyProgress {
    framing: Framing,
    /// `Length`: bytes still to come.
    left: u64,
    /// `Chunked`: where in the chunk framing.
    chunks: Chunked,
}

impl BodyProgress {
    /// How many bytes at the start of `avail` belong to the body, and
    /// whether the body ends with them. `Err` for a malformed chunked body.
    fn step(&mut self, avail: &[u8]) -> Result<(usize, bool), wire::BadChunk> {
        match self.framing {
            Framing::Empty => Ok((0, true)),
            Framing::Length(_) => {
                let take = self.left.min(avail.len() as u64);
                self.left -= take;
                Ok((take as usize, self.left == 0))
            }
            Framing::Chunked => {
                let n = self.chunks.advance(avail)?;
                Ok((n, self.chunks == Chunked::Done))
            }
            Framing::UntilClose => Ok((avail.len(), false)),
        }
    }
}

/// Shutdown, as a connection waits for it between requests (and the
/// accept loop between connections): the watch's `changed()` (for a
/// clone of the task's `shutdown` receiver, as it was when the task
/// began), polled once when the task starts, which registers its waker
/// with the watch, then only once the watch has moved (`has_changed`: a
/// version compared, no lock taken). Polled on every wait, as before, it
/// took the watch's lock each time: about 170 instructions a keep-alive
/// request (callgrind); made anew for each accepted connection, about 230.
pub(crate) struct Stop<'a, F> {
    changed: Pin<&'a mut F>,
    /// `changed` is complete (the watch moved before the task began):
    /// never polled again.
    fired: bool,
}

impl<'a, F: std::future::Future> Stop<'a, F> {
    /// A wait on `changed`, not yet armed.
    pub(crate) fn new(changed: Pin<&'a mut F>) -> Self {
        Self {
            changed,
            fired: false,
        }
    }

    /// Polls `changed` once, with the task's waker: `true` when the watch
    /// had already moved (the caller checks its value itself).
    pub(crate) async fn arm(&mut self) -> bool {
        let changed = &mut self.changed;
        self.fired =
            std::future::poll_fn(|cx| std::task::Poll::Ready(changed.as_mut().poll(cx).is_ready()))
                .await;
        self.fired
    }

    /// Ready once the watch has moved (or its sender is gone): `changed`
    /// is polled only then, and never once complete. Checked on every poll
    /// (not as a `select!` precondition, which is read once, when the
    /// `select!` begins, and would miss the wake-up the watch sends).
    pub(crate) fn poll_stopped(
        &mut self,
        shutdown: &watch::Receiver<bool>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.fired || !shutdown.has_changed().unwrap_or(true) {
            return std::task::Poll::Pending;
        }
        let done = self.changed.as_mut().poll(cx).is_ready();
        self.fired = done;
        match done {
            true => std::task::Poll::Ready(()),
            false => std::task::Poll::Pending,
        }
    }
}

impl<S: ClientStream> Client<'_, S> {
    /// Reads the next request: `None` when the connection ends first;
    /// `Some((None, bytes))` when it is not for the fast path.
    /// `stop` completes at shutdown; it is polled only while idle, and
    /// never again once complete (this returns at once).
    async fn read_request(
        &mut self,
        shutdown: &watch::Receiver<bool>,
        stop: &mut Stop<'_, impl std::future::Future<Output = Result<(), watch::error::RecvError>>>,
    ) -> Option<(Option<RequestHead>, Bytes)> {
        // The first request's head must come within the header read
        // timeout of the accept; a later one may be awaited for the idle
        // timeout, then must be complete within the header read timeout of
        // its first byte (as `crate::deadline` holds hyper's connections
        // to). A body not in by then goes to hyper (see the module docs).
        let server = &self.gateway.config.server;
        let mut head_begun = !self.answered || !self.buf.is_empty();
        // `None`: a head begun after idle, due within the header read
        // timeout of when it is first waited for (read only then: a head
        // in whole with its first bytes, as nearly all are, costs no
        // reading of the clock).
        let mut deadline = if !self.answered {
            Some(self.accepted + server.header_read_timeout)
        } else if head_begun {
            None
        } else {
            Some(self.done + server.idle_timeout)
        };
        let mut head_in = false;
        loop {
            if !self.buf.is_empty() {
                let bytes = self.buf.split().freeze();
                match wire::parse_request_in(&bytes, std::mem::take(&mut self.room)) {
                    Parsed::Complete(h) if bytes.len() as u64 >= h.head_len as u64 + h.body_len => {
                        let total = h.head_len + h.body_len as usize;
                        // Pipelined requests wait their turn.
                        self.buf.extend_from_slice(&bytes[total..]);
                        return Some((Some(h), bytes.slice(..total)));
                    }
                    Parsed::Unsupported => return Some((None, bytes)),
                    parsed @ (Parsed::Complete(_) | Parsed::Partial) => {
                        head_in = matches!(parsed, Parsed::Complete(_));
                        drop(parsed);
                        let mut whole = bytes
                            .try_into_mut()
                            .unwrap_or_else(|b| BytesMut::from(&b[..]));
                        whole.unsplit(std::mem::take(&mut self.buf));
                        self.buf = whole;
                        if self.buf.len() as u64
                            > CLIENT_READ_BUF as u64 * 4 + wire::MAX_BUFFERED_BODY
                        {
                            // A very long head: hyper applies its own limit.
                            return Some((None, self.buf.split().freeze()));
                        }
                    }
                }
            }
            let idle = self.buf.is_empty();
            let stopping = *shutdown.borrow();
            if idle && stopping {
                return None;
            }
            self.buf.reserve(CLIENT_READ_BUF);
            let at = *deadline.get_or_insert_with(|| Instant::now() + server.header_read_timeout);
            self.timer.set(at);
            let read = tokio::select! {
                biased;
                r = self.stream.read_buf(&mut self.buf) => r,
                _ = self.timer.expired() => {
                    if !head_in {
                        return None;
                    }
                    // The head is in and its body still coming: hyper
                    // takes it from here, with every byte read so far, and
                    // streams it upstream under the upstream's response
                    // timeout, as any body.
                    return Some((None, self.buf.split().freeze()));
                }
                () = std::future::poll_fn(|cx| stop.poll_stopped(shutdown, cx)), if idle => return None,
            };
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if !head_begun {
                head_begun = true;
                deadline = None;
            }
        }
    }

    /// Answers the request, then hands its record to
    /// [`crate::signals::Signals::finish`] (unless hyper is to answer it).
    async fn respond(&mut self, head: &RequestHead, request: &Bytes, shutting_down: bool) -> Next {
        let g = self.gateway;
        // The request's one reading of the clock until it is answered.
        let started = Instant::now().into_std();
        let (request_id, trace) = g.identify(head, started);
        let mut ex = Exchange::new(
            started,
            request_id,
            trace,
            head.method.clone(),
            g.signals.keep_path(head.path()),
            self.peer.addr.ip(),
        );
        ex.bytes_in = head.body_len;
        let next = self.answer(head, request, shutting_down, &mut ex).await;
        if !matches!(next, Next::Handoff) {
            self.done = Instant::now();
            g.signals.finish_at(ex, self.done.into_std());
        }
        next
    }

    /// Runs the policy steps and answers the request.
    async fn answer(
        &mut self,
        head: &RequestHead,
        request: &Bytes,
        shutting_down: bool,
        ex: &mut Exchange,
    ) -> Next {
        let g = self.gateway;
        self.head_request = head.method == Method::HEAD;
        let path = match normalize_path(head.path()) {
            Ok(p) => p,
            Err(e) => return self.refuse(Denial::BadPath(e), ex, None, head.close).await,
        };
        // The config this request sees to its end, whatever a reload does.
        let snap = g.snapshot();
        if let Some(suffix) = forward_auth::suffix(&snap.config.forward_auth, head.path(), &path) {
            ex.route = RouteSeries::ForwardAuth;
            let close = head.close || shutting_down;
            let (memo, ip) = (
                MemoUse::of(&self.peer.memo, head.close),
                self.peer.addr.ip(),
            );
            let decided =
                forward_auth::decide(g, &snap, &head.method, suffix, head, memo, ip, ex.started);
            return match decided.await {
                Ok(admission) => {
                    let names = snap.header_names();
                    write_forward_auth_allowed(
                        &mut self.out,
                        names,
                        &admission,
                        &ex.request_id,
                        close,
                        ex.started,
                    );
                    ex.auth = admission.entry;
                    ex.status = 200;
                    self.send_out(close).await
                }
                Err(r) => {
                    self.refuse(r.denial, ex, r.allow_for.as_deref(), close)
                        .await
                }
            };
        }
        if crate::flows::match_flow(&snap.config.token_api, &path).is_some() {
            return Next::Handoff;
        }
        let (route, upstream) = match snap.route(&path, &head.method, head) {
            Ok(x) => x,
            Err(d) => return self.refuse(d, ex, Some(&path), head.close).await,
        };
        let Some(raw) = upstream.raw_pool() else {
            return Next::Handoff;
        };
        ex.route = RouteSeries::Route(route.series);
        let Admission { entry, limits } = match g
            .admit(
                route,
                head,
                MemoUse::of(&self.peer.memo, head.close),
                self.peer.addr.ip(),
                ex.started,
            )
            .await
        {
            Ok(a) => a,
            Err(d) => return self.refuse(d, ex, None, head.close).await,
        };
        ex.upstream = snap.upstream_series(route.upstream);
        let cfg = &upstream.config;
        // The request line, its target written in place.
        self.out.clear();
        let target = wire::push_request_line(
            &mut self.out,
            &head.method,
            upstream_target_parts(cfg, &path, head.query()),
        );
        // The client's target was checked as it was parsed; only a path
        // normalisation changed, or a base path added, needs a new look.
        let changed = path != head.path() || !cfg.base_path.is_empty();
        if changed && PathAndQuery::try_from(&self.out[target]).is_err() {
            let d = Denial::BadPath(PathError::BadEscape);
            return self
                .refuse_limited(d, ex, None, head.close, limits.as_ref())
                .await;
        }
        let traceparent = ex.trace.header_value();
        let ctx = ForwardContext {
            auth: entry.as_deref(),
            request_id: &ex.request_id,
            traceparent: &traceparent,
            peer: self.peer,
            path: &path,
        };
        // The same rewrite as `rewrite_request_headers`, on the fields as
        // they came, written straight out.
        let names = snap.header_names();
        let out = &mut self.out;
        // The body's length is stated by the gateway, from what it read.
        let mut sink = wire::FieldWriter {
            out,
            drop_length: true,
        };
        let host = strip_request(head, snap.strip_set(), cfg, false, &mut sink).map(|(_, v)| v);
        if head.has_length {
            let n = HeaderValue::from(head.body_len);
            wire::push_field(&mut self.out, b"content-length", n.as_bytes());
        }
        // `gateway_headers`: the caller's, written once per cache entry,
        // then this request's, with `X-Forwarded-Host` from the bytes.
        if let Some(a) = ctx.auth {
            self.out.extend_from_slice(caller_fields(names, a));
        }
        request_headers(names, &ctx, None, |n, v| {
            wire::push_field(&mut self.out, n.as_str().as_bytes(), v.as_bytes());
        });
        if let Some(h) = host.filter(|_| names.sends(GatewayHeader::ForwardedHost)) {
            wire::push_field(&mut self.out, names.forwarded_host.as_str().as_bytes(), h);
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&request[head.head_len..]);

        ex.auth = entry;
        let sent_at = Instant::now();
        self.timer.set(sent_at + cfg.response_timeout);
        let safe = is_safe(&head.method);
        let head_request = head.method == Method::HEAD;
        let exchange = async {
            let mut fresh_only = false;
            loop {
                let mut conn = if fresh_only {
                    raw.connect().await
                } else {
                    match checkout(raw, sent_at.into_std()) {
                        Ok(c) => Ok(c),
                        Err(waiter) => raw.connect_or_wait(waiter).await,
                    }
                }
                .map_err(|e| match e {
                    crate::upstream::raw::ConnectError::Busy(_) => Failure::Busy,
                    crate::upstream::raw::ConnectError::Io(e) => Failure::Io(e.into()),
                })?;
                match send(&mut conn, &self.out, head_request, &mut self.resp).await {
                    Ok(resp) => return Ok((conn, resp)),
                    Err(Failure::Stale) if safe => fresh_only = true,
                    Err(e) => return Err(e),
                }
            }
        };
        let sent = tokio::select! {
            biased;
            r = exchange => Some(r),
            _ = self.timer.expired() => None,
        };
        ex.upstream_time = Some(sent_at.elapsed());
        let (conn, resp) = match sent {
            None => {
                let d = Failure::Timeout.denial(&cfg.name);
                return self
                    .refuse_limited(d, ex, None, head.close, limits.as_ref())
                    .await;
            }
            Some(Err(e)) => {
                let d = e.denial(&cfg.name);
                return self
                    .refuse_limited(d, ex, None, head.close, limits.as_ref())
                    .await;
            }
            Some(Ok(x)) => x,
        };
        g.metrics.forwarded.inc();
        let close = head.close || shutting_down;
        push_limit_fields(&mut self.resp, limits.as_ref());
        self.pass_response(conn, resp, raw, cfg, ex, close).await
    }

    /// Finishes the response head in `self.resp` for the client, then
    /// copies the body (its first bytes are in `conn.buf`).
    async fn pass_response(
        &mut self,
        mut conn: RawConn,
        resp: ResponseHead,
        raw: &RawPool,
        upstream: &UpstreamConfig,
        ex: &mut Exchange,
        client_close: bool,
    ) -> Next {
        let idle_body = upstream.response_timeout;
        let upstream_name = &upstream.name;
        let ResponseHead {
            framing,
            close: upstream_close,
            dated,
            status,
            ..
        } = resp;
        ex.status = status.as_u16();
        let request_id = &ex.request_id;
        if !dated {
            // Dated as it is sent on, as an origin dates its response.
            let now = std::time::Instant::now();
            wire::with_date(now, |d| wire::push_field(&mut self.resp, b"date", d));
        }
        wire::push_field(
            &mut self.resp,
            X_REQUEST_ID.as_str().as_bytes(),
            request_id.as_bytes(),
        );
        let close = client_close || framing == Framing::UntilClose;
        if close {
            wire::push_field(&mut self.resp, b"connection", b"close");
        }
        self.resp.extend_from_slice(b"\r\n");

        // Body bytes already read go out with the head; anything after
        // them (a partial chunk line, or bytes past the end) stays with
        // the connection.
        let mut body = BodyProgress {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: Chunked::Size,
        };
        let Ok((n, mut finished)) = body.step(&conn.buf) else {
            return Next::Close;
        };
        self.resp.extend_from_slice(&conn.buf[..n]);
        let _ = conn.buf.split_to(n);
        ex.bytes_out = n as u64;
        if close && finished {
            self.stream.last_writes();
        }
        if write_within(self.stream, &self.resp, &mut self.timer, self.send_within)
            .await
            .is_err()
        {
            return Next::Abort;
        }
        if !finished {
            self.timer.set(Instant::now() + idle_body);
        }
        while !finished {
            // What is left in the buffer is a partial chunk line at most.
            conn.buf.reserve(UPSTREAM_READ_BUF);
            // The upstream must keep the body coming (`response_timeout`
            // between reads), and the exchange ends as soon as the client
            // is gone: a stalled upstream holds nothing for a client that
            // left. What the client sends meanwhile (a pipelined request)
            // is kept for later, up to a bound.
            let watch_client = self.buf.len() < MAX_PIPELINED;
            if watch_client {
                self.buf.reserve(CLIENT_READ_BUF);
            }
            let read = tokio::select! {
                biased;
                r = conn.stream.read_buf(&mut conn.buf) => r,
                r = self.stream.read_buf(&mut self.buf), if watch_client => {
                    if matches!(r, Ok(0) | Err(_)) {
                        tracing::debug!("client went away mid-response; closing the upstream connection");
                        return Next::Close;
                    }
                    continue;
                }
                () = self.timer.expired() => {
                    tracing::warn!(upstream = %upstream_name, "upstream response body stalled; closing");
                    return Next::Abort;
                }
            };
            match read {
                Ok(0) if framing == Framing::UntilClose => break,
                Ok(0) | Err(_) => {
                    tracing::debug!("upstream closed mid-body");
                    return Next::Abort;
                }
                Ok(_) => {}
            }
            let Ok((n, f)) = body.step(&conn.buf) else {
                return Next::Abort;
            };
            finished = f;
            if close && finished {
                self.stream.last_writes();
            }
            if write_within(
                self.stream,
                &conn.buf[..n],
                &mut self.timer,
                self.send_within,
            )
            .await
            .is_err()
            {
                return Next::Abort;
            }
            ex.bytes_out += n as u64;
            let _ = conn.buf.split_to(n);
            // The upstream's next gap counts from here: while a write
            // waited for the client, the upstream was kept waiting.
            if !finished {
                self.timer.set(Instant::now() + idle_body);
            }
        }
        if !upstream_close && conn.buf.is_empty() {
            raw.checkin(conn);
        }
        if close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Gets the connection ready to close after its last answer (the
    /// caller then drops it): at once when the client said it sends no
    /// more (`client_done`) and nothing it sent is unread (none buffered,
    /// none ready on the socket), as nginx closes when it has no reason to
    /// think the client is still sending; else [`Self::linger`]. A client
    /// that sends anyway after its `Connection: close`, in the moment
    /// between the check and the close, may get a reset, as from nginx.
    async fn close(&mut self, client_done: bool) {
        if client_done && self.buf.is_empty() && self.stream.nothing_unread() {
            // Over TLS, the close is announced first (as nginx's
            // `SSL_shutdown` does, without waiting for the client's).
            if S::OWES_CLOSE_NOTIFY {
                let _ =
                    finish_within(self.stream.shutdown(), &mut self.timer, self.send_within).await;
            }
            return;
        }
        self.linger().await;
    }

    /// Closes as nginx's lingering close does: the FIN first, then what the
    /// client still sends (requests pipelined behind the last one answered)
    /// is read and dropped for a moment. Closing with unread bytes would
    /// make the kernel answer them with a reset, which can destroy the end
    /// of the response before the client has read it, and a response
    /// delimited by the close could not even be told apart from a whole one.
    async fn linger(&mut self) {
        if finish_within(self.stream.shutdown(), &mut self.timer, self.send_within)
            .await
            .is_err()
        {
            return;
        }
        let mut total = 0;
        let drain = async {
            loop {
                // Into the connection's own buffer, whose bytes will never
                // be answered now: no sink to zero, none in this future.
                self.buf.clear();
                self.buf.reserve(CLIENT_READ_BUF);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        total += n;
                        if total > LINGER_BYTES {
                            return;
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Answers with a refusal (`path`: the normalised path, for a 405's
    /// `Allow`).
    async fn refuse(
        &mut self,
        denial: Denial,
        ex: &mut Exchange,
        path: Option<&str>,
        close: bool,
    ) -> Next {
        self.refuse_limited(denial, ex, path, close, None).await
    }

    /// [`Self::refuse`] after admission on a limited route: the answer
    /// carries the route's `RateLimit` fields, as every answer there does.
    async fn refuse_limited(
        &mut self,
        denial: Denial,
        ex: &mut Exchange,
        path: Option<&str>,
        close: bool,
        limits: Option<&LimitFields>,
    ) -> Next {
        let (status, mut headers, body) = self.gateway.refusal(denial, &ex.request_id, path);
        if let Some(l) = limits {
            for (n, v) in l.pairs() {
                headers.append(n.clone(), v.clone());
            }
        }
        ex.status = status.as_u16();
        ex.code = Some(denial.code());
        ex.bytes_out = if self.head_request {
            0
        } else {
            body.len() as u64
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        // As hyper's server dates every response it writes (a refusal is
        // made as the request comes in: dated by its head's arrival).
        if let Ok(date) = wire::with_date(ex.started, HeaderValue::from_bytes) {
            headers.insert(header::DATE, date);
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.out.clear();
        wire::encode_response(&mut self.out, status, &headers);
        // A HEAD is answered with the head alone (its `Content-Length`
        // says what a GET would get), as hyper's server does.
        if !self.head_request {
            self.out.extend_from_slice(&body);
        }
        self.send_out(close).await
    }

    /// Writes the answer made in `self.out`; the connection goes on unless
    /// it says `close` or the write fails.
    async fn send_out(&mut self, close: bool) -> Next {
        if close {
            self.stream.last_writes();
        }
        match write_within(self.stream, &self.out, &mut self.timer, self.send_within).await {
            Ok(()) if !close => Next::KeepAlive,
            Ok(()) => Next::Close,
            Err(_) => Next::Abort,
        }
    }
}

/// Writes to the client and pushes it out (on TCP the flush is nothing;
/// over TLS it sends the records rustls may still hold when the socket
/// was full, which writing alone can leave there), each step held to the
/// deadline [`finish_within`] keeps: the time allowed counts from when a
/// step first had to wait, so a client that reads slowly but keeps
/// reading is sent its answer, however long it is.
async fn write_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut bytes: &[u8],
    timer: &mut Deadline<'_>,
    within: Duration,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = finish_within(stream.write(bytes), timer, within).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = bytes.get(n..).unwrap_or_default();
    }
    finish_within(stream.flush(), timer, within).await
}

/// A write to the client (or its close, which over TLS writes
/// `close_notify`) that must finish within `within`
/// (`server.idle_timeout_seconds`) of when it first had to wait for the
/// client to read, as `crate::deadline` holds hyper's connections to (and
/// nginx's `send_timeout` its own): a client that asks for an answer and
/// reads none of it cannot hold its connection, nor the upstream one
/// behind it. A write that finishes at once, as nearly all do, reads no
/// clock and moves no timer; one that waits moves the connection's timer
/// (`TimedOut` when it goes off first), and the caller sets it again for
/// whatever it waits for next.
async fn finish_within<T>(
    work: impl std::future::Future<Output = std::io::Result<T>>,
    timer: &mut Deadline<'_>,
    within: Duration,
) -> std::io::Result<T> {
    let mut work = std::pin::pin!(work);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(done) = first {
        return done;
    }
    timer.set(Instant::now() + within);
    tokio::select! {
        biased;
        done = work => done,
        () = timer.expired() => {
            tracing::debug!("the client read nothing of what it was sent in time; closing");
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

/// An idle connection to reuse (its idle timeout judged at `now`, read as
/// the request was sent): one the upstream has, as far as tokio
/// knows, neither closed nor written to while idle (a late `408`, say,
/// which must not pass for the next request's answer). The check costs no
/// syscall when tokio's readiness says the socket has nothing to read (the
/// usual case: the previous response's last read came up short, which
/// clears it). It cannot see what arrived after the reactor last looked:
/// a close still in flight is caught by the retry of safe methods, and a
/// stray response in flight is a race no HTTP/1.1 client can rule out.
fn checkout(
    raw: &RawPool,
    now: std::time::Instant,
) -> Result<RawConn, tokio::sync::oneshot::Receiver<RawConn>> {
    loop {
        let conn = raw.pop_or_join(now)?;
        let mut probe = [0u8; 1];
        if let Err(e) = conn.stream.try_read(&mut probe) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(conn);
            }
        }
    }
}

/// Writes a request and reads the response head, skipping interim (1xx)
/// responses. A `101` is refused: the fast path never asks for an upgrade.
async fn send(
    conn: &mut RawConn,
    request: &[u8],
    head_request: bool,
    head: &mut Vec<u8>,
) -> Result<ResponseHead, Failure> {
    let reused = conn.reused;
    if let Err(e) = conn.stream.write_all(request).await {
        return Err(if reused {
            Failure::Stale
        } else {
            Failure::Io(e.into())
        });
    }
    let mut any = false;
    loop {
        if !conn.buf.is_empty() {
            any = true;
            head.clear();
            match wire::parse_response(&conn.buf, head_request, head) {
                Parsed::Complete(h) if h.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(Failure::BadResponse);
                }
                Parsed::Complete(h) => {
                    let _ = conn.buf.split_to(h.head_len);
                    if !h.status.is_informational() {
                        return Ok(h);
                    }
                    continue;
                }
                Parsed::Unsupported => return Err(Failure::BadResponse),
                Parsed::Partial if conn.buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(Failure::BadResponse)
                }
                Parsed::Partial => {}
            }
        }
        conn.buf.reserve(UPSTREAM_READ_BUF);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if reused && !any => return Err(Failure::Stale),
            Err(_) if reused && !any => return Err(Failure::Stale),
            Ok(0) => {
                return Err(Failure::Io(
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
                ));
            }
            Err(e) => return Err(Failure::Io(e.into())),
            Ok(_) => {}
        }
    }
}

/// A connection handed to hyper: the bytes the fast path already read,
/// then the stream (TCP, or TLS over it).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    stream: S,
}

impl<S> Prefixed<S> {
    /// `stream`, to be read from after `prefix`.
    pub fn new(prefix: Bytes, stream: S) -> Self {
        Self { prefix, stream }
    }
}

impl<S: AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WITHIN: Duration = Duration::from_secs(10);

    /// `write_within` through a pipe of `room` bytes, under paused time;
    /// whether it armed the timer, and whether it moved its deadline.
    async fn write_through(room: usize, bytes: &[u8]) -> (std::io::Result<()>, bool, bool) {
        let (mut ours, _theirs) = tokio::io::duplex(room);
        let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let mut timer = Deadline::new(sleep);
        let before = timer.at;
        let written = write_within(&mut ours, bytes, &mut timer, WITHIN).await;
        (written, timer.armed, timer.at != before)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_fits_touches_no_timer() {
        let (written, armed, moved) = write_through(64, &[1; 64]).await;
        written.unwrap();
        assert!(!armed && !moved);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_times_out_when_it_has_waited_that_long() {
        let start = Instant::now();
        let (written, armed, _) = write_through(64, &[1; 100]).await;
        assert_eq!(written.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), WITHIN);
        assert!(armed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_gets_it_all() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let mut timer = Deadline::new(sleep);
        // 64 bytes every 9 seconds: each step waits less than WITHIN, the
        // whole takes far longer.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                tokio::time::sleep(WITHIN - Duration::from_secs(1)).await;
                match theirs.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let start = Instant::now();
        let bytes: Vec<u8> = (0..640u32).map(|i| i as u8).collect();
        write_within(&mut ours, &bytes, &mut timer, WITHIN)
            .await
            .unwrap();
        assert!(start.elapsed() > WITHIN * 5);
        drop(ours);
        assert_eq!(reader.await.unwrap(), bytes);
    }
}
