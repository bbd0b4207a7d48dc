//! Rate limits and quotas: named policies counted per key in sliding
//! windows, a token's own limit, and its daily or monthly quota.
//!
//! ```text
//!  admitted request ─▶ route's policies ─▶ token's rate_limit ─▶ token's quota ─▶ Standing list
//!                      (window per key)    (window per token)    (count per period)   (RateLimit fields)
//!                       │ refused: 429 RATE_LIMITED              │ refused: 429 QUOTA_EXCEEDED
//!                       └─ every window already counted for this request is given back
//! ```
//!
//! Counts live in this process, in a dashmap keyed by (policy, key): the
//! check and the count of one key happen under its shard's lock, so of N
//! concurrent requests against a limit L exactly min(N, L) are admitted.
//! Windows slide ([`Window`]); a key whose window holds nothing any more is
//! dropped by [`Limiter::sweep`], so memory follows the keys active within
//! one window. Quota counts start from what the token's record was read
//! with and are written back in batches (`crate::usage::flush_quotas`).
//!
//! With `rate_limits.store = "redis://…"` the windows are shared: each key
//! admits from an allowance taken from Redis in slices, in the background
//! (`shared.rs` explains the protocol, README.md its bound); the only wait
//! on Redis is [`Limiter::check_waiting`]'s, once per slice at most. With
//! the local store nothing here waits on I/O.

mod fields;
mod policy;
mod shared;
mod window;

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

pub use fields::{header_values, LimitFields, Standing, RATELIMIT, RATELIMIT_POLICY};
pub use policy::{
    By, CountStore, FilePolicy, FileRateLimits, Period, Policy, PolicyName, Quota, RateLimitConfig,
    TokenLimits, TokenRateLimit, MAX_NAME_LEN, MAX_REQUESTS, MAX_WINDOW_SECONDS, QUOTA_POLICY,
    TOKEN_POLICY,
};
pub use shared::{RedisUrl, REJOIN_EVERY, RESPONSE_TIMEOUT};
pub use window::{Left, Window, MAX_BUCKETS};

use shared::{Ask, Granted, Shared};

use crate::clock::Clock;
use crate::metrics::Metrics;

/// A refusal: the policy that refused, with `remaining` 0 and `reset` the
/// seconds until a request would be admitted (the `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal(pub Standing);

impl Refusal {
    /// Seconds until a request would be admitted.
    pub fn retry_after(&self) -> u32 {
        self.0.reset.max(1)
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A window is full (a route's policy or the token's `rate_limit`).
    RateLimited(Refusal),
    /// The token's quota for the period is used up.
    QuotaExceeded(Refusal),
}

/// What a request is counted by.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    /// The token's id, when a token was presented.
    pub token_id: Option<&'a Arc<str>>,
    /// Its account.
    pub account_id: Option<i64>,
    /// Its tenant.
    pub tenant_id: Option<i64>,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The token's own limit and quota.
    pub limits: Option<&'a TokenLimits>,
}

/// A counted key: what a policy's `by` picked out of the request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Token(Arc<str>),
    Account(i64),
    Tenant(i64),
    Ip(IpAddr),
}

impl Key {
    /// How a shared store names it.
    fn shared_name(&self) -> String {
        match self {
            Key::Token(t) => format!("t:{t}"),
            Key::Account(a) => format!("a:{a}"),
            Key::Tenant(t) => format!("n:{t}"),
            Key::Ip(ip) => format!("i:{ip}"),
        }
    }
}

/// Every key's window. Hashed by foldhash, randomly seeded per process:
/// each request hashes its keys, and SipHash (the standard map's) cost
/// about a thousand instructions of a limited request; a seeded hash
/// still gives a client choosing its keys (`client_ip`) no collisions to
/// aim at.
type Windows = DashMap<(Slot, Key), Entry, foldhash::quality::RandomState>;

/// One key's counts: its window here, and (with a shared store) its
/// allowance.
#[derive(Debug)]
struct Entry {
    window: Window,
    lease: Lease,
}

/// A key's standing with the shared store.
#[derive(Debug, Default)]
struct Lease {
    /// The bucket the allowance was granted in (it is given back when the
    /// bucket ends).
    bucket: i64,
    /// Requests granted and not yet used.
    units: u32,
    /// Requests admitted here that the shared count does not hold yet.
    unbacked: u32,
    /// A grant is on its way.
    asking: bool,
    /// Every instance's count at the last grant.
    shared_used: u64,
    /// The shared window was full at the last grant: nothing to ask for
    /// before this second.
    full_until: i64,
    /// Tells requests waiting for a grant that it has landed (or failed);
    /// made the first time one waits.
    landed: Option<watch::Sender<u64>>,
}

