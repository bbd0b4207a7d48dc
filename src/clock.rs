//! Wall-clock time in whole Unix seconds, injectable for tests.
//!
//! Expiry is decided against this clock on every request (never against a
//! cache TTL), so tests that need "an hour later" advance a [`Clock::manual`]
//! clock instead of sleeping.
//!
//! A request reads the clock once, when its head is in (a monotonic
//! [`Instant`]), and takes every wall-clock time it needs from that
//! reading ([`since_epoch`]): its id's timestamp, its expiry check, its
//! `Date`, its access line. Each reading of the clock cost about 30 ns on
//! the VMs measured (BENCHMARKS.md, twelfth session), and a request took
//! seven.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Source of "now" for expiry decisions and timestamps written to the store.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that only moves when [`Clock::advance`] or [`Clock::set`] is called.
    pub fn manual(start_unix: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start_unix))),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => system_now(),
        }
    }

    /// Seconds since the Unix epoch at `at`, a reading of the monotonic
    /// clock ([`since_epoch`]); a manual clock's own time.
    pub fn at(&self, at: Instant) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => since_epoch(at).as_secs() as i64,
        }
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, secs: i64) {
        if let Some(t) = &self.manual {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }

    /// Sets a manual clock; no effect on the system clock.
    pub fn set(&self, unix: i64) {
        if let Some(t) = &self.manual {
            t.store(unix, Ordering::Relaxed);
        }
    }
}

/// How long a thread's pairing of the monotonic and the wall clock serves
/// before both are read again: a step of the wall clock (an operator's
/// `date -s`) shows within it, a slew drifts it by well under a
/// millisecond.
const PAIRING_SERVES: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's last reading of both clocks together.
    static PAIRING: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    /// This thread's last answer: a request asks for its one instant
    /// several times (its id, its expiry check, its `Date`).
    static LAST: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// The wall-clock time, since the Unix epoch, that `at` (a reading of the
/// monotonic clock) stands for: the thread's pairing of the two clocks,
/// read again once it is a second away from `at`, moved by the monotonic
/// time between. Never reads the clock otherwise. The same `at` asked
/// twice in a row on a thread gets the same answer, computed once.
pub fn since_epoch(at: Instant) -> Duration {
    if let Ok(Some((last, t))) = LAST.try_with(Cell::get) {
        if last == at {
            return t;
        }
    }
    let t = pair(at);
    let _ = LAST.try_with(|l| l.set(Some((at, t))));
    t
}

fn pair(at: Instant) -> Duration {
    if let Ok(Some((mono, wall))) = PAIRING.try_with(Cell::get) {
        let near = if at >= mono {
            let d = at - mono;
            (d < PAIRING_SERVES).then(|| wall + d)
        } else {
            let d = mono - at;
            (d < PAIRING_SERVES).then(|| wall.saturating_sub(d))
        };
        if let Some(t) = near {
            return t;
        }
    }
    let mono = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let _ = PAIRING.try_with(|p| p.set(Some((mono, wall))));
    if at >= mono {
        wall + (at - mono)
    } else {
        wall.saturating_sub(mono - at)
    }
}

fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Formats Unix seconds as an RFC 3339 UTC string (`2026-11-22T06:30:00Z`).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_instant_stands_for_the_wall_clock_time_it_was_read_at() {
        let wall = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let before = wall();
        let at = Instant::now();
        let after = wall();
        // The pairing is read on the first call, then reused: both within
        // a millisecond of the wall clock around the reading.
        for _ in 0..2 {
            let t = since_epoch(at);
            assert!(
                t + Duration::from_millis(1) >= before,
                "{t:?} vs {before:?}"
            );
            assert!(t <= after + Duration::from_millis(1), "{t:?} vs {after:?}");
        }
        // An instant from further back than the pairing serves: the
        // pairing is read again, and the same wall-clock time comes back.
        let five = Duration::from_secs(5);
        let t = since_epoch(at.checked_sub(five).unwrap());
        assert!(
            t + five + Duration::from_millis(1) >= before,
            "{t:?} vs {before:?}"
        );
        assert!(
            t + five <= after + Duration::from_millis(1),
            "{t:?} vs {after:?}"
        );
        assert_eq!(Clock::system().at(at), since_epoch(at).as_secs() as i64);
        assert_eq!(Clock::manual(7).at(at), 7);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now(), 1_000);
        c.advance(61);
        assert_eq!(c.now(), 1_061);
        c.set(5);
        assert_eq!(c.now(), 5);
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_743_033_600), "2025-03-27T00:00:00Z");
    }
}
