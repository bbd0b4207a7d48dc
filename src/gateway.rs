//! The request path: what happens to every request on the public listener.
//!
//! ```text
//!  request ─▶ normalise path ─▶ route ─▶ credential ─▶ cheap checks ─▶ cache/store ─▶ decide ─▶ limits ─▶ forward
//!             (400 BAD_PATH)   (404/405)  (400 conflict) (401, no I/O)  (503 fail closed) (401/403) (429)     (502/504)
//!                  │
//!                  ├─▶ `forward_auth.path`: the original request decided by the same steps, answered here ([`crate::forward_auth`])
//!                  └─▶ a `[token_api]` path: served here by `crate::flows`, never forwarded
//! ```
//!
//! Each step can only refuse; nothing after a refusal runs. The cheap checks
//! (length, alphabet, prefix, CRC32) sit before the cache so that garbage and
//! typos never cost a cache slot or a store query. A repeat of the token
//! the connection's previous request presented skips the hash and the cache
//! while no invalidation has happened since ([`crate::cache::ConnectionMemo`]). The
//! decision runs on every request, cached or not, against the clock.
//! Denials become responses in one place
//! (`crate::error::Denial::parts`).
//!
//! What a reload (`crate::reload`) replaces is one [`Snapshot`]: the
//! config in force and the route table, upstreams and header rules built
//! from it. A request loads it once ([`Gateway::snapshot`]) and keeps it
//! to its end; a reload swaps in a new one for every request after it, on
//! old connections too. The store, token cache, last-used batching and
//! counters live in [`Gateway`] itself and are never rebuilt.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::auth::{as_token, credential_bytes, decide, extract_credential, kind_may_proxy};
use crate::cache::{AuthEntry, MemoUse, TokenCache};
use crate::clock::Clock;
use crate::config::{AuthMode, Config, RouteConfig};
use crate::error::Denial;
use crate::fields::RequestFields;
use crate::issuer::{Caller, Issuer};
use crate::metrics::{Metrics, Series};
use crate::ratelimit::{header_values, LimitFields, Limiter, Refused, Subject};
use crate::route::{is_miscased_method, RouteMatch, RouteTable};
use crate::rules::{strip_for_upstream, HeaderNames, Lookalikes, StripSet};
use crate::signals::Signals;
use crate::store::TokenStore;
use crate::token::{Checked, TokenHash};
use crate::trace::Trace;
use crate::upstream::{TrailerFilter, Upstream};
use crate::usage::LastUsed;

/// Resolves when an upgraded tunnel must be closed (its token no longer
/// admits it); see [`Gateway::tunnel_end`].
pub type TunnelEnd = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The least time between two checks of an open tunnel's token, however
/// many invalidations arrive: what a burst of them (mints invalidate too)
/// costs each tunnel, against how much later a revocation may close it.
pub const TUNNEL_RECHECK_GAP: Duration = Duration::from_millis(100);

/// A request [`Gateway::admit`] let through.
#[derive(Debug)]
pub struct Admission {
    /// Its token, if it needed or sent one.
    pub entry: Option<Arc<AuthEntry>>,
    /// The `RateLimit-Policy` and `RateLimit` fields for every answer to
    /// it (the upstream's, the forward-auth 200); `None` when no limit
    /// applies.
    pub limits: Option<LimitFields>,
}

/// Everything the request path and the control plane share.
pub struct Gateway {
    /// The configuration as started. The keys a reload cannot change
    /// (`[server]`, `[store]`, `[cache]`, `[tokens]`, `[log]`) are read here; the
    /// rest (routes, upstreams, headers, forward auth, token API paths,
    /// TLS) only from [`Gateway::snapshot`].
    pub config: Config,
    /// The token store.
    pub store: Arc<dyn TokenStore>,
    /// The token-record cache.
    pub cache: Arc<TokenCache>,
    /// The issuing service (evicts from `cache` on every change).
    pub issuer: Issuer,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where each finished request is counted and logged.
    pub signals: Arc<Signals>,
    /// Batched last-used times.
    pub last_used: LastUsed,
    /// Rate-limit and quota counts.
    pub limiter: Limiter,
    clock: Clock,
    /// What a reload replaces, swapped at once.
    live: ArcSwap<Snapshot>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("live", &self.live.load().routes)
            .field("cache", &self.cache)
            .finish()
    }
}

