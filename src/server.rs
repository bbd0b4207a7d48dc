//! Listeners, connections and shutdown.
//!
//! [`start`] binds the public and admin listeners and spawns their accept
//! loops plus the last-used flusher and the idle upstream connection
//! sweep; it returns a [`Running`] handle with the bound addresses (tests
//! bind `127.0.0.1:0`). Public connections start on the fast path
//! ([`crate::fast`]) when `server.fast_path` is on; from the first request
//! it hands over, and on the admin listener always, they are served by
//! hyper-util's auto builder (HTTP/1.1 and h2 on the same port, upgrades
//! allowed). Both hold every connection to its deadlines (first request
//! head, idle, head after idle: `crate::deadline` for hyper's).
//!
//! With `[tls]` (`[admin_tls]`), a listener's connections first finish a
//! TLS handshake ([`crate::tls::accept`]) within their first-head deadline;
//! then one that chose `h2` by ALPN goes to hyper, and any other (ALPN
//! `http/1.1` or none) is served exactly as a plain TCP connection, fast
//! path included. Each handshake takes the certificates in force when it
//! starts.
//!
//! Shutdown ([`Running::shutdown`], or SIGTERM / ctrl-c in `serve`): stop
//! accepting, let in-flight requests finish for up to
//! `server.shutdown_grace_seconds` (keep-alive connections are told to
//! close after their current request), then flush last-used times.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::body::Body;
use crate::config::ServerConfig;
use crate::deadline::{Activity, Deadlines, Expired, Tracked, Watched};
use crate::fast::{ClientStream, Ended, Prefixed};
use crate::gateway::Gateway;
use crate::rules::Peer;
use crate::signals::Signals;
use crate::store::{FeedEvent, Invalidation, InvalidationFeed};
use crate::usage::flush_quotas;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long shutdown waits for the access log's last lines to be written.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    /// Where the public listener is bound.
    pub public_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    signals: Arc<Signals>,
}

impl Running {
    /// Stops accepting, waits (bounded) for in-flight requests, flushes.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The last requests' access lines, written before the process ends.
        let signals = self.signals;
        let _ = tokio::task::spawn_blocking(move || signals.flush(ACCESS_LOG_FLUSH)).await;
    }
}

/// Where a TLS listener's rustls config comes from: asked at every accept,
/// so that new handshakes take the certificates in force.
type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// Binds both listeners from the config and starts serving.
pub async fn start(gateway: Arc<Gateway>) -> std::io::Result<Running> {
    let server = &gateway.config.server;
    let public = bind("public listener (server.listen)", server.listen).await?;
    let admin = bind("admin listener (server.admin_listen)", server.admin_listen).await?;
    start_on(gateway, public, admin).await
}

/// Binds one listener; a failure names the listener, its config key and
/// the address: `cannot bind the admin listener (server.admin_listen) to
/// 127.0.0.1:8081: Address already in use (os error 98)`.
async fn bind(which: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind the {which} to {addr}: {e}"))
    })
}

