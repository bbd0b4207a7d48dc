//! Process-wide counters, rendered as Prometheus text on `/metrics`.
//!
//! Plain atomics on the success path (one relaxed add per request); the
//! per-code denial counters sit in a dashmap because denials are off the
//! hot path and their set of codes is open-ended.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Every counter the gateway keeps.
#[derive(Debug, Default)]
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
    /// Config reloads (SIGHUP) that applied.
    pub config_reloads_ok: Counter,
    /// Config reloads refused (a bad file or certificate; nothing changed).
    pub config_reloads_error: Counter,
}

impl Metrics {
    /// Counts a denial.
    pub fn deny(&self, code: &'static str) {
        *self.denied.entry(code).or_insert(0) += 1;
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
        out
    }
}
