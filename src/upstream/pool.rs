//! The HTTP/1.1 upstream connection pool, driven on the caller's task.
//!
//! hyper-util's legacy client runs every upstream connection as a task of
//! its own: a proxied request crosses from the client connection's task to
//! the upstream connection's task (a channel), the response comes back (a
//! oneshot), every body chunk crosses again, and after each response a task
//! is spawned to wait for the connection to go idle and put it back. On a
//! gateway that is most of the user-space CPU per request that is not
//! hyper's parsing.
//!
//! Here an upstream connection has no task. Whoever holds it polls it: the
//! request future while the request is written and the head comes back, then
//! the response body ([`PooledBody`]) while the client reads it. When the
//! body has been read to its end the connection goes back to the pool, idle
//! and owned by nobody, and the next request picks it up (newest first,
//! so the warm ones stay warm). That is the shape nginx has: one event loop
//! reading one socket and writing the other, no hand-off between them.
//!
//! What the pool promises:
//! - A connection is reused only after its previous response was read to the
//!   end and hyper reports it ready for another request; a body dropped
//!   half-read (client gone) closes the connection.
//! - An idle connection found closed (the upstream timed it out) is dropped
//!   at checkout. If the upstream closes it just as a request is sent, hyper
//!   hands back the request unwritten and it goes out on another connection;
//!   a request that was written is never sent twice.
//! - A response that ends while its request body is still being sent (an
//!   early 413 or 401 from the upstream) leaves the connection mid-request:
//!   it is closed, so the rest of that upload is cut off.
//! - At most `pool_max_idle` idle connections are kept, none longer than
//!   `pool_idle_timeout`; [`Pool::sweep`] closes the expired ones when
//!   traffic stops.
//!
//! Used for plain HTTP/1.1 requests. h2 upstreams (one multiplexed
//! connection, which does want a task of its own) and WebSocket upgrades go
//! through hyper-util's client ([`super::Upstream`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tower_service::Service;

use super::cap::{Busy, ConnCap};
use super::idle::{IdleStack, Pooled};
use super::UpstreamBody;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Why a request could not be exchanged with the upstream.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (refused, unreachable, connect timeout,
    /// TLS handshake failed).
    #[error("connect: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The upstream's connection cap stayed full for the connect timeout.
    #[error("{0}")]
    Busy(#[from] Busy),
    /// The connection failed while the request was sent or the response
    /// head was read.
    #[error("exchange: {0}")]
    Exchange(#[from] hyper::Error),
}

/// One upstream HTTP/1.1 connection: the request sender and the connection
/// state machine that whoever holds it must poll.
struct Conn {
    sender: SendRequest<UpstreamBody>,
    /// `None` once the connection has completed (closed or failed). It is
    /// dropped then, as its task would be, so a body it was feeding ends.
    conn: Option<Connection<Io, UpstreamBody>>,
    /// Its place under the upstream's connection cap, given back when it
    /// closes.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Conn {
    /// Drives the connection: writes what is queued, reads what arrived.
    fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        if let Poll::Ready(r) = conn.poll_without_shutdown(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            self.conn = None;
        }
    }

    fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Whether it can take another request now. Polls it once (with a waker
    /// that wakes nobody) so that a response just read to its end lets the
    /// connection go idle, and a close already received is noticed.
    fn settle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx);
        self.is_open() && self.sender.is_ready()
    }
}

impl Pooled for Box<Conn> {
    fn settle(&mut self) -> bool {
        Conn::settle(self)
    }
}

