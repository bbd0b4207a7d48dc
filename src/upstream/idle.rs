//! The core both upstream pools share ([`super::pool`] for hyper's
//! HTTP/1.1 connections, [`super::raw`] for the fast path's sockets): a
//! stack of idle connections, newest on top, and the queue of requests
//! waiting for one. Checkout takes the newest idle connection (the warm
//! one), dropping any past `pool_idle_timeout` on the way; a connection
//! coming back goes to the oldest waiting request, else onto the stack (at
//! most `pool_max_idle` of them), else it is closed. A request that finds
//! none idle both connects and waits, and takes whichever comes first
//! ([`IdleStack::connect_or_wait`]): in a burst, a connection coming back
//! serves it long before a thousand new ones would be accepted, and the
//! connect that lost the race is not wasted but joins the stack.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::cap::{ConnCap, Pressure, Reclaim};

/// A pooled connection.
pub trait Pooled: Send + 'static {
    /// Whether it can take another request, after settling what it must
    /// (a response just read to its end, a close already received). One
    /// that cannot is closed rather than kept or handed over.
    fn settle(&mut self) -> bool {
        true
    }
}

/// Requests waiting for a connection, oldest first.
#[derive(Debug)]
struct Waiters<T>(VecDeque<oneshot::Sender<T>>);

impl<T> Waiters<T> {
    /// Joins the queue. Requests whose own connection won leave their place
    /// behind; those are cleared out now and then (amortised: at each power
    /// of two from 64), and at every [`Waiters::prune`].
    fn join(&mut self) -> oneshot::Receiver<T> {
        let n = self.0.len();
        if n >= 64 && n.is_power_of_two() {
            self.prune();
        }
        let (tx, rx) = oneshot::channel();
        self.0.push_back(tx);
        rx
    }

    /// Gives `conn` to the oldest request still waiting; hands it back if
    /// there is none.
    fn hand_over(&mut self, mut conn: T) -> Option<T> {
        while let Some(waiter) = self.0.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return None,
                // That request gave up (or got its own connection).
                Err(back) => conn = back,
            }
        }
        Some(conn)
    }

    /// Drops the places of requests that stopped waiting.
    fn prune(&mut self) {
        self.0.retain(|w| !w.is_closed());
    }
}

/// What the stack holds, under one lock.
#[derive(Debug)]
struct Shared<T> {
    /// Idle connections and since when, oldest first.
    idle: Vec<(T, Instant)>,
    waiters: Waiters<T>,
}

/// The idle connections to one upstream and the requests waiting for one.
#[derive(Debug)]
pub struct IdleStack<T> {
    shared: Mutex<Shared<T>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Requests of other pools waiting at the upstream's cap: a connection
    /// none of this pool's requests waits for is closed for them, not kept.
    pressure: Option<Pressure>,
}