/// The reloadable part of the gateway, as one value: the config in force
/// and what is built from it. Built whole and checked before it is swapped
/// in, so a request sees the old one or the new one, never a mix.
pub struct Snapshot {
    /// The config in force: the reloadable keys as last (re)loaded, the
    /// keys that need a restart as the gateway started.
    pub config: Config,
    routes: RouteTable,
    /// Shared with the snapshots before and after this one while their
    /// config is the same, with their pooled connections and cap.
    upstreams: Vec<Arc<Upstream>>,
    /// Shared with every request body's trailer filter.
    header_names: Arc<HeaderNames>,
    /// What request trailers go through on their way upstream.
    trailers: TrailerFilter,
    lookalikes: Lookalikes,
    strip: StripSet,
    /// Each upstream's index among the metric series and access-log
    /// labels, which are fixed at start-up: `None` for one a reload added.
    upstream_series: Vec<Option<usize>>,
    // Rate limits (DESIGN section 10): each route carries its policies
    // (`RouteConfig::rate_limits`), so a reload swaps them with the
    // routes; the counts, keyed by policy name, stay in `Gateway::limiter`
    // and survive it.
}

impl Snapshot {
    /// Builds the route table, upstreams and header rules of `config`.
    /// An upstream whose config is unchanged from `previous` is taken over,
    /// pooled connections and connection cap included. The metric series
    /// (route labels, upstream names) are those of `started`, the config
    /// the gateway started with: a route or upstream a reload adds is
    /// counted as route `none` / under no upstream until a restart.
    pub fn build(mut config: Config, previous: Option<&Snapshot>, started: &Config) -> Self {
        let labels = started.route_labels();
        for r in &mut config.routes {
            r.series = labels
                .iter()
                .position(|l| *l == r.label)
                .unwrap_or(usize::MAX);
        }
        let upstream_series = config
            .upstreams
            .iter()
            .map(|u| started.upstreams.iter().position(|s| s.name == u.name))
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|c| {
                previous
                    .and_then(|p| p.upstreams.iter().find(|u| u.config == *c))
                    .map_or_else(|| Arc::new(Upstream::new(c.clone())), Arc::clone)
            })
            .collect();
        let routes = RouteTable::new(config.routes.clone());
        let header_names = Arc::new(config.headers.clone());
        let strip = StripSet::new(&header_names);
        let trailers: TrailerFilter = {
            let strip = strip.clone();
            Arc::new(move |t| strip_for_upstream(t, &strip))
        };
        Self {
            trailers,
            lookalikes: Lookalikes::new(&header_names),
            strip,
            header_names,
            config,
            routes,
            upstreams,
            upstream_series,
        }
    }

    /// Upstream `i`'s index among the metric series, if it has one.
    pub fn upstream_series(&self, i: usize) -> Option<usize> {
        self.upstream_series.get(i).copied().flatten()
    }

    /// The route and upstream for a normalised path, after refusing
    /// look-alike headers. Has no side effects.
    pub fn route(
        &self,
        path: &str,
        method: &http::Method,
        headers: &(impl RequestFields + ?Sized),
    ) -> Result<(&RouteConfig, &Upstream), Denial> {
        check_method(method)?;
        self.lookalikes.check(headers)?;
        let route = match self.routes.find(path, method) {
            RouteMatch::Found(r) => r,
            RouteMatch::MethodNotAllowed => return Err(Denial::MethodNotAllowed),
            RouteMatch::NotFound => return Err(Denial::RouteNotFound),
        };
        let upstream = self
            .upstreams
            .get(route.upstream)
            .ok_or(Denial::RouteNotFound)?;
        Ok((route, upstream))
    }

    /// The header names the gateway sets and strips.
    pub fn header_names(&self) -> &HeaderNames {
        &self.header_names
    }

    /// What request trailers go through on their way upstream (the
    /// request headers' own filter).
    pub fn trailer_filter(&self) -> &TrailerFilter {
        &self.trailers
    }

    /// Every request header name the gateway strips, for reading names as
    /// bytes (the fast path).
    pub fn strip_set(&self) -> &StripSet {
        &self.strip
    }

    /// The upstreams, in config order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }
}

