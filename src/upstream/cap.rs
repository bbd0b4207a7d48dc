//! The cap on connections to one upstream (`upstreams[].max_connections`).
//!
//! Every connection the gateway opens to an upstream, on either path and
//! whichever pool or client opens it, holds a permit of that upstream's
//! [`ConnCap`] for as long as it is open, idle or busy. So however many
//! requests arrive at once (one HTTP/2 client can send a hundred streams
//! per connection), the upstream never sees more than `max_connections`
//! from this instance. A request that needs a new connection waits for a
//! permit for at most the upstream's connect timeout, and meanwhile takes
//! any connection that comes back to its pool first; one that gets neither
//! is answered 503 `UPSTREAM_BUSY` ([`Busy`]). A connection no request is
//! using never keeps a request out: before one waits, an idle connection
//! in another pool under the same cap (the other path's) is closed to make
//! room ([`Reclaim`]), and while one waits, a connection coming back to a
//! pool none of whose own requests waits is closed rather than kept idle
//! ([`Pressure`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

/// No permit came free within the connect timeout.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("upstream connection limit reached")]
pub struct Busy;

/// A pool under a [`ConnCap`] whose idle connections can be closed to
/// make room for a request that finds the cap full.
pub trait Reclaim: Send + Sync {
    /// Closes one idle connection, the longest idle; whether there was one.
    fn close_idle(&self) -> bool;
}

/// The connections one upstream may have open at once.
#[derive(Clone)]
pub struct ConnCap {
    permits: Arc<Semaphore>,
    wait: Duration,
    /// The pools under this cap, to close an idle connection of when it
    /// is full.
    pools: Arc<Mutex<Vec<Weak<dyn Reclaim>>>>,
    /// Requests waiting for a permit: while there are any, a connection
    /// that comes back to a pool with no request of its own waiting is
    /// closed rather than kept idle ([`Pressure`]).
    waiting: Arc<AtomicUsize>,
}

/// Whether requests are waiting for a permit of a [`ConnCap`]: what a pool
/// asks before it keeps a connection idle.
#[derive(Clone, Debug)]
pub struct Pressure(Arc<AtomicUsize>);

impl Pressure {
    /// Some request is waiting for a permit.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// Counts a request as waiting for as long as it waits (or until its
/// future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for ConnCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCap")
            .field("available", &self.permits.available_permits())
            .field("wait", &self.wait)
            .finish()
    }
}

impl ConnCap {
    /// At most `max` connections; a new one waits at most `wait` for a
    /// permit.
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            wait,
            pools: Arc::default(),
            waiting: Arc::default(),
        }
    }

    /// Whether requests are waiting for a permit, for a pool to ask.
    pub fn pressure(&self) -> Pressure {
        Pressure(Arc::clone(&self.waiting))
    }

    /// Registers a pool whose idle connections give way when the cap is
    /// full.
    pub fn reclaim_from(&self, pool: Weak<dyn Reclaim>) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pool);
    }

    /// A permit for one more connection, held for its life. When the cap
    /// is full, idle connections are closed, one at a time, until a permit
    /// comes free or none is left; then it waits, and meanwhile every
    /// connection that comes back idle to a pool is closed for it
    /// ([`Pressure`]).
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(p);
        }
        // Counted before the idle ones are looked at: a connection put
        // back after that look sees the count (the pool's lock orders
        // the two).
        let _waiting = Waiting::start(&self.waiting);
        while self.close_one_idle() {
            if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
                return Ok(p);
            }
        }
        match tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            // Timed out (or closed, which this semaphore never is).
            _ => Err(Busy),
        }
    }
}

impl ConnCap {
    /// Closes one idle connection (the longest idle of the first pool,
    /// in registration order, that has one); whether one was. The pools
    /// are called outside the lock.
    fn close_one_idle(&self) -> bool {
        let pools: Vec<Arc<dyn Reclaim>> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        pools.iter().any(|p| p.close_idle())
    }
}

