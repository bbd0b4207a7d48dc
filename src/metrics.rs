//! Process-wide counters, rendered as Prometheus text on `/metrics`.
//!
//! Plain atomics on the success path (one relaxed add per request); the
//! per-code denial counters sit in a dashmap because denials are off the
//! hot path and their set of codes is open-ended.
//!
//! The per-route and per-upstream series ([`Series`]) are made at start-up,
//! one per `route` label and upstream name the config has (label values
//! never come from a request), so a request finds its cells by index: no
//! hashing, no lock, no allocation. They are sharded per thread (each
//! thread adds to its own copy of every cell, on cache lines of its own)
//! and summed when `/metrics` is read, so two cores serving one route do
//! not fight over one cache line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency histograms' buckets, in microseconds: from
/// 100 us (a cached decision on the fast path) to a minute (a slow
/// upstream), about three per decade.
pub const BUCKETS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Cells of one histogram: a count per bucket, one past the last (`+Inf`),
/// then the sum of observations in microseconds.
const HIST_CELLS: usize = BUCKETS_US.len() + 2;

/// Cells of one route series: a count per status class (1xx to 5xx), then
/// its duration histogram.
const ROUTE_CELLS: usize = 5 + HIST_CELLS;

/// The `route` label of a request: a configured route's series, or one of
/// the fixed labels of requests no route decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteSeries {
    /// The route's [series index](crate::route::RouteConfig::series).
    Route(usize),
    /// Matched no route (or was refused before routing): `route="none"`.
    None,
    /// A seed token endpoint: `route="token_api"`.
    TokenApi,
    /// A forward-auth request: `route="forward_auth"`.
    ForwardAuth,
}

/// The fixed `route` labels after the configured ones, in [`RouteSeries`]
/// order.
const FIXED_ROUTE_LABELS: [&str; 3] = ["none", "token_api", "forward_auth"];

/// Unused cells at each end of a shard: 128 bytes, so that no two
/// shards' cells share a cache line however the allocator places them.
const PAD: usize = 16;

/// One thread's copy of every cell.
#[derive(Debug)]
struct Shard(Box<[AtomicU64]>);

impl Shard {
    fn new(cells: usize) -> Self {
        Self((0..cells + 2 * PAD).map(|_| AtomicU64::new(0)).collect())
    }

    fn cells(&self) -> &[AtomicU64] {
        self.0.get(PAD..self.0.len() - PAD).unwrap_or_default()
    }
}

/// Request and upstream series, sharded per thread.
#[derive(Debug)]
pub struct Series {
    routes: Vec<String>,
    upstreams: Vec<String>,
    shards: Box<[Shard]>,
}

