//! One key's sliding window: counts in buckets of whole seconds.
//!
//! A window of `W` seconds is cut into at most [`MAX_BUCKETS`] buckets of
//! `g = ceil(W / MAX_BUCKETS)` seconds (one second for windows up to a
//! minute). A request at second `t` is admitted when the buckets that
//! overlap the seconds `t - W + 1 ..= t` hold fewer than the limit. The
//! oldest of those buckets may reach back past the window by less than
//! `g`: a count stays counted up to `g - 1` seconds too long, never too
//! short, so no span of `W` seconds ever admits more than the limit (no
//! double burst at a window edge), and windows of up to a minute are exact
//! to the second.

/// The most buckets a window is cut into: a key costs at most this many
/// counters (plus one for the bucket a window straddles).
pub const MAX_BUCKETS: u32 = 60;

/// One key's counts.
#[derive(Debug, Clone)]
pub struct Window {
    /// Bucket length in seconds.
    bucket: u32,
    /// The window length these buckets were cut for.
    window: u32,
    /// The newest bucket's index (`second / bucket`).
    newest: i64,
    /// Counts, by bucket index modulo the length.
    counts: Box<[u32]>,
    /// The sum of `counts`: what [`Self::used`] starts from, so a request
    /// reads the one or two buckets held past the window, not all sixty.
    total: u64,
}

/// A request admitted: what is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left {
    /// Requests still admitted now.
    pub remaining: u32,
    /// Seconds until the oldest counted request leaves the window (and
    /// `remaining` grows); the window length when none is counted.
    pub reset: u32,
}

impl Window {
    /// An empty window of `window` seconds.
    pub fn new(window: u32) -> Self {
        let window = window.max(1);
        let bucket = window.div_ceil(MAX_BUCKETS);
        let n = window.div_ceil(bucket) + 1;
        Self {
            bucket,
            window,
            newest: i64::MIN,
            counts: vec![0; n as usize].into_boxed_slice(),
            total: 0,
        }
    }

    /// The bucket of second `now`.
    fn index(&self, now: i64) -> i64 {
        now.div_euclid(i64::from(self.bucket))
    }

    /// Moves the newest bucket up to `now`'s, zeroing those passed. A
    /// clock that steps back counts into the newest bucket.
    fn advance(&mut self, now: i64) {
        let b = self.index(now);
        if self.newest == i64::MIN || b - self.newest >= self.counts.len() as i64 {
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.total = 0;
            self.newest = b;
        } else if b > self.newest {
            for i in self.newest + 1..=b {
                let slot = self.slot(i);
                self.total -= u64::from(self.counts[slot]);
                self.counts[slot] = 0;
            }
            self.newest = b;
        }
    }

    fn slot(&self, i: i64) -> usize {
        i.rem_euclid(self.counts.len() as i64) as usize
    }

    /// The buckets counted at `now`, oldest first (as bucket indexes).
    fn span(&self, now: i64) -> std::ops::RangeInclusive<i64> {
        let oldest = self.index(now - i64::from(self.window) + 1);
        let lo = oldest.max(self.newest - self.counts.len() as i64 + 1);
        lo..=self.newest
    }

    /// Requests counted in the window at `now`: every bucket held, less
    /// those held that are older than the window's (one or two).
    fn used(&self, now: i64) -> u64 {
        let held_oldest = self.newest - self.counts.len() as i64 + 1;
        let outside: u64 = (held_oldest..*self.span(now).start())
            .map(|i| u64::from(self.counts[self.slot(i)]))
            .sum();
        self.total - outside
    }

    /// Adds one to the newest bucket.
    fn add_one(&mut self) {
        let slot = self.slot(self.newest);
        if self.counts[slot] < u32::MAX {
            self.counts[slot] += 1;
            self.total += 1;
        }
    }

    /// Seconds from `now` until bucket `i` leaves the window.
    fn leaves(&self, i: i64, now: i64) -> u32 {
        let at = (i + 1) * i64::from(self.bucket) + i64::from(self.window) - 1;
        u32::try_from((at - now).max(1)).unwrap_or(u32::MAX)
    }

