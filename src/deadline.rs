//! Deadlines of client connections served by hyper (DESIGN section 8).
//!
//! hyper bounds neither the wait before it knows which protocol a
//! connection speaks (a client that sends nothing, or half the HTTP/2
//! preface, is read from for ever) nor an HTTP/2 connection's wait for a
//! request, and its HTTP/1.1 header timer also runs while a keep-alive
//! connection is idle. So the gateway keeps its own books on every
//! connection it hands to hyper, from three facts ([`Activity`]): when a
//! request head was complete (hyper calls the service), when a response
//! was done with (its body dropped), and when bytes arrived while no
//! request was in flight. From them, [`Activity::expired`] resolves when
//! the connection is past one of its deadlines:
//!
//! - before its first request: `header_read_timeout` from when hyper got
//!   it (the accept, or the fast path's hand-over), whatever it sends;
//! - idle (no request in flight): `idle_timeout` from the end of the last
//!   response, for HTTP/1.1 keep-alive and HTTP/2 alike;
//! - an HTTP/1.1 head that started arriving after that: complete within
//!   `header_read_timeout` of its first byte.
//!
//! A request in flight (a slow upstream, a long upload) has no connection
//! deadline; the upstream's own timeouts bound it. One exception, in flight
//! or not: a write to the client that has waited `idle_timeout` for the
//! client to read (its socket buffer full) closes the connection at once,
//! as nginx's `send_timeout` does, so a client that asks for a response and
//! never reads it cannot hold the connection, and the upstream connection
//! behind it, for ever (a fourth fact: since when a write has waited).
//! HTTP/2 has a second way to read nothing: a client that grants a stream
//! no flow-control window leaves hyper holding that stream's next frame,
//! and the socket idle. So a response frame hyper took and has not yet
//! sent on (it has not come back for the next) counts as a write that
//! waits, stream by stream (a fifth fact), and one that has waited
//! `idle_timeout` closes the connection too, politely (`GOAWAY`, then a
//! short grace: hyper has no way to reset one stream from outside, and
//! the other streams learn which requests were served). Only the first
//! wait on a connection wakes the watcher; from then on it looks at least
//! once per `idle_timeout`, so a healthy download, whose writes wait and
//! move on with every chunk, wakes nothing. The fast path keeps the same
//! deadlines on the connections it serves (`crate::fast`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The deadlines a connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// A request head must be complete within this.
    pub header: Duration,
    /// A connection with no request in flight closes after this.
    pub idle: Duration,
}

/// Which deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head in time: the peer is slow or hostile, and
    /// the connection is closed at once.
    Head,
    /// Idle too long: closed politely (HTTP/2 `GOAWAY`).
    Idle,
    /// A write to the client waited too long: the client reads nothing,
    /// and the connection is closed at once (nothing could be sent to it).
    Stalled,
    /// HTTP/2: a stream's frame waited too long for the client's window.
    /// The socket still takes writes: the connection is told to close
    /// (`GOAWAY`, so the client knows which requests were served), then
    /// dropped after a short grace.
    StreamStalled,
}

/// What a connection has been doing, shared by the service (requests),
/// the response bodies (their end) and the socket (reads).
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// When hyper got the connection plus the header timeout.
    first_head_by: Instant,
    /// Whether any request head has been complete.
    started: AtomicBool,
    /// Requests whose response is not yet done with.
    in_flight: AtomicUsize,
    /// Milliseconds from `base` to the end of the last response.
    idle_since: AtomicU64,
    /// Milliseconds from `base`, plus one, to the first byte read while
    /// idle (0: none).
    head_since: AtomicU64,
    /// HTTP/2: bytes while idle are frames of the connection (PING,
    /// SETTINGS), not a request head.
    h2: AtomicBool,
    /// Milliseconds from `base`, plus one, to when a write to the client
    /// began to wait for it to read (0: none is waiting).
    write_waits_since: AtomicU64,
    /// HTTP/2 response bodies whose last frame hyper took and has not sent
    /// on yet: (body, milliseconds from `base` to when it took it).
    frames_held: std::sync::Mutex<Vec<(u64, u64)>>,
    /// Names the next HTTP/2 response body.
    next_body: AtomicU64,
    /// A write has waited, or a frame been held, since the connection
    /// began: from then on [`Self::expired`] looks again at least every
    /// `idle_timeout`, so later waits need not wake it (in a healthy
    /// download they begin and end with every chunk).
    waits_seen: AtomicBool,
    /// Wakes [`Activity::expired`] when the deadline moves.
    changed: Notify,
}