/// Starts serving on already-bound listeners. With a shared store
/// (PostgreSQL), subscribes to its invalidation feed first, so that nothing
/// is cached before this instance hears about other instances' changes.
pub async fn start_on(
    gateway: Arc<Gateway>,
    public: TcpListener,
    admin: TcpListener,
) -> std::io::Result<Running> {
    gateway.signals.open_access_log()?;
    let feed =
        gateway.store.subscribe().await.map_err(|e| {
            std::io::Error::other(format!("cannot subscribe to invalidations: {e}"))
        })?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let server = gateway.config.server.clone();

    let g = Arc::clone(&gateway);
    let fast = gateway
        .config
        .server
        .fast_path
        .then(|| Arc::clone(&gateway));
    let public_tls = gateway.config.tls.is_some().then(|| {
        let g = Arc::clone(&gateway);
        Arc::new(move || {
            let snapshot = g.snapshot();
            snapshot.config.tls.as_ref().map(|t| Arc::clone(&t.server))
        }) as TlsSource
    });
    let admin_tls = gateway.config.admin_tls.is_some().then(|| {
        let g = Arc::clone(&gateway);
        Arc::new(move || {
            let snapshot = g.snapshot();
            snapshot
                .config
                .admin_tls
                .as_ref()
                .map(|t| Arc::clone(&t.server))
        }) as TlsSource
    });
    let public_task = tokio::spawn(accept_loop(
        public,
        rx.clone(),
        server.clone(),
        fast,
        public_tls,
        move |req, peer: Arc<Peer>| {
            let g = Arc::clone(&g);
            async move { crate::proxy::handle(&g, req, &peer).await }
        },
    ));
    let g = Arc::clone(&gateway);
    let admin_task = tokio::spawn(accept_loop(
        admin,
        rx.clone(),
        server,
        None,
        admin_tls,
        move |req, _peer: Arc<Peer>| {
            let g = Arc::clone(&g);
            async move { admin::handle(&g, req).await }
        },
    ));
    let mut tasks = vec![public_task, admin_task];
    if let Some(feed) = feed {
        tasks.push(tokio::spawn(invalidation_loop(
            Arc::clone(&gateway),
            feed,
            rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(sweep_loop(Arc::clone(&gateway), rx.clone())));
    tasks.push(tokio::spawn(limits_loop(Arc::clone(&gateway), rx.clone())));
    tasks.push(tokio::spawn(flush_loop(Arc::clone(&gateway), rx)));
    tracing::info!(
        %public_addr,
        %admin_addr,
        public_tls = gateway.config.tls.is_some(),
        admin_tls = gateway.config.admin_tls.is_some(),
        "tokengate listening"
    );
    Ok(Running {
        public_addr,
        admin_addr,
        shutdown: tx,
        tasks,
        signals: Arc::clone(&gateway.signals),
    })
}

/// Flags of a [`TcpClient`]'s last writes: hold the last part-filled
/// segment for the FIN (where the platform has `MSG_MORE`).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_LAST: std::ffi::c_int = libc::MSG_MORE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_LAST: std::ffi::c_int = 0;

/// How long an idle connection told to close (HTTP/2 `GOAWAY`) gets to
/// finish closing before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Accepts connections and serves each on a task of its own: after a TLS
/// handshake when `tls` is given; by the fast path first when `fast` is
/// given (the public listener), by hyper (and `handler`) from the first
/// request the fast path hands over (at once for TLS with ALPN `h2`).
async fn accept_loop<H, F>(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    server: ServerConfig,
    fast: Option<Arc<Gateway>>,
    tls: Option<TlsSource>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let deadlines = Deadlines {
        header: server.header_read_timeout,
        idle: server.idle_timeout,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timer would also run while a keep-alive
    // connection is idle; `crate::deadline` keeps every deadline instead.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.h2_max_concurrent_streams);
    // For a connection handed over after shutdown began: it serves the
    // request it was handed and closes (hyper's graceful shutdown would
    // close it before reading the request, unanswered).
    let mut closing = builder.clone();
    closing.http1().keep_alive(false);
    let builders = Arc::new((builder, closing));
    // tokio takes an accepted socket as readable, so that its first read is
    // tried at once; under load the client's first bytes have mostly not
    // come yet, and that read is an `EAGAIN` syscall per connection (two
    // in three in the load bench). nginx waits for a new socket's first
    // read event instead, and so does this on a current-thread runtime:
    // there the reactor cannot run between the accept and the clearing
    // below, so what is cleared is only tokio's assumption, never an event
    // (an edge cleared would never come again). On a multi-thread runtime
    // the reactor may be running elsewhere, and tokio's way stays.
    let first_read_waits =
        tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
    // One wait for shutdown for the loop's life, not one per connection.
    let mut stop_rx = shutdown.clone();
    let changed = std::pin::pin!(stop_rx.changed());
    let mut stop = crate::fast::Stop::new(changed);
    let mut stopped = stop.arm().await;
    while !stopped {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                if first_read_waits {
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                    });
                }
                let accepted = tokio::time::Instant::now();
                // Held for the connection's whole life, fast path included,
                // so shutdown waits for it.
                let held = graceful.watcher();
                let builders = Arc::clone(&builders);
                let h = handler.clone();
                let fast = fast.clone();
                let stop = shutdown.clone();
                // A TLS listener never serves plain TCP, whatever the
                // config in force says (a reload cannot turn TLS off).
                let tls = match tls.as_ref().map(|source| source()) {
                    None => None,
                    Some(Some(config)) => Some(config),
                    Some(None) => continue,
                };
                // Boxed before it is spawned: a future is copied whole
                // each time it moves (into its task, and each time the
                // task changes stage), and a connection's is several
                // kilobytes (the fast path's state, hyper's, TLS's),
                // copied per connection. A box moves as a pointer.
                let connection = Box::pin(async move {
                    let _held = held;
                    let Some(tls) = tls else {
                        let peer = Peer::new(addr);
                        let stream = TcpClient::new(stream);
                        serve_connection(stream, peer, accepted, fast, h, builders, stop, deadlines).await;
                        return;
                    };
                    // A handshake is several writes each way.
                    let stream = TcpClient::nodelay_now(stream);
                    // Boxed apart: the TLS state (kilobytes) is no part
                    // of a plain connection's future, nor copied with it.
                    let tls = async move {
                        let by = accepted + deadlines.header;
                        match crate::tls::accept(tls, stream, by).await {
                            Ok((stream, h2)) => {
                                let peer = Peer::new(addr).over_tls(true);
                                let fast = fast.filter(|_| !h2);
                                serve_connection(stream, peer, accepted, fast, h, builders, stop, deadlines).await;
                            }
                            Err(e) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed; closing"),
                        }
                    };
                    Box::pin(tls).await;
                });
                tokio::spawn(connection);
            }
            () = std::future::poll_fn(|cx| stop.poll_stopped(&shutdown, cx)) => stopped = true,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections finished"),
        _ = tokio::time::sleep(server.shutdown_grace) => {
            tracing::warn!(grace_seconds = server.shutdown_grace.as_secs(), "shutdown grace expired; closing remaining connections");
        }
    }
}

/// Serves one client connection (TCP, or TLS over it): the fast path first
/// when given, then hyper, held to its [`Deadlines`] throughout (the first
/// request head's from `accepted`).
#[allow(clippy::too_many_arguments)]
async fn serve_connection<S, H, F>(
    mut stream: S,
    peer: Peer,
    accepted: tokio::time::Instant,
    fast: Option<Arc<Gateway>>,
    handler: H,
    builders: Arc<(auto::Builder<TokioExecutor>, auto::Builder<TokioExecutor>)>,
    mut stop: watch::Receiver<bool>,
    deadlines: Deadlines,
) where
    S: ClientStream + 'static,
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // Worked out once per connection, not per request. Shared (`Arc`) only
    // once hyper serves it: the fast path borrows it.
    let addr = peer.addr;
    let (prefix, header) = match &fast {
        Some(g) => match crate::fast::serve(&mut stream, g, &peer, &mut stop, accepted).await {
            Ended::Closed => return,
            // Its first request head to hyper is due within the header
            // timeout of the hand-over.
            Ended::Handoff(bytes) => (bytes, deadlines.header),
        },
        // Within the header timeout of the accept (a TLS handshake counts).
        None => (
            Bytes::new(),
            deadlines.header.saturating_sub(accepted.elapsed()),
        ),
    };
    // From here hyper serves it: boxed, so that its state (hyper's HTTP/1.1
    // and h2 servers) is no part of the future of a connection the fast
    // path serves to its end, nor copied with it.
    let peer = Arc::new(peer);
    Box::pin(serve_hyper(
        stream, prefix, header, peer, addr, handler, builders, stop, deadlines,
    ))
    .await;
}

