//! Idle plain-TCP connections to one `http` upstream, for the fast path.
//!
//! A connection is put back only by whoever read its last response to the
//! end with nothing left over (the fast path, `crate::fast`, decides). It goes to the longest
//! waiting request if there is one, else it is idle and owned by nobody.
//! Checkout takes the newest (warm) idle one; one idle past
//! `pool_idle_timeout` is closed instead. A request that finds none both
//! connects and waits, and takes whichever comes first: in a burst, a
//! connection coming back serves it long before a thousand new ones would
//! be accepted. At most `pool_max_idle` are kept; [`RawPool::sweep`]
//! closes the expired ones when traffic stops.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tower_service::Service;

use super::cap::{Busy, ConnCap};
use super::pool::Waiters;

/// Read buffer size of an upstream connection.
const READ_BUF: usize = 16 * 1024;

/// One upstream connection and what has been read from it but not used.
#[derive(Debug)]
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read and not yet passed on.
    pub buf: BytesMut,
    /// Whether it has carried a request before (and so may have been
    /// closed by the upstream while idle).
    pub reused: bool,
    /// Its place under the upstream's connection cap, given back when it
    /// closes.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The upstream's connection cap stayed full for the connect timeout.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// Connecting failed or timed out.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Idle connections to one upstream.
#[derive(Debug)]
pub struct RawPool {
    /// The same TCP connector the hyper clients use (`super::tcp_connector`).
    connector: HttpConnector,
    /// The upstream, as the connector takes it.
    target: Uri,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    cap: ConnCap,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Newest last.
    idle: Vec<(RawConn, Instant)>,
    /// Requests waiting for a connection, oldest first.
    waiters: Waiters<RawConn>,
}

impl RawPool {
    /// A pool for `target` (scheme and authority), connecting through
    /// `connector` under `cap`; nothing connects until asked.
    pub fn new(
        connector: HttpConnector,
        target: Uri,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
        cap: ConnCap,
    ) -> Self {
        Self {
            connector,
            target,
            connect_timeout,
            max_idle,
            idle_timeout,
            cap,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest idle connection that has not timed out, if any.
    pub fn checkout(&self) -> Option<RawConn> {
        let now = Instant::now();
        let mut inner = self.lock();
        while let Some((conn, since)) = inner.idle.pop() {
            if now.duration_since(since) < self.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// A connection for a request that found none idle: a new one, or one
    /// put back while it connects, whichever comes first. A connect that
    /// loses the race is not wasted: its connection joins the pool, so a
    /// burst opens at most one connection per request in flight.
    pub async fn wait_or_connect(self: &Arc<Self>) -> Result<RawConn, ConnectError> {
        let mut rx = self.lock().waiters.join();
        let pool = Arc::clone(self);
        let mut connect = Box::pin(async move { pool.connect().await });
        tokio::select! {
            biased;
            Ok(conn) = &mut rx => {
                let pool = Arc::clone(self);
                tokio::spawn(async move {
                    if let Ok(conn) = connect.await {
                        pool.put(conn);
                    }
                });
                Ok(conn)
            }
            connected = &mut connect => {
                // One may have been handed over just now: put it back.
                rx.close();
                if let Ok(conn) = rx.try_recv() {
                    self.put(conn);
                }
                connected
            }
        }
    }

    /// Puts a connection back after a response: to the oldest waiting
    /// request, else idle (or closes it, when enough are idle).
    pub fn checkin(&self, mut conn: RawConn) {
        conn.reused = true;
        self.put(conn);
    }

    fn put(&self, conn: RawConn) {
        let mut inner = self.lock();
        let Some(conn) = inner.waiters.hand_over(conn) else {
            return;
        };
        if inner.idle.len() < self.max_idle {
            inner.idle.push((conn, Instant::now()));
        }
    }

    /// Closes idle connections past the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner
            .idle
            .retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
        inner.waiters.prune();
    }

    /// A new connection, within the connect timeout (name resolution
    /// included), once the upstream's cap has room for it (waiting at
    /// most the connect timeout for that too).
    pub async fn connect(&self) -> Result<RawConn, ConnectError> {
        let permit = self.cap.acquire().await?;
        let mut connector = self.connector.clone();
        let connect = async {
            std::future::poll_fn(|cx| connector.poll_ready(cx))
                .await
                .map_err(std::io::Error::other)?;
            connector
                .call(self.target.clone())
                .await
                .map_err(std::io::Error::other)
        };
        let io = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        Ok(RawConn {
            stream: io.into_inner(),
            buf: BytesMut::with_capacity(READ_BUF),
            reused: false,
            _permit: permit,
        })
    }
}