impl Gateway {
    /// Assembles a gateway over an open store.
    pub fn new(config: Config, store: Arc<dyn TokenStore>, clock: Clock) -> Arc<Self> {
        let route_labels = config.route_labels();
        let upstream_names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        let metrics = Arc::new(Metrics::new(Series::new(&route_labels, &upstream_names)));
        let signals = Arc::new(Signals::new(
            Arc::clone(&metrics),
            config.log.clone(),
            &route_labels,
            &upstream_names,
        ));
        let cache = Arc::new(TokenCache::new(
            &config.cache,
            config.store.timeout,
            Arc::clone(&metrics),
        ));
        let issuer = Issuer::new(
            Arc::clone(&store),
            config.tokens.clone(),
            clock.clone(),
            Some(Arc::clone(&cache)),
        );
        let last_used = LastUsed::new(config.store.last_used_resolution);
        // Counts survive a reload; policies come with each route
        // (`RouteConfig::rate_limits`), so a reload swaps them with it.
        let limiter = Limiter::new(
            config.rate_limits.clone(),
            Arc::clone(&metrics),
            clock.clone(),
        );
        let live = ArcSwap::from_pointee(Snapshot::build(config.clone(), None, &config));
        Arc::new(Self {
            config,
            store,
            cache,
            issuer,
            metrics,
            signals,
            last_used,
            limiter,
            clock,
            live,
        })
    }

    /// The reloadable config in force and what is built from it. A request
    /// takes it once and keeps it to its end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Puts `next` in force for every request that starts from now on
    /// (`crate::reload` builds and checks it first).
    pub fn install(&self, next: Snapshot) {
        self.live.store(Arc::new(next));
    }

    /// The clock decisions are made against.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Closes upstream connections idle past their upstream's timeout.
    pub fn sweep_idle_upstreams(&self) {
        for u in self.snapshot().upstreams() {
            u.sweep_idle();
        }
    }

    /// How often [`Self::sweep_idle_upstreams`] should run: half the
    /// shortest idle timeout, so no connection stays idle more than 1.5
    /// times its timeout.
    pub fn sweep_interval(&self) -> std::time::Duration {
        self.snapshot()
            .upstreams()
            .iter()
            .map(|u| u.config.pool_idle_timeout / 2)
            .min()
            .unwrap_or(std::time::Duration::from_secs(30))
            .max(std::time::Duration::from_millis(100))
    }

    /// A request's id and trace ([`crate::trace::identify`]), worked out
    /// once, first, by both codecs; `started`: when its head was read.
    pub fn identify(
        &self,
        fields: &(impl RequestFields + ?Sized),
        started: Instant,
    ) -> (HeaderValue, Trace) {
        crate::trace::identify(fields, self.config.server.trust_request_id, started)
    }