/// Serves a connection with hyper (`prefix`: bytes already read from it),
/// its first request head due within `header`.
#[allow(clippy::too_many_arguments)]
async fn serve_hyper<S, H, F>(
    stream: S,
    prefix: Bytes,
    header: Duration,
    peer: Arc<Peer>,
    addr: SocketAddr,
    handler: H,
    builders: Arc<(auto::Builder<TokioExecutor>, auto::Builder<TokioExecutor>)>,
    mut stop: watch::Receiver<bool>,
    deadlines: Deadlines,
) where
    S: ClientStream + 'static,
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Activity::new(header);
    let svc = {
        let activity = Arc::clone(&activity);
        service_fn(move |req: Request<Incoming>| {
            let in_flight = activity.begin(req.version());
            // Boxed once here: hyper moves the service future a few times
            // before polling it, and a request's future is several
            // kilobytes.
            let fut = Box::pin(handler(req, Arc::clone(&peer)));
            async move {
                let resp = fut.await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        })
    };
    let io = TokioIo::new(Watched::new(
        Prefixed::new(prefix, stream),
        Arc::clone(&activity),
    ));
    let (builder, closing) = &*builders;
    let shutting_down = *stop.borrow();
    let builder = if shutting_down { closing } else { builder };
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    // Set once the connection has been told to close: by then it must be
    // gone (`None`: shutdown, bounded by the listener's grace).
    let mut closing_by: Option<Option<tokio::time::Instant>> = None;
    let served = loop {
        let give_up = async {
            match closing_by {
                Some(Some(at)) => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => break r,
            changed = stop.changed(), if closing_by.is_none() && !shutting_down => {
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                    closing_by = Some(None);
                }
            }
            why = activity.expired(deadlines), if closing_by.is_none() => match why {
                Expired::Head => {
                    tracing::debug!(peer = %addr, "no complete request head in time; closing");
                    return;
                }
                Expired::Stalled => {
                    tracing::debug!(peer = %addr, "the client read nothing of what it was sent in time; closing");
                    return;
                }
                Expired::Idle | Expired::StreamStalled => {
                    if why == Expired::StreamStalled {
                        tracing::debug!(peer = %addr, "an HTTP/2 stream waited too long for the client's window; closing");
                    }
                    conn.as_mut().graceful_shutdown();
                    closing_by = Some(Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE));
                }
            },
            () = give_up => return,
        }
    };
    if let Err(e) = served {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}