/// Why a window did not admit a request now.
enum Hold {
    /// Refused: seconds until one would be admitted.
    Wait(u32),
    /// A grant is on its way and the allowance ahead of it is used up:
    /// worth one short wait.
    Pending(watch::Receiver<u64>),
}

/// Why [`Limiter::check_once`] did not admit a request.
enum Blocked {
    Refused(Refused),
    /// Waiting for a grant; the refusal if none comes.
    Pending(Refusal, watch::Receiver<u64>),
}

/// Where an admitted request's unit came from, to give it back there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Counted here only (local store, or Redis unreachable).
    Local,
    /// From the key's allowance.
    Lease,
    /// Admitted ahead of a grant (forced into the shared count later).
    Unbacked,
}

/// The allowance an instance takes from the shared store at a time: 2.5%
/// of the limit (at least 1), so that two instances' unused and
/// not-yet-counted requests stay within 5% of it.
pub fn slice(limit: u32) -> u32 {
    (limit / 40).max(1)
}

/// How many requests a key may admit ahead of a grant (half a slice, at
/// least 1): what an instance may add past the limit when the shared
/// window fills before it has heard so.
pub fn ahead(slice: u32) -> u32 {
    (slice / 2).max(1)
}

/// Whose window: a named policy's, or a token's own limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    /// A named policy's: counts survive a reload that keeps the name.
    Policy(PolicyName),
    Token,
}

/// A token's quota count in this process.
#[derive(Clone, Copy, Debug)]
struct QuotaCount {
    /// The period counted.
    period_start: i64,
    /// When it ends.
    period_end: i64,
    /// Requests counted in it: the store's count when last read, plus
    /// this process's since.
    used: u64,
    /// Counted here and not yet written to the store.
    pending: u64,
}

/// A quota count to add to the store: `delta` more requests in the period
/// starting at `period_start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaDelta {
    /// The token.
    pub token_id: Arc<str>,
    /// The period.
    pub period_start: i64,
    /// Requests counted since the last write.
    pub delta: u64,
}

/// The counts of every policy, token limit and quota.
#[derive(Debug)]
pub struct Limiter {
    config: RateLimitConfig,
    windows: Arc<Windows>,
    quotas: DashMap<Arc<str>, QuotaCount>,
    metrics: Arc<Metrics>,
    shared: Option<Arc<Shared>>,
    clock: Clock,
}