/// Which shard the current thread adds to: threads are numbered as they
/// first record, so the runtime's workers (the threads that serve
/// requests) each get one of their own while there are enough.
fn shard_of(n: usize) -> usize {
    use std::cell::Cell;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let i = MINE.with(|m| {
        if m.get() == usize::MAX {
            m.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        m.get()
    });
    i % n
}

impl Series {
    /// Series for these configured route labels (in
    /// [`crate::route::RouteConfig::series`] order) and upstream names,
    /// plus the fixed route labels.
    pub fn new(routes: &[&str], upstreams: &[&str]) -> Self {
        let routes: Vec<String> = routes
            .iter()
            .chain(FIXED_ROUTE_LABELS.iter())
            .map(|s| (*s).to_owned())
            .collect();
        let upstreams: Vec<String> = upstreams.iter().map(|s| (*s).to_owned()).collect();
        let cells = routes.len() * ROUTE_CELLS + upstreams.len() * HIST_CELLS;
        // One shard per core, up to 16: more would only cost memory and
        // reading time.
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 16);
        let shards = (0..n).map(|_| Shard::new(cells)).collect();
        Self {
            routes,
            upstreams,
            shards,
        }
    }

    fn route_index(&self, route: RouteSeries) -> usize {
        let fixed = self.routes.len() - FIXED_ROUTE_LABELS.len();
        match route {
            // A configured index is always in range; anything else counts
            // as matching no route rather than panicking.
            RouteSeries::Route(i) if i < fixed => i,
            RouteSeries::Route(_) | RouteSeries::None => fixed,
            RouteSeries::TokenApi => fixed + 1,
            RouteSeries::ForwardAuth => fixed + 2,
        }
    }

    fn cells(&self) -> &[AtomicU64] {
        self.shards
            .get(shard_of(self.shards.len()))
            .map_or(&[], Shard::cells)
    }

    /// Counts a request answered with `status` after `elapsed`.
    pub fn request(&self, route: RouteSeries, status: u16, elapsed: Duration) {
        let cells = self.cells();
        let base = self.route_index(route) * ROUTE_CELLS;
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        if let Some(c) = cells.get(base + class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(h) = cells.get(base + 5..base + ROUTE_CELLS) {
            observe(h, elapsed);
        }
    }

    /// Times an upstream's answer (`upstream` indexes the configured
    /// upstreams).
    pub fn upstream(&self, upstream: usize, elapsed: Duration) {
        let base = self.routes.len() * ROUTE_CELLS + upstream * HIST_CELLS;
        if let Some(h) = self.cells().get(base..base + HIST_CELLS) {
            observe(h, elapsed);
        }
    }

    /// The sum of one cell over every shard.
    fn total(&self, cell: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.cells().get(cell).map_or(0, |c| c.load(Ordering::Relaxed)))
            .sum()
    }

    /// Requests counted for a route label and status class (`2xx`), for
    /// tests and the render.
    pub fn requests(&self, route: RouteSeries, class: usize) -> u64 {
        self.total(self.route_index(route) * ROUTE_CELLS + class.clamp(1, 5) - 1)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP tokengate_requests_total Requests answered on the public listener, by route and status class.\n# TYPE tokengate_requests_total counter"
        );
        for (i, route) in self.routes.iter().enumerate() {
            let route = escape_label(route);
            for class in 1..=5usize {
                let n = self.total(i * ROUTE_CELLS + class - 1);
                // 1xx (an agreed upgrade) only once there is one.
                if class > 1 || n > 0 {
                    let _ = writeln!(
                        out,
                        "tokengate_requests_total{{route=\"{route}\",status=\"{class}xx\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP tokengate_request_duration_seconds Time from a request's head read to its response's end, by route.\n# TYPE tokengate_request_duration_seconds histogram"
        );
        for (i, route) in self.routes.iter().enumerate() {
            let label = format!("route=\"{}\"", escape_label(route));
            self.render_histogram(
                out,
                "tokengate_request_duration_seconds",
                &label,
                i * ROUTE_CELLS + 5,
            );
        }
        let _ = writeln!(
            out,
            "# HELP tokengate_upstream_duration_seconds Time from a request sent upstream to its response head (or failure), by upstream.\n# TYPE tokengate_upstream_duration_seconds histogram"
        );
        let base = self.routes.len() * ROUTE_CELLS;
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let label = format!("upstream=\"{}\"", escape_label(upstream));
            self.render_histogram(
                out,
                "tokengate_upstream_duration_seconds",
                &label,
                base + i * HIST_CELLS,
            );
        }
    }

    fn render_histogram(&self, out: &mut String, name: &str, label: &str, base: usize) {
        let mut cumulative = 0;
        for (b, le) in BUCKETS_US.iter().enumerate() {
            cumulative += self.total(base + b);
            let _ = writeln!(
                out,
                "{name}_bucket{{{label},le=\"{}\"}} {cumulative}",
                seconds(*le)
            );
        }
        cumulative += self.total(base + BUCKETS_US.len());
        let sum = self.total(base + BUCKETS_US.len() + 1);
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{label}}} {}", seconds(sum));
        let _ = writeln!(out, "{name}_count{{{label}}} {cumulative}");
    }
}