/// A client connection's socket, as the fast path writes to it (directly,
/// or through TLS).
///
/// It turns Nagle's algorithm off (`TCP_NODELAY`, as every client
/// connection is served) just before its second write. Nagle holds a small
/// segment back only while data sent earlier is unacknowledged, so a
/// connection's first write goes out at once either way; one answered in a
/// single write (`Connection: close`, the usual case) is spared the
/// `setsockopt`, as nginx spares it.
///
/// Once told its writes are the last before the close
/// ([`ClientStream::last_writes`]), it sends them with `MSG_MORE`: the
/// kernel holds back their last part-filled segment, and the close (or the
/// FIN of a lingering close) sends it with the FIN flag set. A response
/// and its FIN go out as one segment instead of two (over TLS, the last
/// record, `close_notify` and the FIN as one instead of three), which on
/// loopback is one fewer packet through the client's receive path on this
/// core, and one wake-up of the client instead of two.
#[derive(Debug)]
struct TcpClient {
    stream: TcpStream,
    /// Something has been written.
    wrote: bool,
    /// `TCP_NODELAY` has been set.
    nodelay: bool,
    /// The close follows the writes from here on at once.
    last: bool,
}

impl TcpClient {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            wrote: false,
            nodelay: false,
            last: false,
        }
    }

    /// A connection that writes several times from the start (a TLS
    /// handshake), with `TCP_NODELAY` set at once.
    fn nodelay_now(stream: TcpStream) -> Self {
        let nodelay = stream.set_nodelay(true).is_ok();
        Self {
            nodelay,
            ..Self::new(stream)
        }
    }

    /// Before a write: from the second on, with `TCP_NODELAY`.
    fn before_write(&mut self) {
        if self.wrote && !self.nodelay {
            self.nodelay = true;
            let _ = self.stream.set_nodelay(true);
        }
    }

    /// A write of the connection's last bytes, which the kernel may hold
    /// for the FIN (`MSG_MORE`), driven by the runtime's readiness as
    /// tokio's own writes are.
    fn poll_send_last(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(&self.stream).send_with_flags(buf, SEND_LAST)
            });
            match sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    /// After a write: whether it wrote anything.
    fn after_write(&mut self, polled: &Poll<std::io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote = true;
        }
    }
}

impl ClientStream for TcpClient {
    fn nothing_unread(&self) -> bool {
        self.stream.nothing_unread()
    }

    fn last_writes(&mut self) {
        self.last = true;
    }
}

impl AsyncRead for TcpClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.before_write();
        let polled = if this.last {
            this.poll_send_last(cx, buf)
        } else {
            Pin::new(&mut this.stream).poll_write(cx, buf)
        };
        this.after_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.before_write();
        let polled = match bufs.iter().find(|b| !b.is_empty()) {
            Some(first) if this.last => this.poll_send_last(cx, first),
            _ => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
        };
        this.after_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Applies other instances' changes to this instance's cache as they commit.