impl Activity {
    /// A connection hyper takes over now; its first request head is due
    /// within `header`.
    pub fn new(header: Duration) -> Arc<Self> {
        let base = Instant::now();
        Arc::new(Self {
            base,
            first_head_by: base + header,
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            write_waits_since: AtomicU64::new(0),
            frames_held: std::sync::Mutex::new(Vec::new()),
            next_body: AtomicU64::new(0),
            waits_seen: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// A request head is complete: the request is in flight until the
    /// returned guard is dropped (with its response body).
    pub fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        let h2 = version == Version::HTTP_2;
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Relaxed);
        self.started.store(true, Ordering::Release);
        self.changed.notify_one();
        InFlight {
            activity: Arc::clone(self),
            body: h2.then(|| self.next_body.fetch_add(1, Ordering::Relaxed)),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
        self.frames_held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// HTTP/2: hyper took a frame of `body`'s, to send when the client's
    /// window allows.
    fn frame_held(&self, body: u64) {
        let now = self.now_ms();
        self.held().push((body, now));
        self.first_wait();
    }

    /// HTTP/2: hyper came back to `body` for more (so it sent what it
    /// held), or dropped it.
    fn frame_sent(&self, body: u64) {
        let mut held = self.held();
        if let Some(i) = held.iter().position(|&(b, _)| b == body) {
            held.swap_remove(i);
        }
    }

    /// Bytes came in.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.started.load(Ordering::Acquire)
            && !self.h2.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// A write to the client: `waits` when it could not go on (the
    /// client's socket buffer is full), else it made progress or failed.
    /// A write that moves again is seen when the deadline it set comes.
    fn wrote(&self, waits: bool) {
        let since = self.write_waits_since.load(Ordering::Relaxed);
        if waits && since == 0 {
            self.write_waits_since
                .store(self.now_ms() + 1, Ordering::Relaxed);
            self.first_wait();
        } else if !waits && since != 0 {
            self.write_waits_since.store(0, Ordering::Relaxed);
        }
    }

    /// Wakes [`Self::expired`] for the connection's first waiting write or
    /// held frame only; it looks on its own after that.
    fn first_wait(&self) {
        if !self.waits_seen.load(Ordering::Relaxed) {
            self.waits_seen.store(true, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// [`Self::wrote`] for a polled write (or flush, or close), passed on.
    fn watch_write<R>(&self, polled: Poll<R>) -> Poll<R> {
        self.wrote(polled.is_pending());
        polled
    }

    /// The deadline in force now: the sooner of a waiting write's and the
    /// connection's own (`None` while a request is in flight).
    fn deadline(&self, d: Deadlines) -> Option<(Instant, Expired)> {
        let write = match self.write_waits_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some((self.at(since - 1) + d.idle, Expired::Stalled)),
        };
        let frame = self.held().iter().map(|&(_, since)| since).min();
        let frame = frame.map(|since| (self.at(since) + d.idle, Expired::StreamStalled));
        [self.own_deadline(d), write, frame]
            .into_iter()
            .flatten()
            .min_by_key(|&(at, _)| at)
    }

    /// The deadline of the connection's state, writes aside.
    fn own_deadline(&self, d: Deadlines) -> Option<(Instant, Expired)> {
        if !self.started.load(Ordering::Acquire) {
            return Some((self.first_head_by, Expired::Head));
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => Some((
                self.at(self.idle_since.load(Ordering::Relaxed)) + d.idle,
                Expired::Idle,
            )),
            since => Some((self.at(since - 1) + d.header, Expired::Head)),
        }
    }

    /// Resolves when the connection is past a deadline, saying which.
    pub async fn expired(&self, d: Deadlines) -> Expired {
        loop {
            // Any change of state (a request begins or ends, a head begins)
            // moves the deadline: it is worked out again then.
            let changed = self.changed.notified();
            let now = Instant::now();
            let deadline = self.deadline(d);
            if let Some((at, why)) = deadline {
                if now >= at {
                    return why;
                }
            }
            // Once writes have waited, a wait that begins later wakes
            // nothing: it is seen here, within `idle` of its start, which
            // is in time for its own deadline.
            let look_again = self
                .waits_seen
                .load(Ordering::Relaxed)
                .then(|| now + d.idle);
            let wake_at = match (deadline.map(|(at, _)| at), look_again) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wake_at {
                None => changed.await,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// A request in flight on a connection; dropped with its response body.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    /// HTTP/2: the response body's name in [`Activity::frames_held`].
    body: Option<u64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        if let Some(body) = self.body {
            a.frame_sent(body);
        }
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_one();
    }
}

/// A response body that keeps its request in flight until it is dropped
/// (sent to its end, or abandoned); over HTTP/2 it also tells when hyper
/// holds one of its frames for the client's window.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    in_flight: InFlight,
    /// HTTP/2: hyper holds the last data frame this gave it.
    held: bool,
}

impl<B> Tracked<B> {
    /// `inner`, holding `in_flight`.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight,
            held: false,
        }
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(body) = this.in_flight.body {
            // Back for more: what hyper held has gone out.
            if this.held {
                this.in_flight.activity.frame_sent(body);
            }
            // A data frame waits for the client's window (a trailers
            // frame does not); hyper holds it until it has gone out.
            this.held = matches!(&polled, Poll::Ready(Some(Ok(f))) if f.is_data());
            if this.held {
                this.in_flight.activity.frame_held(body);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket that tells its [`Activity`] when bytes arrive.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    /// `io`, reporting to `activity`.
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.activity
            .watch_write(Pin::new(&mut this.io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.activity
            .watch_write(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.activity
            .watch_write(Pin::new(&mut this.io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.activity
            .watch_write(Pin::new(&mut this.io).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const D: Deadlines = Deadlines {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_expires_at_the_header_timeout() {
        let a = Activity::new(D.header);
        let start = Instant::now();
        assert_eq!(a.expired(D).await, Expired::Head);
        assert_eq!(start.elapsed(), D.header);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_hold_it_open_then_idle_time_counts() {
        let a = Activity::new(D.header);
        let req = a.begin(Version::HTTP_11);
        tokio::time::sleep(Duration::from_secs(300)).await;
        let ended = Instant::now();
        drop(req);
        assert_eq!(a.expired(D).await, Expired::Idle);
        assert_eq!(ended.elapsed(), D.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_while_idle_must_finish_within_the_header_timeout() {
        let a = Activity::new(D.header);
        drop(a.begin(Version::HTTP_11));
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.read();
        let first_byte = Instant::now();
        assert_eq!(a.expired(D).await, Expired::Head);
        assert_eq!(first_byte.elapsed(), D.header);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_waiting_for_the_client_expires_at_the_idle_timeout_even_in_flight() {
        let a = Activity::new(D.header);
        let req = a.begin(Version::HTTP_11);
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.wrote(true);
        let waiting = Instant::now();
        // Still waiting, polled again: the deadline does not move.
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.wrote(true);
        assert_eq!(a.expired(D).await, Expired::Stalled);
        assert_eq!(waiting.elapsed(), D.idle);
        drop(req);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_moves_again_lifts_the_deadline() {
        let a = Activity::new(D.header);
        let req = a.begin(Version::HTTP_11);
        a.wrote(true);
        tokio::time::sleep(D.idle - Duration::from_secs(1)).await;
        a.wrote(false);
        drop(req);
        let ended = Instant::now();
        // The response ended: the idle timeout counts from its end.
        assert_eq!(a.expired(D).await, Expired::Idle);
        assert_eq!(ended.elapsed(), D.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_write_on_an_idle_connection_ends_it_at_its_own_deadline() {
        let a = Activity::new(D.header);
        drop(a.begin(Version::HTTP_2));
        tokio::time::sleep(Duration::from_secs(30)).await;
        // An h2 frame (a PING's answer) the client does not read.
        a.wrote(true);
        let waiting = Instant::now();
        assert_eq!(a.expired(D).await, Expired::Idle);
        assert_eq!(waiting.elapsed(), D.idle - Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_frame_held_for_the_clients_window_expires_at_the_idle_timeout() {
        let a = Activity::new(D.header);
        let moving = a.begin(Version::HTTP_2);
        let held = a.begin(Version::HTTP_2);
        let (moving_body, held_body) = (moving.body.unwrap(), held.body.unwrap());
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.frame_held(held_body);
        let since = Instant::now();
        // Another stream's frames keep going out: no help to this one.
        for _ in 0..10 {
            a.frame_held(moving_body);
            tokio::time::sleep(Duration::from_secs(1)).await;
            a.frame_sent(moving_body);
        }
        assert_eq!(a.expired(D).await, Expired::StreamStalled);
        assert_eq!(since.elapsed(), D.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_begins_while_it_is_watched_is_seen_in_time() {
        let a = Activity::new(D.header);
        let req = a.begin(Version::HTTP_11);
        // The first wait wakes the watcher; it is over at once.
        a.wrote(true);
        a.wrote(false);
        let watcher = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.expired(D).await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watcher.is_finished());
        // A later wait wakes nothing, and is still caught on time.
        a.wrote(true);
        let waiting = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::Stalled);
        assert_eq!(waiting.elapsed(), D.idle);
        drop(req);
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_frame_sent_on_or_dropped_lifts_the_deadline() {
        let a = Activity::new(D.header);
        let req = a.begin(Version::HTTP_2);
        let body = req.body.unwrap();
        a.frame_held(body);
        tokio::time::sleep(D.idle - Duration::from_secs(1)).await;
        a.frame_sent(body);
        a.frame_held(body);
        // Dropped with its request: nothing is held any more.
        drop(req);
        let ended = Instant::now();
        assert_eq!(a.expired(D).await, Expired::Idle);
        assert_eq!(ended.elapsed(), D.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_on_an_idle_h2_connection_are_not_a_request_head() {
        let a = Activity::new(D.header);
        drop(a.begin(Version::HTTP_2));
        let idle = Instant::now();
        a.read();
        assert_eq!(a.expired(D).await, Expired::Idle);
        assert_eq!(idle.elapsed(), D.idle);
    }
}
