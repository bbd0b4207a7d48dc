//! Idle plain-TCP connections to one `http` upstream, for the fast path.
//!
//! A connection is put back only by whoever read its last response to the
//! end with nothing left over (the fast path, `crate::fast`, decides).
//! Idle connections and waiting requests are kept by the pools' shared
//! core ([`super::idle`]); the fast path checks a connection taken from it
//! before use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tower_service::Service;

use tokio::sync::oneshot;

use super::cap::{Busy, ConnCap};
use super::idle::{IdleStack, Pooled};

/// Read buffer size of an upstream connection.
pub const UPSTREAM_READ_BUF: usize = 16 * 1024;

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
    cap: ConnCap,
    idle: Arc<IdleStack<RawConn>>,
}

impl Pooled for RawConn {}

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
            idle: IdleStack::under(max_idle, idle_timeout, &cap),
            cap,
        }
    }

    /// The newest idle connection that has not timed out (judged at
    /// `now`), or else a place in the queue for the next one to come back.
    pub fn pop_or_join(&self, now: Instant) -> Result<RawConn, oneshot::Receiver<RawConn>> {
        self.idle.pop_or_join_at(now)
    }

    /// A connection for a request that found none idle: a new one, or one
    /// put back to `waiter` while it connects, whichever comes first
    /// ([`IdleStack::connect_or_wait`]).
    pub async fn connect_or_wait(
        self: &Arc<Self>,
        waiter: oneshot::Receiver<RawConn>,
    ) -> Result<RawConn, ConnectError> {
        let pool = Arc::clone(self);
        let connecting = async move { pool.connect().await };
        Ok(self.idle.connect_or_wait(waiter, connecting).await?.0)
    }

    /// Puts a connection back after a response: to the oldest waiting
    /// request, else idle (or closes it, when enough are idle).
    pub fn checkin(&self, mut conn: RawConn) {
        conn.reused = true;
        self.idle.put(conn);
    }

    /// Closes idle connections past the idle timeout.
    pub fn sweep(&self) {
        self.idle.sweep();
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
            buf: BytesMut::with_capacity(UPSTREAM_READ_BUF),
            reused: false,
            _permit: permit,
        })
    }
}