impl Limiter {
    /// A limiter for these policies. With a Redis store this must run
    /// within a tokio runtime (nothing is sent until the first request).
    pub fn new(config: RateLimitConfig, metrics: Arc<Metrics>, clock: Clock) -> Self {
        let shared = match &config.store {
            CountStore::Local => None,
            CountStore::Redis(url) => match Shared::new(url, Arc::clone(&metrics)) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    // A URL the config check passed; should the client
                    // still refuse it, limits stay local, never off.
                    tracing::error!(error = %e, "cannot set up the Redis rate-limit store; counting locally");
                    None
                }
            },
        };
        // Every series a refusal can count is there from the start (label
        // values come from the config, never from a request).
        let names = config.policies.iter().map(|p| p.name);
        for name in names.chain([PolicyName::token(), PolicyName::quota()]) {
            metrics
                .rate_limited
                .entry(name.as_str().into())
                .or_insert(0);
        }
        Self {
            config,
            windows: Arc::new(Windows::default()),
            quotas: DashMap::new(),
            metrics,
            shared,
            clock,
        }
    }

    /// Whether counts are shared right now (a Redis store that answers).
    pub fn sharing(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.healthy())
    }

    /// The validated `[rate_limits]`.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Counts a request against the route's `policies`, the token's own
    /// limit and its quota, at `now` (Unix seconds). Admitted: where it
    /// left each (empty when nothing applies). Refused: nothing of it stays
    /// counted anywhere. Never waits: with Redis, a request that finds a
    /// key's allowance used up while its next slice is on the way is
    /// refused (`Retry-After: 1`); [`Limiter::check_waiting`] waits for
    /// the slice instead.
    pub fn check(
        &self,
        policies: &[Policy],
        subject: &Subject<'_>,
        now: i64,
    ) -> Result<Vec<Standing>, Refused> {
        self.check_once(policies, subject, now)
            .map_err(|b| self.refused(b))
    }

    /// [`Limiter::check`], except that a request that finds a key's
    /// allowance used up while its next slice is on the way (a key's first
    /// requests, a burst) waits for that slice, at most
    /// [`RESPONSE_TIMEOUT`], once: the only wait on Redis, at most once per
    /// slice, never per request.
    pub async fn check_waiting(
        &self,
        policies: &[Policy],
        subject: &Subject<'_>,
        now: i64,
    ) -> Result<Vec<Standing>, Refused> {
        match self.check_once(policies, subject, now) {
            Ok(s) => Ok(s),
            Err(Blocked::Pending(_, mut landed)) => {
                let _ = tokio::time::timeout(RESPONSE_TIMEOUT, landed.changed()).await;
                self.check_once(policies, subject, self.clock.now())
                    .map_err(|b| self.refused(b))
            }
            Err(b) => Err(self.refused(b)),
        }
    }

    /// The refusal a blocked request gets, counted.
    fn refused(&self, b: Blocked) -> Refused {
        let r = match b {
            Blocked::Refused(r) => r,
            Blocked::Pending(r, _) => Refused::RateLimited(r),
        };
        let (Refused::RateLimited(x) | Refused::QuotaExceeded(x)) = r;
        self.count_refusal(x.0.name);
        r
    }

    fn check_once(
        &self,
        policies: &[Policy],
        subject: &Subject<'_>,
        now: i64,
    ) -> Result<Vec<Standing>, Blocked> {
        let token_limit = subject.limits.and_then(|l| l.rate_limit);
        let quota = subject.limits.and_then(|l| l.quota);
        if policies.is_empty() && token_limit.is_none() && quota.is_none() {
            return Ok(Vec::new());
        }
        let mut standings = Vec::with_capacity(policies.len() + 2);
        let mut taken: Vec<((Slot, Key), Source)> = Vec::with_capacity(policies.len() + 1);
        let mut refusal = None;
        let windows = policies
            .iter()
            .map(|p| {
                (
                    Slot::Policy(p.name),
                    key(p.by, subject),
                    p.name,
                    p.requests,
                    p.window_seconds,
                )
            })
            .chain(token_limit.zip(subject.token_id).map(|(l, id)| {
                (
                    Slot::Token,
                    Key::Token(Arc::clone(id)),
                    PolicyName::token(),
                    l.requests,
                    l.window_seconds,
                )
            }));
        for (slot, key, name, limit, window) in windows {
            let k = (slot, key);
            let outcome = {
                let mut e = self.windows.entry(k.clone()).or_insert_with(|| Entry {
                    window: Window::new(window),
                    lease: Lease::default(),
                });
                e.window.rewindow(window, now);
                match &self.shared {
                    None => e
                        .window
                        .take(limit, now)
                        .map(|l| (l, Source::Local))
                        .map_err(Hold::Wait),
                    Some(sh) => self.take_shared(sh, &mut e, &k, name, limit, now),
                }
            };
            let standing = |remaining, reset| Standing {
                name,
                quota: limit,
                window,
                remaining,
                reset,
            };
            match outcome {
                Ok((left, source)) => {
                    taken.push((k, source));
                    standings.push(standing(left.remaining, left.reset));
                }
                Err(Hold::Wait(wait)) => {
                    let r = Refused::RateLimited(Refusal(standing(0, wait)));
                    refusal = Some(Blocked::Refused(r));
                    break;
                }
                Err(Hold::Pending(landed)) => {
                    refusal = Some(Blocked::Pending(Refusal(standing(0, 1)), landed));
                    break;
                }
            }
        }
        if refusal.is_none() {
            if let (Some(q), Some(id), Some(l)) = (quota, subject.token_id, subject.limits) {
                match self.take_quota(id, q, l, now) {
                    Ok(s) => standings.push(s),
                    Err(r) => refusal = Some(Blocked::Refused(Refused::QuotaExceeded(r))),
                }
            }
        }
        let Some(refused) = refusal else {
            return Ok(standings);
        };
        for (k, source) in taken {
            if let Some(mut e) = self.windows.get_mut(&k) {
                e.window.give_back(now);
                match source {
                    Source::Local => {}
                    Source::Lease => e.lease.units += 1,
                    Source::Unbacked => e.lease.unbacked = e.lease.unbacked.saturating_sub(1),
                }
            }
        }
        Err(refused)
    }

    /// Takes a request from a key's allowance of the shared count (never
    /// waiting on Redis): from the allowance when there is one; ahead of
    /// a grant, up to half a slice ([`ahead`]), when there is none (the
    /// first requests of a key, or while a grant is on its way: past that,
    /// [`Hold::Pending`]); on this instance's own count
    /// while Redis is unreachable. This instance alone never admits more
    /// than the limit in a window, whatever Redis says.
    fn take_shared(
        &self,
        sh: &Arc<Shared>,
        e: &mut Entry,
        k: &(Slot, Key),
        name: PolicyName,
        limit: u32,
        now: i64,
    ) -> Result<(Left, Source), Hold> {
        let used_here = e.window.used_at(now);
        if used_here >= u64::from(limit) {
            return Err(Hold::Wait(e.window.wait_for(limit, now)));
        }
        // Uses that have left the window need not reach the shared count.
        e.lease.unbacked = e
            .lease
            .unbacked
            .min(u32::try_from(used_here).unwrap_or(u32::MAX));
        if !sh.healthy() {
            e.lease.unbacked = e.lease.unbacked.saturating_add(1);
            return Ok((e.window.count(limit, now), Source::Local));
        }
        let bucket = e.window.bucket_of(now);
        let window = e.window.window();
        let redis_key = || Shared::key(name.as_str(), window, &k.1.shared_name());
        if e.lease.units > 0 && e.lease.bucket != bucket {
            // An allowance is for its own bucket: what is left goes back.
            let (sh, key, b, n) = (Arc::clone(sh), redis_key(), e.lease.bucket, e.lease.units);
            tokio::spawn(async move { sh.give_back(key, b, n).await });
            e.lease.units = 0;
        }
        let slice = slice(limit);
        let source = if e.lease.units > 0 {
            e.lease.units -= 1;
            Source::Lease
        } else if e.lease.full_until > now {
            let wait = u32::try_from(e.lease.full_until - now).unwrap_or(1).max(1);
            return Err(Hold::Wait(wait));
        } else if e.lease.unbacked < ahead(slice) {
            e.lease.unbacked += 1;
            Source::Unbacked
        } else {
            // A slice is already out ahead of a grant: wait for it.
            self.ask(sh, e, k, redis_key(), limit, now);
            let landed = e
                .lease
                .landed
                .get_or_insert_with(|| watch::channel(0).0)
                .subscribe();
            return Err(Hold::Pending(landed));
        };
        let mut left = e.window.count(limit, now);
        if e.lease.units.saturating_mul(2) < slice {
            self.ask(sh, e, k, redis_key(), limit, now);
        }
        // Every instance's count as last heard, and what this one holds.
        let shared_left =
            u64::from(limit).saturating_sub(e.lease.shared_used) + u64::from(e.lease.units);
        left.remaining = left
            .remaining
            .min(u32::try_from(shared_left).unwrap_or(u32::MAX));
        Ok((left, source))
    }

    /// Asks Redis for the next slice of a key's allowance, forcing in the
    /// uses it does not hold yet (one ask at a time per key; the request
    /// path never waits for it).
    fn ask(
        &self,
        sh: &Arc<Shared>,
        e: &mut Entry,
        k: &(Slot, Key),
        key: String,
        limit: u32,
        now: i64,
    ) {
        if e.lease.asking {
            return;
        }
        e.lease.asking = true;
        let w = &e.window;
        let ask = Ask {
            key,
            bucket: w.bucket_of(now),
            oldest: w.oldest_bucket(now),
            limit,
            want: slice(limit),
            force: e.lease.unbacked,
            ttl: w.window() + w.window().div_ceil(MAX_BUCKETS) + 1,
        };
        let (sh, windows, k) = (Arc::clone(sh), Arc::clone(&self.windows), k.clone());
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let answer = sh.ask(&ask).await;
            let now = clock.now();
            if let Ok(g) = &answer {
                if g.reset {
                    readd_after_reset(&windows, now);
                }
            }
            let leftover = match windows.get_mut(&k) {
                Some(mut e) => {
                    e.lease.asking = false;
                    let leftover = answer.ok().and_then(|g| apply_grant(&mut e, &ask, g, now));
                    if let Some(landed) = &e.lease.landed {
                        landed.send_modify(|n| *n += 1);
                    }
                    leftover
                }
                None => answer.ok().map(|g| (ask.bucket, g.granted)),
            };
            if let Some((bucket, n)) = leftover.filter(|(_, n)| *n > 0) {
                sh.give_back(ask.key, bucket, n).await;
            }
        });
    }

    fn count_refusal(&self, name: PolicyName) {
        self.metrics.rate_limited(name.as_str());
    }

    /// Counts one request against a token's quota.
    fn take_quota(
        &self,
        token_id: &Arc<str>,
        q: Quota,
        limits: &TokenLimits,
        now: i64,
    ) -> Result<Standing, Refusal> {
        let start = q.period.start(now);
        let end = q.period.end(now);
        let mut c = self.quota_count(token_id, limits, start, end);
        let reset = u32::try_from(end - now).unwrap_or(u32::MAX);
        let standing = |remaining| Standing {
            name: PolicyName::quota(),
            quota: q.requests,
            window: u32::try_from(end - start).unwrap_or(u32::MAX),
            remaining,
            reset,
        };
        if c.used >= u64::from(q.requests) {
            return Err(Refusal(standing(0)));
        }
        c.used += 1;
        c.pending += 1;
        let remaining = u64::from(q.requests) - c.used;
        Ok(standing(remaining as u32))
    }

    /// The count of a token's quota in the period starting at `start`,
    /// seeded from its record the first time, restarted in a new period.
    fn quota_count(
        &self,
        token_id: &Arc<str>,
        limits: &TokenLimits,
        start: i64,
        end: i64,
    ) -> dashmap::mapref::one::RefMut<'_, Arc<str>, QuotaCount> {
        let mut c = self
            .quotas
            .entry(Arc::clone(token_id))
            .or_insert_with(|| QuotaCount {
                period_start: start,
                period_end: end,
                used: if limits.quota_period_start == start {
                    limits.quota_used
                } else {
                    0
                },
                pending: 0,
            });
        if c.period_start != start {
            // A new period: the last one's unwritten counts no longer
            // decide anything.
            *c = QuotaCount {
                period_start: start,
                period_end: end,
                used: 0,
                pending: 0,
            };
        }
        c
    }

    /// What is left of a token's own limit at `now`, counting nothing
    /// (`GET /v1/tokens/{id}/usage`).
    pub fn token_limit_left(&self, token_id: &str, limit: TokenRateLimit, now: i64) -> Left {
        let k = (Slot::Token, Key::Token(Arc::from(token_id)));
        match self.windows.get_mut(&k) {
            Some(mut e) => {
                e.window.rewindow(limit.window_seconds, now);
                e.window.peek(limit.requests, now)
            }
            None => Left {
                remaining: limit.requests,
                reset: limit.window_seconds,
            },
        }
    }

    /// A token's quota count in the period holding `now` as this process
    /// knows it, if it has counted one.
    pub fn quota_used(&self, token_id: &str, period: Period, now: i64) -> Option<u64> {
        let c = self.quotas.get(token_id)?;
        (c.period_start == period.start(now)).then_some(c.used)
    }

    /// Takes every quota count not yet written, for one batch.
    pub fn take_quota_deltas(&self) -> Vec<QuotaDelta> {
        let mut out = Vec::new();
        for mut e in self.quotas.iter_mut() {
            if e.pending > 0 {
                out.push(QuotaDelta {
                    token_id: Arc::clone(e.key()),
                    period_start: e.period_start,
                    delta: e.pending,
                });
                e.pending = 0;
            }
        }
        out
    }

    /// A batch that was not written: its counts wait for the next one
    /// (unless their period has passed).
    pub fn restore_quota_deltas(&self, batch: Vec<QuotaDelta>) {
        for d in batch {
            if let Some(mut c) = self.quotas.get_mut(&d.token_id) {
                if c.period_start == d.period_start {
                    c.pending += d.delta;
                }
            }
        }
    }

    /// The store's count after a write (every instance's): this process's
    /// count becomes it, plus what was counted here since the batch.
    pub fn settle_quota(&self, token_id: &str, period_start: i64, stored: u64) {
        if let Some(mut c) = self.quotas.get_mut(token_id) {
            if c.period_start == period_start {
                c.used = stored + c.pending;
            }
        }
    }

    /// Drops the windows that hold nothing at `now` and the quota counts
    /// of periods that have ended with nothing left to write: memory
    /// follows the keys active within one window.
    pub fn sweep(&self, now: i64) {
        // An idle key's allowance is simply dropped: its bucket has left
        // the window, so the shared count no longer holds it either.
        self.windows
            .retain(|_, e| !e.window.idle(now) || e.lease.asking);
        self.quotas
            .retain(|_, c| c.pending > 0 || now < c.period_end);
    }

    /// Keys held (windows, quota counts).
    pub fn len(&self) -> (usize, usize) {
        (self.windows.len(), self.quotas.len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.quotas.is_empty()
    }
}