/// The idle HTTP/1.1 connections to one upstream and how to make more.
pub struct Pool {
    idle: Arc<IdleStack<Box<Conn>>>,
    connector: HttpsConnector<HttpConnector>,
    connect_timeout: Duration,
    cap: ConnCap,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

/// Either a usable idle connection, or a place in the queue for the next
/// one to come back.
enum Checkout {
    Idle(Box<Conn>),
    Wait(oneshot::Receiver<Box<Conn>>),
}

impl Pool {
    /// An empty pool that connects with `connector` (HTTP/1.1 only) under
    /// `cap`; a connection not up (TCP and TLS) within `connect_timeout`
    /// fails.
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
        cap: ConnCap,
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: IdleStack::under(max_idle, idle_timeout, &cap),
            connector,
            connect_timeout,
            cap,
        })
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.idle_count()
    }

    /// Closes idle connections older than the idle timeout.
    pub fn sweep(&self) {
        self.idle.sweep();
    }

    /// Sends `req` to the upstream named by its URI (absolute-form; it is
    /// written in origin-form) and returns the response head. The body
    /// streams from the same connection, which goes back to the pool once
    /// the body has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let (mut parts, body) = req.into_parts();
        let target = parts.uri.clone();
        // HTTP/1.1 requests carry the origin-form; the authority is in Host.
        if let Some(pq) = parts.uri.path_and_query() {
            parts.uri = Uri::from(pq.clone());
        }
        let mut req = Request::from_parts(parts, body);
        loop {
            let checkout = std::future::poll_fn(|cx| Poll::Ready(self.checkout(cx))).await;
            let (mut conn, reused) = match checkout {
                Checkout::Idle(c) => (c, true),
                // Boxed: connecting is rare and its future is large.
                Checkout::Wait(waiter) => Box::pin(self.connect_or_wait(&target, waiter)).await?,
            };
            let mut exchange = std::pin::pin!(conn.sender.try_send_request(req));
            let result = std::future::poll_fn(|cx| {
                conn.drive(cx);
                exchange.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    return Ok(resp.map(|inner| PooledBody {
                        inner,
                        conn: Some(conn),
                        pool: Arc::clone(self),
                    }))
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the idle connection had closed under us.
                    Some(unsent) if reused => {
                        tracing::debug!(error = %e.error(), "pooled upstream connection closed; resending on another");
                        req = unsent;
                    }
                    _ => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// The newest idle connection that is still usable (stale ones are
    /// closed on the way), or else a place in the waiters' queue.
    fn checkout(&self, cx: &mut Context<'_>) -> Checkout {
        loop {
            let mut conn = match self.idle.pop_or_join() {
                Ok(conn) => conn,
                Err(waiter) => return Checkout::Wait(waiter),
            };
            // Polled with this task's waker: any wake-up from now on
            // (response bytes, the request channel) comes here.
            conn.drive(cx);
            if conn.is_open() && conn.sender.is_ready() {
                return Checkout::Idle(conn);
            }
        }
    }

    /// Opens a connection, unless one comes back to the pool first
    /// ([`IdleStack::connect_or_wait`]). The flag says whether the
    /// connection was used before.
    async fn connect_or_wait(
        self: &Arc<Self>,
        target: &Uri,
        waiter: oneshot::Receiver<Box<Conn>>,
    ) -> Result<(Box<Conn>, bool), PoolError> {
        let connecting = Arc::clone(self).connect(target.clone());
        self.idle.connect_or_wait(waiter, connecting).await
    }

    async fn connect(self: Arc<Self>, target: Uri) -> Result<Box<Conn>, PoolError> {
        let permit = self.cap.acquire().await?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(PoolError::Connect)?;
        // The connector bounds the TCP connect only; a TLS handshake the
        // upstream never answers must end too (a connect finishing in the
        // background has no request timeout over it).
        let io = tokio::time::timeout(self.connect_timeout, connector.call(target))
            .await
            .map_err(|_| PoolError::Connect("connect (with TLS) timed out".into()))?
            .map_err(PoolError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await?;
        Ok(Box::new(Conn {
            sender,
            conn: Some(conn),
            _permit: permit,
        }))
    }

    /// Returns a connection whose response has been read: to the oldest
    /// waiting request, else to the idle list (if there is room), else it
    /// is closed.
    fn put_back(&self, conn: Box<Conn>) {
        self.idle.put(conn);
    }
}

/// A response body read from a pooled connection, which it drives while it
/// is read and returns to the pool at its end.
pub struct PooledBody {
    inner: Incoming,
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.conn.is_some())
            .finish()
    }
}

impl PooledBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            // Trailers are the last frame (hyper's server polls no further).
            Poll::Ready(Some(Ok(f))) if f.is_trailers() || self.inner.is_end_stream() => {
                self.finish()
            }
            // A broken body leaves the connection mid-message: close it.
            Poll::Ready(Some(Err(_))) => self.conn = None,
            _ => {}
        }
        polled
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = this.poll_inner(cx) {
            return Poll::Ready(r);
        }
        // Nothing buffered: let the connection read (it hands what it reads
        // to `inner`, waking this task), then look again.
        match &mut this.conn {
            Some(conn) if conn.is_open() => conn.drive(cx),
            _ => return Poll::Pending,
        }
        this.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left (empty, or read to its end without a
        // final poll) leaves a reusable connection; anything else closes it.
        if self.conn.is_some() && self.inner.is_end_stream() {
            self.finish();
        }
    }
}