/// Adds one observation to a histogram's cells: its bucket and the sum
/// (the count is the buckets' total).
fn observe(cells: &[AtomicU64], elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let bucket = BUCKETS_US
        .iter()
        .position(|le| us <= *le)
        .unwrap_or(BUCKETS_US.len());
    if let (Some(b), Some(sum)) = (cells.get(bucket), cells.get(BUCKETS_US.len() + 1)) {
        b.fetch_add(1, Ordering::Relaxed);
        sum.fetch_add(us, Ordering::Relaxed);
    }
}

/// Microseconds as seconds, as Prometheus writes them (`0.00025`, `1`).
fn seconds(us: u64) -> String {
    let s = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A label value as the exposition format needs it (`\`, `"` and newlines
/// escaped). Config names are checked, but paths may hold anything.
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Every counter the gateway keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Requests forwarded upstream (any upstream status).
    pub forwarded: Counter,
    /// Requests refused or failed, by denial code.
    pub denied: DashMap<&'static str, u64>,
    /// Token lookups that went to the cache (hits and misses).
    pub cache_lookups: Counter,
    /// Lookups answered by the connection's memo of its last token (also
    /// counted in `cache_lookups`).
    pub memo_hits: Counter,
    /// Queries sent to the store by the request path (cache misses).
    pub store_lookups: Counter,
    /// Last-used rows written.
    pub last_used_written: Counter,
    /// Last-used flushes that failed (their data is kept for the next one).
    pub last_used_flush_failures: Counter,
    /// WebSocket / upgrade tunnels opened.
    pub upgrades: Counter,
    /// Tunnels closed because their token stopped admitting them.
    pub tunnels_refused: Counter,
    /// Invalidations received from the shared store's feed.
    pub invalidations_received: Counter,
    /// Times the invalidation feed reconnected and the cache was cleared.
    pub feed_resyncs: Counter,
    /// Requests served by the seed token endpoints.
    pub token_api_requests: Counter,
    /// Forward-auth requests answered 200 (refusals are counted by code
    /// in `denied`, with the proxy path's).
    pub forward_auth_allowed: Counter,
    /// Requests refused by a rate limit or quota, by policy name
    /// (`token` and `quota` for a token's own).
    pub rate_limited: DashMap<Box<str>, u64>,
    /// Errors talking to the shared rate-limit store (Redis).
    pub rate_limit_store_errors: Counter,
    /// Config reloads (SIGHUP) that applied.
    pub config_reloads_ok: Counter,
    /// Config reloads refused (a bad file or certificate; nothing changed).
    pub config_reloads_error: Counter,
    /// Access-log lines dropped because the writer fell behind (its batch
    /// was full) or failed.
    pub access_log_dropped: Counter,
    /// Per-route and per-upstream series.
    pub series: Series,
}

impl Default for Metrics {
    /// No configured routes or upstreams (the fixed route labels only).
    fn default() -> Self {
        Self::new(Series::new(&[], &[]))
    }
}

impl Metrics {
    /// Counters at zero, with these series.
    pub fn new(series: Series) -> Self {
        Self {
            forwarded: Counter::default(),
            denied: DashMap::new(),
            cache_lookups: Counter::default(),
            memo_hits: Counter::default(),
            store_lookups: Counter::default(),
            last_used_written: Counter::default(),
            last_used_flush_failures: Counter::default(),
            upgrades: Counter::default(),
            tunnels_refused: Counter::default(),
            invalidations_received: Counter::default(),
            feed_resyncs: Counter::default(),
            token_api_requests: Counter::default(),
            forward_auth_allowed: Counter::default(),
            access_log_dropped: Counter::default(),
            rate_limited: DashMap::new(),
            rate_limit_store_errors: Counter::default(),
            config_reloads_ok: Counter::default(),
            config_reloads_error: Counter::default(),
            series,
        }
    }

    /// Counts a denial.
    pub fn deny(&self, code: &'static str) {
        *self.denied.entry(code).or_insert(0) += 1;
    }

    /// Counts a request refused by the named rate-limit policy.
    pub fn rate_limited(&self, policy: &str) {
        match self.rate_limited.get_mut(policy) {
            Some(mut n) => *n += 1,
            None => *self.rate_limited.entry(policy.into()).or_insert(0) += 1,
        }
    }

    /// Requests refused so far by this policy.
    pub fn rate_limited_count(&self, policy: &str) -> u64 {
        self.rate_limited.get(policy).map(|v| *v).unwrap_or(0)
    }

    /// Denials so far with this code.
    pub fn denied_count(&self, code: &str) -> u64 {
        self.denied.get(code).map(|v| *v).unwrap_or(0)
    }

    /// Prometheus text exposition.
    pub fn render(&self, cache_entries: u64) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "tokengate_forwarded_total",
            "Requests forwarded upstream.",
            self.forwarded.get(),
        );
        counter(
            "tokengate_cache_lookups_total",
            "Token lookups made against the cache.",
            self.cache_lookups.get(),
        );
        counter(
            "tokengate_memo_hits_total",
            "Token lookups answered by the connection's memo of its last token.",
            self.memo_hits.get(),
        );
        counter(
            "tokengate_store_lookups_total",
            "Token lookups that reached the store.",
            self.store_lookups.get(),
        );
        counter(
            "tokengate_last_used_written_total",
            "Last-used timestamps written to the store.",
            self.last_used_written.get(),
        );
        counter(
            "tokengate_last_used_flush_failures_total",
            "Last-used flushes that failed and were retried.",
            self.last_used_flush_failures.get(),
        );
        counter(
            "tokengate_upgrades_total",
            "Upgraded (WebSocket) connections tunnelled.",
            self.upgrades.get(),
        );
        counter(
            "tokengate_tunnels_refused_total",
            "Upgraded tunnels closed because their token was revoked, expired or blocked, or lost the route's abilities.",
            self.tunnels_refused.get(),
        );
        counter(
            "tokengate_invalidations_received_total",
            "Invalidations received from other instances via the store.",
            self.invalidations_received.get(),
        );
        counter(
            "tokengate_token_api_requests_total",
            "Requests served by the seed token endpoints.",
            self.token_api_requests.get(),
        );
        counter(
            "tokengate_forward_auth_allowed_total",
            "Forward-auth requests answered 200 (allowed).",
            self.forward_auth_allowed.get(),
        );
        counter(
            "tokengate_feed_resyncs_total",
            "Invalidation feed reconnects (each clears the cache).",
            self.feed_resyncs.get(),
        );
        counter(
            "tokengate_access_log_dropped_total",
            "Access-log lines dropped: the writer fell behind or failed.",
            self.access_log_dropped.get(),
        );
        counter(
            "tokengate_rate_limit_store_errors_total",
            "Errors reaching the shared rate-limit store; limits were kept locally meanwhile.",
            self.rate_limit_store_errors.get(),
        );
        let _ = writeln!(
            out,
            "# HELP tokengate_rate_limited_total Requests refused by a rate limit or quota, by policy.\n# TYPE tokengate_rate_limited_total counter"
        );
        let mut policies: Vec<_> = self
            .rate_limited
            .iter()
            .map(|e| (e.key().to_string(), *e.value()))
            .collect();
        policies.sort();
        for (policy, n) in policies {
            let _ = writeln!(
                out,
                "tokengate_rate_limited_total{{policy=\"{policy}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tokengate_config_reloads_total Config reloads (SIGHUP), by result.\n# TYPE tokengate_config_reloads_total counter\ntokengate_config_reloads_total{{result=\"ok\"}} {}\ntokengate_config_reloads_total{{result=\"error\"}} {}",
            self.config_reloads_ok.get(),
            self.config_reloads_error.get()
        );
        let _ = writeln!(
            out,
            "# HELP tokengate_denied_total Requests refused, by code.\n# TYPE tokengate_denied_total counter"
        );
        let mut codes: Vec<_> = self.denied.iter().map(|e| (*e.key(), *e.value())).collect();
        codes.sort();
        for (code, n) in codes {
            let _ = writeln!(out, "tokengate_denied_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tokengate_cache_entries Token records cached.\n# TYPE tokengate_cache_entries gauge\ntokengate_cache_entries {cache_entries}"
        );
        self.series.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP tokengate_build_info The running build.\n# TYPE tokengate_build_info gauge\ntokengate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        process::render(&mut out);
        out
    }
}

/// The process series, read from `/proc` when `/metrics` is (Linux only;
/// absent elsewhere).
mod process {
    use std::fmt::Write as _;

    /// `USER_HZ`: the unit of `/proc/self/stat`'s CPU times, 100 on every
    /// Linux ABI.
    const TICKS_PER_SECOND: f64 = 100.0;

    #[cfg(target_os = "linux")]
    pub(super) fn render(out: &mut String) {
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor reading the directory holds.
            let n = fds.count().saturating_sub(1);
            let _ = writeln!(
                out,
                "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {n}"
            );
        }
        if let Some(cpu) = cpu_seconds() {
            let _ = writeln!(
                out,
                "# HELP process_cpu_seconds_total User and system CPU time spent, in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn render(_out: &mut String) {}

    /// `VmRSS` of `/proc/self/status`, in bytes.
    #[cfg(target_os = "linux")]
    fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// `utime + stime` of `/proc/self/stat` (fields 14 and 15, counted
    /// after the command name, which may hold spaces).
    #[cfg(target_os = "linux")]
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some((utime + stime) as f64 / TICKS_PER_SECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_count_by_route_class_and_bucket() {
        let m = Metrics::new(Series::new(&["/api", "calls"], &["api"]));
        m.series
            .request(RouteSeries::Route(1), 204, Duration::from_micros(90));
        m.series
            .request(RouteSeries::Route(1), 503, Duration::from_millis(3));
        m.series
            .request(RouteSeries::None, 404, Duration::from_micros(10));
        m.series
            .request(RouteSeries::Route(99), 404, Duration::from_micros(10));
        m.series.upstream(0, Duration::from_secs(120));
        assert_eq!(m.series.requests(RouteSeries::Route(1), 2), 1);
        assert_eq!(m.series.requests(RouteSeries::None, 4), 2);
        let text = m.render(0);
        for line in [
            "tokengate_requests_total{route=\"calls\",status=\"2xx\"} 1",
            "tokengate_requests_total{route=\"calls\",status=\"5xx\"} 1",
            "tokengate_requests_total{route=\"/api\",status=\"2xx\"} 0",
            "tokengate_requests_total{route=\"none\",status=\"4xx\"} 2",
            "tokengate_requests_total{route=\"token_api\",status=\"2xx\"} 0",
            "tokengate_request_duration_seconds_bucket{route=\"calls\",le=\"0.0001\"} 1",
            "tokengate_request_duration_seconds_bucket{route=\"calls\",le=\"0.0025\"} 1",
            "tokengate_request_duration_seconds_bucket{route=\"calls\",le=\"0.005\"} 2",
            "tokengate_request_duration_seconds_bucket{route=\"calls\",le=\"+Inf\"} 2",
            "tokengate_request_duration_seconds_sum{route=\"calls\"} 0.00309",
            "tokengate_request_duration_seconds_count{route=\"calls\"} 2",
            "tokengate_upstream_duration_seconds_bucket{upstream=\"api\",le=\"60\"} 0",
            "tokengate_upstream_duration_seconds_bucket{upstream=\"api\",le=\"+Inf\"} 1",
            "tokengate_upstream_duration_seconds_sum{upstream=\"api\"} 120",
            "tokengate_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("status=\"1xx\""));
        #[cfg(target_os = "linux")]
        for name in [
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(name), "{name}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("/a\"b\\c\nd"), "/a\\\"b\\\\c\\nd");
        assert_eq!(seconds(250), "0.00025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(2_500_000), "2.5");
    }
}