    /// The window's buckets at `now`, oldest first: (bucket index, count).
    /// Steps through the slots instead of dividing for each.
    fn counted(&self, now: i64) -> impl Iterator<Item = (i64, u32)> + '_ {
        let span = self.span(now);
        let mut slot = self.slot(*span.start());
        span.map(move |i| {
            let c = self.counts.get(slot).copied().unwrap_or(0);
            slot = if slot + 1 == self.counts.len() {
                0
            } else {
                slot + 1
            };
            (i, c)
        })
    }

    /// Seconds until the used count drops below `limit` (at least 1).
    fn wait_below(&self, limit: u32, now: i64) -> u32 {
        let used = self.used(now);
        let mut freed = 0u64;
        for (i, c) in self.counted(now) {
            freed += u64::from(c);
            if used - freed < u64::from(limit) {
                return self.leaves(i, now);
            }
        }
        self.window
    }

    /// What is left at `now` without counting anything.
    pub fn peek(&mut self, limit: u32, now: i64) -> Left {
        self.advance(now);
        let used = self.used(now);
        let remaining = u64::from(limit).saturating_sub(used) as u32;
        let reset = match remaining {
            0 => self.wait_below(limit, now),
            _ => self
                .counted(now)
                .find(|(_, c)| *c > 0)
                .map_or(self.window, |(i, _)| self.leaves(i, now)),
        };
        Left { remaining, reset }
    }

    /// Counts a request at `now` if fewer than `limit` are counted;
    /// otherwise the seconds until one would be admitted.
    pub fn take(&mut self, limit: u32, now: i64) -> Result<Left, u32> {
        self.advance(now);
        if self.used(now) >= u64::from(limit) {
            return Err(self.wait_below(limit, now));
        }
        self.add_one();
        Ok(self.peek(limit, now))
    }

    /// Takes back a request counted at `now` (another limit refused it).
    pub fn give_back(&mut self, now: i64) {
        if self.index(now) == self.newest {
            let slot = self.slot(self.newest);
            if self.counts[slot] > 0 {
                self.counts[slot] -= 1;
                self.total -= 1;
            }
        }
    }

    /// Whether nothing is counted any more at `now` (the key may go).
    pub fn idle(&self, now: i64) -> bool {
        self.newest == i64::MIN || self.index(now - i64::from(self.window) + 1) > self.newest
    }

    /// The same counts under a new window length (a token's limit changed):
    /// kept, not reset, all in the newest bucket when the bucket length
    /// changes (counted longer, never shorter).
    pub fn rewindow(&mut self, window: u32, now: i64) {
        if window == self.window {
            return;
        }
        self.advance(now);
        let used = self.used(now);
        *self = Window::new(window);
        self.advance(now);
        let slot = self.slot(self.newest);
        self.counts[slot] = u32::try_from(used).unwrap_or(u32::MAX);
        self.total = u64::from(self.counts[slot]);
    }

    /// The window length.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The bucket of second `now` (as a shared store keys it).
    pub fn bucket_of(&self, now: i64) -> i64 {
        self.index(now)
    }

    /// The oldest bucket counted at `now`.
    pub fn oldest_bucket(&self, now: i64) -> i64 {
        self.index(now - i64::from(self.window) + 1)
    }

    /// Seconds from `now` until bucket `i` has left the window (at least 1).
    pub fn until_leaves(&self, i: i64, now: i64) -> u32 {
        self.leaves(i, now)
    }

    /// Requests counted at `now`.
    pub fn used_at(&mut self, now: i64) -> u64 {
        self.advance(now);
        self.used(now)
    }

    /// Counts a request at `now` whatever the count (the shared store has
    /// admitted it); what is left against `limit`.
    pub fn count(&mut self, limit: u32, now: i64) -> Left {
        self.advance(now);
        self.add_one();
        self.peek(limit, now)
    }

    /// Seconds until fewer than `limit` are counted (at least 1).
    pub fn wait_for(&mut self, limit: u32, now: i64) -> u32 {
        self.advance(now);
        self.wait_below(limit, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_edge() {
        let mut w = Window::new(60);
        let t = 1_000;
        for i in 0..10 {
            assert_eq!(w.take(10, t).unwrap().remaining, 9 - i);
        }
        assert_eq!(w.take(10, t), Err(60));
        // One second before the burst leaves: still refused, told 1 s.
        assert_eq!(w.take(10, t + 59), Err(1));
        // The burst has left: a full window again, not more.
        for _ in 0..10 {
            assert!(w.take(10, t + 60).is_ok());
        }
        assert!(w.take(10, t + 60).is_err());
    }

    #[test]
    fn no_double_burst_at_a_fixed_window_edge() {
        // Half at the end of one minute, half at the start of the next:
        // a fixed window would admit 20 within two seconds.
        let mut w = Window::new(60);
        for _ in 0..10 {
            assert!(w.take(10, 119).is_ok());
        }
        assert!(w.take(10, 120).is_err());
        assert!(w.take(10, 178).is_err());
        assert!(w.take(10, 179).is_ok());
    }

    #[test]
    fn long_windows_use_coarse_buckets_and_never_admit_early() {
        let mut w = Window::new(3600); // 60-second buckets
        assert!(w.take(1, 30).is_ok());
        let wait = w.take(1, 31).unwrap_err();
        assert!(w.take(1, 31 + i64::from(wait) - 1).is_err());
        assert!(w.take(1, 31 + i64::from(wait)).is_ok());
        assert!(wait > 3600 - 31, "counted at least the window: {wait}");
    }

    #[test]
    fn give_back_and_idle() {
        let mut w = Window::new(10);
        assert!(w.take(1, 5).is_ok());
        w.give_back(5);
        assert!(w.take(1, 5).is_ok());
        assert!(!w.idle(14));
        assert!(w.idle(15));
    }

    #[test]
    fn rewindow_keeps_counts() {
        let mut w = Window::new(60);
        for _ in 0..5 {
            w.take(100, 10).unwrap();
        }
        w.rewindow(3600, 20);
        assert_eq!(w.peek(100, 20).remaining, 95);
    }

    proptest! {
        /// The running total less what is held past the window is the sum
        /// of the window's buckets, whatever was taken, given back,
        /// counted or re-windowed, and however the clock moved (back too).
        #[test]
        fn used_is_the_sum_of_the_window(
            window in 1u32..200,
            steps in proptest::collection::vec((-3i64..90, 0u8..4), 1..200),
        ) {
            let mut w = Window::new(window);
            let mut t = 1_000i64;
            for (dt, op) in steps {
                t += dt;
                match op {
                    0 => { let _ = w.take(5, t); }
                    1 => { w.count(5, t); }
                    2 => w.give_back(t),
                    _ => w.rewindow(if window % 2 == 0 { window } else { window + 7 }, t),
                }
                let used = w.used_at(t);
                let naive: u64 = w
                    .span(t)
                    .map(|i| u64::from(w.counts[w.slot(i)]))
                    .sum();
                prop_assert_eq!(used, naive);
                let stepped: Vec<(i64, u32)> = w.counted(t).collect();
                let divided: Vec<(i64, u32)> = w.span(t).map(|i| (i, w.counts[w.slot(i)])).collect();
                prop_assert_eq!(stepped, divided);
                prop_assert_eq!(w.total, w.counts.iter().map(|c| u64::from(*c)).sum::<u64>());
            }
        }

        /// Whatever the arrival times, no span of `window` seconds admits
        /// more than the limit; and a key whose every request fits
        /// admits them all.
        #[test]
        fn never_more_than_the_limit_in_any_window(
            window in 1u32..200,
            limit in 1u32..20,
            gaps in proptest::collection::vec(0i64..30, 1..200),
        ) {
            let mut w = Window::new(window);
            let mut t = 0i64;
            let mut admitted = Vec::new();
            for g in gaps {
                t += g;
                if w.take(limit, t).is_ok() {
                    admitted.push(t);
                }
            }
            for (i, a) in admitted.iter().enumerate() {
                let within = admitted[i..].iter().take_while(|b| **b < a + i64::from(window)).count();
                prop_assert!(within <= limit as usize, "{within} in {window}s from {a}");
            }
        }

        /// Windows up to a minute are exact: a request refused at `t` is
        /// told the wait after which it is admitted, and is refused one
        /// second before that.
        #[test]
        fn retry_after_is_exact_up_to_a_minute(
            window in 1u32..=60,
            limit in 1u32..10,
            gaps in proptest::collection::vec(0i64..5, 1..100),
        ) {
            let mut w = Window::new(window);
            let mut t = 0i64;
            for g in gaps {
                t += g;
                if let Err(wait) = w.take(limit, t) {
                    let mut probe = w.clone();
                    prop_assert!(probe.take(limit, t + i64::from(wait) - 1).is_err());
                    let mut probe = w.clone();
                    prop_assert!(probe.take(limit, t + i64::from(wait)).is_ok());
                }
            }
        }
    }
}
