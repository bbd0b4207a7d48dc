//! Idle plain-TCP connections to one `http` upstream, for the fast path.
//!
//! A connection is put back only by whoever read its last response to the
//! end with nothing left over ([`super`] decides); it is then idle and owned
//! by nobody. Checkout takes the newest (warm) one; one idle past
//! `pool_idle_timeout` is closed instead. At most `pool_max_idle` are kept;
//! [`RawPool::sweep`] closes the expired ones when traffic stops.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

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
}

/// Idle connections to one upstream.
#[derive(Debug)]
pub struct RawPool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<Vec<(RawConn, Instant)>>,
}

impl RawPool {
    /// A pool for `host:port`; nothing connects until asked.
    pub fn new(
        host: String,
        port: u16,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            host,
            port,
            connect_timeout,
            max_idle,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The newest idle connection that has not timed out, if any.
    pub fn checkout(&self) -> Option<RawConn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if now.duration_since(since) < self.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Puts an idle connection back (or closes it, when enough are idle).
    pub fn checkin(&self, mut conn: RawConn) {
        conn.reused = true;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes idle connections past the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
    }

    /// How many connections are idle.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A new connection, within the connect timeout (name resolution
    /// included).
    pub async fn connect(&self) -> std::io::Result<RawConn> {
        let connect = async {
            let mut last = None;
            for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
                match connect_one(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "upstream host has no address")
            }))
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        Ok(RawConn {
            stream,
            buf: BytesMut::with_capacity(READ_BUF),
            reused: false,
        })
    }
}

async fn connect_one(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Notice an upstream that vanished while a connection sat idle.
    socket.set_keepalive(true)?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