async fn invalidation_loop(
    gateway: Arc<Gateway>,
    mut feed: Box<dyn InvalidationFeed>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = feed.next() => e,
            _ = shutdown.changed() => return,
        };
        let cache = &gateway.cache;
        match event {
            FeedEvent::Invalidate(Invalidation::Token(h)) => cache.invalidate_token(h).await,
            FeedEvent::Invalidate(Invalidation::Account(id)) => cache.invalidate_account(id),
            FeedEvent::Invalidate(Invalidation::Tenant(id)) => cache.invalidate_tenant(id),
            FeedEvent::Resynced => {
                // Events may have been missed while the feed was down.
                cache.invalidate_all();
                gateway.metrics.feed_resyncs.inc();
                tracing::info!("invalidation feed resynced; cache cleared");
            }
        }
        if let FeedEvent::Invalidate(_) = event {
            gateway.metrics.invalidations_received.inc();
        }
    }
}

/// Closes idle upstream connections past their timeout, also when no
/// request comes to find them.
async fn sweep_loop(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(gateway.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => gateway.sweep_idle_upstreams(),
            _ = shutdown.changed() => break,
        }
    }
}

async fn flush_loop(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(gateway.config.store.last_used_flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                gateway
                    .last_used
                    .flush(gateway.store.as_ref(), &gateway.metrics, gateway.clock().now())
                    .await;
            }
            _ = shutdown.changed() => break,
        }
    }
    // Let the listeners drain before the final flush, so uses by requests
    // finishing during the grace period are written too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if !gateway
        .last_used
        .flush(
            gateway.store.as_ref(),
            &gateway.metrics,
            gateway.clock().now(),
        )
        .await
    {
        tracing::warn!(
            pending = gateway.last_used.pending(),
            "final last-used flush failed; these times are lost"
        );
    }
}

/// Writes quota counts every `rate_limits.quota_flush_seconds` and drops
/// the rate-limit keys whose windows hold nothing; a last write at
/// shutdown.
async fn limits_loop(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(gateway.limiter.config().quota_flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                flush_quotas(&gateway.limiter, gateway.store.as_ref()).await;
                gateway.limiter.sweep(gateway.clock().now());
            }
            _ = shutdown.changed() => break,
        }
    }
    // As for last-used times: after the listeners have drained.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if !flush_quotas(&gateway.limiter, gateway.store.as_ref()).await {
        tracing::warn!("final quota count flush failed; these counts are lost");
    }
}

/// Resolves on SIGTERM or ctrl-c.
///
/// The SIGTERM handler is installed when this is called, not when the
/// future is first polled: called before the listeners start, a SIGTERM
/// from "listening" on shuts down cleanly rather than killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair over loopback: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn nagle_is_turned_off_before_the_second_write() {
        let (mut client, server) = pair().await;
        let mut s = TcpClient::new(server);
        assert!(!s.stream.nodelay().unwrap());
        s.write_all(b"first").await.unwrap();
        assert!(!s.stream.nodelay().unwrap());
        s.write_all(b"second").await.unwrap();
        assert!(s.stream.nodelay().unwrap());
        let mut got = [0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"firstsecond");
    }

    #[tokio::test]
    async fn a_client_socket_tells_whether_anything_it_sent_is_unread() {
        let (mut client, server) = pair().await;
        let mut s = TcpClient::new(server);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        s.stream.readable().await.unwrap();
        assert!(!s.nothing_unread());
        // A read that comes up short has taken everything there was.
        let mut buf = BytesMut::with_capacity(1024);
        s.read_buf(&mut buf).await.unwrap();
        assert!(s.nothing_unread());
        // More bytes, once the runtime has seen them.
        client.write_all(b"\r\n").await.unwrap();
        s.stream.readable().await.unwrap();
        assert!(!s.nothing_unread());
        // The client's FIN too: its read is still to be taken.
        s.read_buf(&mut buf).await.unwrap();
        assert!(s.nothing_unread());
        drop(client);
        s.stream.readable().await.unwrap();
        assert!(!s.nothing_unread());
    }
}