    /// A refusal's response in pieces (`Denial::parts`), for both codecs:
    /// a 405 also says which methods the path allows (`Allow`, RFC 9110
    /// 15.5.6), `path` being the normalised path. Counts and logs it.
    pub(crate) fn refusal(
        &self,
        denial: Denial,
        request_id: &HeaderValue,
        path: Option<&str>,
    ) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
        self.count_refusal(denial, request_id);
        let (status, mut headers, body) = denial.parts(Some(request_id));
        if let (Denial::MethodNotAllowed, Some(path)) = (denial, path) {
            // The snapshot in force now: a reload between the refusal and
            // here is the only way it can differ from the request's.
            let allow = self.snapshot().routes.allow(path);
            if let Ok(allow) = HeaderValue::from_str(&allow) {
                headers.insert(http::header::ALLOW, allow);
            }
        }
        (status, headers, body)
    }

    /// Counts and logs a refusal (its response is made by the caller).
    pub fn count_refusal(&self, denial: Denial, request_id: &HeaderValue) {
        self.metrics.deny(denial.code());
        tracing::debug!(
            request_id = ?request_id,
            code = denial.code(),
            status = denial.status().as_u16(),
            "request refused"
        );
    }

    /// Resolves when `credential` no longer admits a request to `route`
    /// (revoked, expired, blocked, abilities gone). `changes` must have
    /// been taken before the admission, so that no invalidation falls
    /// between the two. Checked again on every invalidation this instance
    /// applies (at most one check per [`TUNNEL_RECHECK_GAP`], so a burst of
    /// them costs each tunnel one check), at the token's expiry, and at
    /// least once per cache TTL (a change made by another process on
    /// SQLite). A store that cannot answer ends nothing: a tunnel is cut for
    /// a refusal, not for an outage.
    pub fn tunnel_end(
        self: &Arc<Self>,
        credential: String,
        route: RouteConfig,
        mut changes: tokio::sync::watch::Receiver<u64>,
        expires_at: Option<i64>,
    ) -> TunnelEnd {
        let gateway = Arc::clone(self);
        Box::pin(async move {
            let ttl = gateway.cache.ttl().max(Duration::from_secs(1));
            let mut expires_at = expires_at;
            loop {
                let until_expiry = expires_at.map(|at| {
                    let left = at.saturating_sub(gateway.clock.now()).max(0);
                    Duration::from_secs(u64::try_from(left).unwrap_or(0))
                });
                let wait = until_expiry.map_or(ttl, |e| e.min(ttl));
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // The cache is gone (it cannot be while
                            // `gateway` is held); fall back to the timer.
                            tokio::time::sleep(wait).await;
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                }
                let now = gateway.clock.now();
                match gateway
                    .authenticate(
                        Some(credential.as_bytes()),
                        &route,
                        MemoUse::none(),
                        now,
                        Instant::now(),
                    )
                    .await
                {
                    Ok(entry) => expires_at = entry.and_then(|e| e.record.expires_at),
                    Err(
                        d @ (Denial::MalformedToken
                        | Denial::UnknownToken
                        | Denial::TokenRevoked
                        | Denial::TokenExpired
                        | Denial::AbilityMissing
                        | Denial::AccountBlocked
                        | Denial::TenantBlocked
                        | Denial::TokenKindNotAllowed),
                    ) => {
                        gateway.metrics.tunnels_refused.inc();
                        tracing::info!(
                            code = d.code(),
                            "closing an upgraded tunnel: its token no longer admits it"
                        );
                        return;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(TUNNEL_RECHECK_GAP).await;
            }
        })
    }

    /// Authenticates the request as its route demands, counts it against
    /// the route's rate limits and the token's own limit and quota
    /// ([`Limiter::check_waiting`]), and records the token's use. `entry`
    /// is `None` when no token was needed, or none sent on an `optional`
    /// route; `limits` the `RateLimit` fields every answer to it carries.
    /// `started`: when the request's head was read, the time its expiry
    /// and limits are judged at. `memo`: the connection's memo of its last
    /// token, as this request may use it.
    pub async fn admit(
        &self,
        route: &RouteConfig,
        headers: &(impl RequestFields + ?Sized),
        memo: MemoUse<'_>,
        client_ip: IpAddr,
        started: Instant,
    ) -> Result<Admission, Denial> {
        // The request's one reading of the clock, for its expiry and limits.
        let now = self.clock.at(started);
        let entry = match route.auth {
            AuthMode::None => None,
            AuthMode::Required | AuthMode::Optional => {
                self.authenticate(credential_bytes(headers)?, route, memo, now, started)
                    .await?
            }
        };
        let record = entry.as_deref().map(|e| &e.record);
        let subject = Subject {
            token_id: entry.as_deref().map(|e| &e.last_used_key),
            account_id: record.and_then(|r| r.account_id),
            tenant_id: record.and_then(|r| r.tenant_id),
            client_ip,
            limits: record.map(|r| &r.limits),
        };
        let mut standings = self
            .limiter
            .check_waiting(&route.rate_limits, &subject, now)
            .await
            .map_err(|r| match r {
                Refused::RateLimited(r) => Denial::RateLimited(r),
                Refused::QuotaExceeded(r) => Denial::QuotaExceeded(r),
            })?;
        if let Some(e) = &entry {
            self.last_used.note_use(e, now);
        }
        Ok(Admission {
            entry,
            limits: header_values(&mut standings),
        })
    }

    /// Finds and judges the request's token for a route. `Ok(None)`: no
    /// credential on an `optional` route. `now`: the request's reading of
    /// the clock, which expiry is judged at (`started`, as an instant).
    async fn authenticate(
        &self,
        credential: Option<&[u8]>,
        route: &RouteConfig,
        memo: MemoUse<'_>,
        now: i64,
        started: Instant,
    ) -> Result<Option<Arc<AuthEntry>>, Denial> {
        let Some(token) = credential else {
            return match route.auth {
                AuthMode::Optional => Ok(None),
                _ => Err(Denial::MissingToken),
            };
        };
        let entry = match memo.get(token, &self.cache, started) {
            Some(entry) => {
                self.metrics.cache_lookups.inc();
                self.metrics.memo_hits.inc();
                entry
            }
            None => {
                let token = as_token(token)?;
                let epoch = self.cache.epoch();
                let entry = self.lookup_at(token, started).await?;
                memo.put(token, &entry, epoch);
                entry
            }
        };
        decide(
            &entry.record,
            now,
            route.abilities.iter().map(|a| a.as_str()),
        )?;
        if !kind_may_proxy(entry.record.kind) {
            return Err(Denial::TokenKindNotAllowed);
        }
        Ok(Some(entry))
    }

    /// Authenticates a control-plane caller: any token that is valid now
    /// (not revoked or expired, tenant and account active). Each endpoint
    /// then decides which kinds it accepts.
    pub async fn caller(&self, headers: &http::HeaderMap) -> Result<Caller, Denial> {
        let token = extract_credential(headers)?.ok_or(Denial::MissingToken)?;
        let entry = self.lookup(token).await?;
        decide(&entry.record, self.clock.now(), std::iter::empty())?;
        Ok(Caller::from_record(&entry.record))
    }

    /// Cheap checks, then cache (then store). Used by the proxy path and the
    /// control plane alike.
    pub async fn lookup(&self, token: &str) -> Result<Arc<AuthEntry>, Denial> {
        self.lookup_at(token, Instant::now()).await
    }

    /// [`Self::lookup`] for a request that read the clock at `at`.
    async fn lookup_at(&self, token: &str, at: Instant) -> Result<Arc<AuthEntry>, Denial> {
        let checked = self
            .config
            .tokens
            .check(token)
            .map_err(|_| Denial::MalformedToken)?;
        self.metrics.cache_lookups.inc();
        let entry = self
            .cache
            .get_at(TokenHash::of(token), self.store.as_ref(), at)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "token store unavailable; failing closed");
                Denial::StoreUnavailable
            })?
            .ok_or(Denial::UnknownToken)?;
        // A token whose prefix claims another kind than its row is not ours.
        if let Checked::Native(kind) = checked {
            if kind != entry.record.kind {
                return Err(Denial::UnknownToken);
            }
        }
        Ok(entry)
    }
}

/// Refuses a case variant of a standard method ([`is_miscased_method`]),
/// before anything matches on the method: the seed flows and
/// [`Snapshot::route`].
pub fn check_method(method: &http::Method) -> Result<(), Denial> {
    if is_miscased_method(method) {
        return Err(Denial::BadMethod);
    }
    Ok(())
}