/// Whether `e`, or any error under it, is [`Busy`].
pub fn is_busy(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<Busy>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A connector whose connections each hold a permit of `cap`: for the
/// hyper-util client (h2 upstreams, WebSocket upgrades).
#[derive(Clone, Debug)]
pub struct CappedConnector<C> {
    inner: C,
    cap: ConnCap,
}

impl<C> CappedConnector<C> {
    /// `inner`, capped by `cap`.
    pub fn new(inner: C, cap: ConnCap) -> Self {
        Self { inner, cap }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> Service<Uri> for CappedConnector<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    type Response = Capped<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // The clone that was not polled ready takes this one's place (the
        // usual tower idiom): `self.inner` is the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cap = self.cap.clone();
        Box::pin(async move {
            let permit = cap.acquire().await?;
            let io = inner.call(dst).await.map_err(Into::into)?;
            Ok(Capped {
                io,
                _permit: permit,
            })
        })
    }
}

/// A connection holding its permit.
#[derive(Debug)]
pub struct Capped<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: Connection> Connection for Capped<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Capped<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Capped<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_permit_is_refused_when_none_comes_free_in_time() {
        let cap = ConnCap::new(1, Duration::from_millis(20));
        let held = cap.acquire().await;
        assert!(held.is_ok());
        assert!(matches!(cap.acquire().await, Err(Busy)));
        drop(held);
        assert!(cap.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn a_waiting_connection_gets_the_permit_of_one_that_closes() {
        let cap = ConnCap::new(1, Duration::from_secs(30));
        let held = cap.acquire().await;
        let waiting = tokio::spawn({
            let cap = cap.clone();
            async move { cap.acquire().await.is_ok() }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiting.await.unwrap_or(false));
    }

    struct Held {
        _permit: OwnedSemaphorePermit,
    }

    impl crate::upstream::idle::Pooled for Held {}

    fn two_pools(cap: &ConnCap) -> [Arc<crate::upstream::idle::IdleStack<Held>>; 2] {
        let pool = || crate::upstream::idle::IdleStack::under(4, Duration::from_secs(60), cap);
        [pool(), pool()]
    }

    #[tokio::test]
    async fn an_idle_connection_of_another_pool_gives_way_when_the_cap_is_full() {
        // No waiting at all: only a permit free at once, or made free, counts.
        let cap = ConnCap::new(1, Duration::ZERO);
        let [one, other] = two_pools(&cap);
        let busy = cap.acquire().await.unwrap();
        assert!(matches!(cap.acquire().await, Err(Busy)), "one in use");
        // Idle in one pool: closed for a connection the other needs.
        other.put(Held { _permit: busy });
        let made = cap.acquire().await;
        assert!(made.is_ok());
        assert_eq!(other.idle_count(), 0);
        one.put(Held {
            _permit: made.unwrap(),
        });
        assert!(cap.acquire().await.is_ok());
        assert_eq!(one.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_coming_back_idle_goes_to_a_request_waiting_at_the_cap() {
        let cap = ConnCap::new(1, Duration::from_secs(60));
        let [_, other] = two_pools(&cap);
        let busy = cap.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let cap = cap.clone();
            async move { cap.acquire().await.is_ok() }
        });
        while !cap.pressure().is_on() {
            tokio::task::yield_now().await;
        }
        // The busy connection's response ends: it comes back to its pool,
        // which no request of its own waits on. It is closed, not kept.
        other.put(Held { _permit: busy });
        assert_eq!(other.idle_count(), 0);
        assert!(waiting.await.unwrap());
        assert!(!cap.pressure().is_on());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("client error")]
    struct Wrapper(#[source] BoxError);

    #[test]
    fn busy_is_found_under_other_errors() {
        assert!(is_busy(&Wrapper(Box::new(Busy))));
        assert!(is_busy(&Wrapper(Box::new(Wrapper(Box::new(Busy))))));
        assert!(!is_busy(&Wrapper("refused".into())));
    }
}