impl<T: Pooled> IdleStack<T> {
    /// Keeps at most `max_idle` connections, none idle past `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            shared: Mutex::new(Shared {
                idle: Vec::new(),
                waiters: Waiters(VecDeque::new()),
            }),
            max_idle,
            idle_timeout,
            pressure: None,
        }
    }

    /// [`Self::new`], for a pool under `cap`: its idle connections give
    /// way to the cap's other pools ([`Reclaim`], [`Pressure`]).
    pub fn under(max_idle: usize, idle_timeout: Duration, cap: &ConnCap) -> Arc<Self> {
        let stack = Arc::new(Self {
            pressure: Some(cap.pressure()),
            ..Self::new(max_idle, idle_timeout)
        });
        cap.reclaim_from(Arc::downgrade(&stack) as std::sync::Weak<dyn Reclaim>);
        stack
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<T>> {
        // Nothing under this lock can panic half-way; a poisoned lock still
        // holds a consistent stack.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    /// The newest idle connection not past the idle timeout, or else (under
    /// the same lock, so none comes back unseen in between) a place in the
    /// queue. Expired ones are closed on the way.
    pub fn pop_or_join(&self) -> Result<T, oneshot::Receiver<T>> {
        self.pop_or_join_at(Instant::now())
    }

    /// [`Self::pop_or_join`], the idle timeout judged at `now`.
    pub fn pop_or_join_at(&self, now: Instant) -> Result<T, oneshot::Receiver<T>> {
        let mut shared = self.lock();
        while let Some((conn, since)) = shared.idle.pop() {
            if now.duration_since(since) < self.idle_timeout {
                return Ok(conn);
            }
        }
        Err(shared.waiters.join())
    }

    /// Puts a connection back: to the oldest waiting request, else onto
    /// the stack (when there is room and no request of another pool
    /// waits at the cap), else it is closed. One that cannot take another
    /// request ([`Pooled::settle`]) is closed.
    pub fn put(&self, mut conn: T) {
        if !conn.settle() {
            return;
        }
        let closed = {
            let mut shared = self.lock();
            match shared.waiters.hand_over(conn) {
                None => None,
                Some(conn)
                    if shared.idle.len() < self.max_idle
                        && !self.pressure.as_ref().is_some_and(Pressure::is_on) =>
                {
                    shared.idle.push((conn, Instant::now()));
                    None
                }
                Some(conn) => Some(conn),
            }
        };
        // Closed (its permit given back) outside the lock.
        drop(closed);
    }

    /// Closes idle connections past the idle timeout (outside the lock),
    /// and forgets requests that stopped waiting.
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<(T, Instant)> = {
            let mut shared = self.lock();
            let (old, keep) = std::mem::take(&mut shared.idle)
                .into_iter()
                .partition(|(_, since)| now.duration_since(*since) >= self.idle_timeout);
            shared.idle = keep;
            shared.waiters.prune();
            old
        };
        drop(expired);
    }

    /// For a request that found none idle: `connecting`'s new connection,
    /// or one put back to `waiter` meanwhile, whichever comes first (the
    /// flag says it is a reused one). A connect that loses the race goes on
    /// in the background and its connection joins the stack; one handed
    /// over just as a connect won goes back too.
    pub async fn connect_or_wait<E: Send + 'static>(
        self: &Arc<Self>,
        mut waiter: oneshot::Receiver<T>,
        connecting: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<(T, bool), E> {
        let mut connecting = Box::pin(connecting);
        tokio::select! {
            biased;
            Ok(conn) = &mut waiter => {
                let stack = Arc::clone(self);
                tokio::spawn(async move {
                    if let Ok(conn) = connecting.await {
                        stack.put(conn);
                    }
                });
                Ok((conn, true))
            }
            made = &mut connecting => {
                waiter.close();
                if let Ok(handed) = waiter.try_recv() {
                    self.put(handed);
                }
                made.map(|c| (c, false))
            }
        }
    }
}

impl<T: Pooled> Reclaim for IdleStack<T> {
    fn close_idle(&self) -> bool {
        let oldest = {
            let mut shared = self.lock();
            (!shared.idle.is_empty()).then(|| shared.idle.remove(0))
        };
        // Closed (its permit given back) outside the lock.
        oldest.is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, PartialEq)]
    struct C(u32, bool);

    impl Pooled for C {
        fn settle(&mut self) -> bool {
            self.1
        }
    }

    #[test]
    fn newest_first_bounded_and_unusable_ones_closed() {
        let s = IdleStack::new(2, Duration::from_secs(60));
        s.put(C(1, true));
        s.put(C(2, true));
        s.put(C(3, true)); // no room: closed
        s.put(C(4, false)); // cannot take another request: closed
        assert_eq!(s.idle_count(), 2);
        assert_eq!(s.pop_or_join().unwrap(), C(2, true));
        assert_eq!(s.pop_or_join().unwrap(), C(1, true));
        assert!(s.pop_or_join().is_err());
    }

    #[test]
    fn a_returning_connection_goes_to_the_oldest_waiter_first() {
        let s = IdleStack::new(4, Duration::from_secs(60));
        let Err(mut first) = s.pop_or_join() else {
            panic!("empty stack")
        };
        let Err(mut second) = s.pop_or_join() else {
            panic!("empty stack")
        };
        s.put(C(7, true));
        assert_eq!(first.try_recv().unwrap(), C(7, true));
        assert!(second.try_recv().is_err());
        // A waiter that gave up is skipped.
        drop(second);
        s.put(C(8, true));
        assert_eq!(s.idle_count(), 1);
    }

    #[test]
    fn expired_connections_are_never_handed_out() {
        let s = IdleStack::new(4, Duration::ZERO);
        s.put(C(1, true));
        assert!(s.pop_or_join().is_err());
        s.put(C(2, true));
        s.sweep();
        assert_eq!(s.idle_count(), 0);
    }

    #[tokio::test]
    async fn the_connect_that_loses_the_race_joins_the_stack() {
        let s = Arc::new(IdleStack::new(4, Duration::from_secs(60)));
        let Err(waiter) = s.pop_or_join() else {
            panic!("empty stack")
        };
        let (tx, rx) = oneshot::channel::<()>();
        let connecting = async move {
            let _ = rx.await;
            Ok::<_, ()>(C(9, true))
        };
        s.put(C(1, true)); // handed to the waiter before the connect ends
        let (conn, reused) = s.connect_or_wait(waiter, connecting).await.unwrap();
        assert_eq!((conn, reused), (C(1, true), true));
        tx.send(()).unwrap();
        for _ in 0..100 {
            if s.idle_count() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(s.pop_or_join().unwrap(), C(9, true));
    }
}