/// Applies a grant to a key; answers an allowance to give back (the key's
/// bucket moved on while the grant was on its way).
fn apply_grant(e: &mut Entry, ask: &Ask, g: Granted, now: i64) -> Option<(i64, u32)> {
    e.lease.unbacked = e.lease.unbacked.saturating_sub(ask.force);
    e.lease.shared_used = g.used;
    e.lease.full_until = if g.granted < ask.want && g.earliest >= 0 {
        now + i64::from(e.window.until_leaves(g.earliest, now))
    } else {
        0
    };
    if e.window.bucket_of(now) != ask.bucket {
        return Some((ask.bucket, g.granted));
    }
    if e.lease.bucket != ask.bucket {
        e.lease.units = 0;
        e.lease.bucket = ask.bucket;
    }
    e.lease.units += g.granted;
    None
}

/// Redis lost its counts: every use this instance made within each window
/// is forced into the new count with the key's next grant, and allowances
/// granted by the old one are dropped.
fn readd_after_reset(windows: &Windows, now: i64) {
    for mut e in windows.iter_mut() {
        let used = e.window.used_at(now);
        e.lease.unbacked = u32::try_from(used).unwrap_or(u32::MAX);
        e.lease.units = 0;
        e.lease.full_until = 0;
    }
}

/// The key a policy counts a request by; the client's address when the
/// request has none of it (no token on an `auth = "none"` route).
fn key(by: By, s: &Subject<'_>) -> Key {
    let ip = || Key::Ip(s.client_ip);
    match by {
        By::Token => s.token_id.map_or_else(ip, |t| Key::Token(Arc::clone(t))),
        By::Account => s.account_id.map_or_else(ip, Key::Account),
        By::Tenant => s.tenant_id.map_or_else(ip, Key::Tenant),
        By::ClientIp => ip(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limiter(policies: &[(&str, u64, u64, &str)]) -> Limiter {
        Limiter::new(
            RateLimitConfig::validate(&policy::tests::file(policies)).unwrap(),
            Arc::new(Metrics::default()),
            Clock::system(),
        )
    }

    fn subject<'a>(
        token: &'a Arc<str>,
        ip: [u8; 4],
        limits: Option<&'a TokenLimits>,
    ) -> Subject<'a> {
        Subject {
            token_id: Some(token),
            account_id: Some(7),
            tenant_id: Some(3),
            client_ip: IpAddr::from(ip),
            limits,
        }
    }

    #[test]
    fn exact_under_concurrency() {
        let l = Arc::new(limiter(&[("p", 1000, 60, "tenant")]));
        let admitted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (l, admitted) = (Arc::clone(&l), Arc::clone(&admitted));
                std::thread::spawn(move || {
                    let t: Arc<str> = Arc::from(format!("t{i}"));
                    for _ in 0..400 {
                        if l.check(
                            &[l.config().policies[0]],
                            &subject(&t, [10, 0, 0, i], None),
                            100,
                        )
                        .is_ok()
                        {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 1000);
        assert_eq!(l.metrics.rate_limited_count("p"), 3200 - 1000);
    }

    #[test]
    fn each_by_counts_its_own_key() {
        let l = limiter(&[
            ("tok", 1, 60, "token"),
            ("acct", 1, 60, "account"),
            ("ten", 1, 60, "tenant"),
            ("ip", 1, 60, "client_ip"),
        ]);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let s = subject(&a, [1, 1, 1, 1], None);
        assert!(l.check(&[l.config().policies[0]], &s, 0).is_ok());
        assert!(l.check(&[l.config().policies[0]], &s, 0).is_err());
        assert!(l
            .check(
                &[l.config().policies[0]],
                &subject(&b, [1, 1, 1, 1], None),
                0
            )
            .is_ok());
        let mut other_account = subject(&b, [1, 1, 1, 1], None);
        assert!(l.check(&[l.config().policies[1]], &s, 0).is_ok());
        assert!(
            l.check(&[l.config().policies[1]], &other_account, 0)
                .is_err(),
            "same account 7"
        );
        other_account.account_id = Some(8);
        assert!(l
            .check(&[l.config().policies[1]], &other_account, 0)
            .is_ok());
        assert!(l.check(&[l.config().policies[2]], &s, 0).is_ok());
        assert!(
            l.check(&[l.config().policies[2]], &other_account, 0)
                .is_err(),
            "same tenant 3"
        );
        assert!(l.check(&[l.config().policies[3]], &s, 0).is_ok());
        assert!(l
            .check(
                &[l.config().policies[3]],
                &subject(&b, [1, 1, 1, 1], None),
                0
            )
            .is_err());
        assert!(l
            .check(
                &[l.config().policies[3]],
                &subject(&a, [1, 1, 1, 2], None),
                0
            )
            .is_ok());
    }

    #[test]
    fn a_refusal_counts_nowhere() {
        let l = limiter(&[("wide", 10, 60, "token"), ("narrow", 1, 60, "token")]);
        let a: Arc<str> = Arc::from("a");
        let s = subject(&a, [1, 1, 1, 1], None);
        let ok = l
            .check(&[l.config().policies[0], l.config().policies[1]], &s, 0)
            .unwrap();
        assert_eq!(ok[0].remaining, 9);
        let Err(Refused::RateLimited(r)) =
            l.check(&[l.config().policies[0], l.config().policies[1]], &s, 0)
        else {
            panic!("narrow refuses")
        };
        assert_eq!(r.0.name.as_str(), "narrow");
        assert_eq!(r.retry_after(), 60);
        // `wide` was given back its count.
        assert_eq!(
            l.check(&[l.config().policies[0]], &s, 0).unwrap()[0].remaining,
            8
        );
    }

    #[test]
    fn token_limit_and_quota() {
        let l = limiter(&[]);
        let a: Arc<str> = Arc::from("a");
        let t = 1_773_579_600; // 2026-03-15T13:00:00Z
        let limits = TokenLimits {
            rate_limit: Some(TokenRateLimit::new(2, 10).unwrap()),
            quota: Some(Quota::new(5, Period::Day).unwrap()),
            quota_used: 2,
            quota_period_start: Period::Day.start(t),
        };
        let s = subject(&a, [1, 1, 1, 1], Some(&limits));
        let ok = l.check(&[], &s, t).unwrap();
        assert_eq!(
            ok.iter()
                .find(|s| s.name.as_str() == "quota")
                .unwrap()
                .remaining,
            2
        );
        assert!(l.check(&[], &s, t).is_ok());
        assert!(matches!(l.check(&[], &s, t), Err(Refused::RateLimited(_))));
        let Err(Refused::QuotaExceeded(r)) = l
            .check(&[], &s, t + 10)
            .and_then(|_| l.check(&[], &s, t + 10))
        else {
            panic!("quota of 5 used up (2 stored + 3)")
        };
        assert_eq!(r.retry_after(), 11 * 3600 - 10);
        // The refused request counted neither the window nor the quota.
        assert_eq!(l.quota_used("a", Period::Day, t), Some(5));
        assert_eq!(
            l.token_limit_left("a", limits.rate_limit.unwrap(), t + 10)
                .remaining,
            1
        );
        // A new day.
        assert!(l.check(&[], &s, t + 12 * 3600).is_ok());
        assert_eq!(l.quota_used("a", Period::Day, t + 12 * 3600), Some(1));
        let d = l.take_quota_deltas();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].delta, 1);
        l.settle_quota("a", d[0].period_start, 40);
        assert_eq!(l.quota_used("a", Period::Day, t + 12 * 3600), Some(40));
    }

    #[test]
    fn idle_keys_are_swept() {
        let l = limiter(&[("ip", 5, 10, "client_ip")]);
        let a: Arc<str> = Arc::from("a");
        for i in 0..100u8 {
            l.check(
                &[l.config().policies[0]],
                &subject(&a, [10, 0, 0, i], None),
                1000,
            )
            .unwrap();
        }
        assert_eq!(l.len().0, 100);
        l.sweep(1009);
        assert_eq!(l.len().0, 100);
        l.sweep(1010);
        assert!(l.is_empty());
    }
}
