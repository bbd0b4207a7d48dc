//! The cache of token records, keyed by SHA-256 of the token.
//!
//! - moka holds found records for `cache.ttl_seconds` and unknown hashes for
//!   `cache.negative_ttl_seconds` (per-entry expiry).
//! - A miss loads through `try_get_with`, which is single-flight: a thousand
//!   concurrent requests for one cold token cause one store query.
//! - The cache never decides anything: the caller runs [`crate::auth::decide`]
//!   on every hit, so expiry is judged by the clock, not by the TTL.
//!
//! # Revocation races
//!
//! moka cannot tell that a value being loaded went stale while the query
//! was in flight: a revocation that commits after the load read the row, and
//! evicts before the load inserts, would leave the old record cached for a
//! whole TTL. So every invalidation (token revoked or minted, account or
//! tenant blocked, everything cleared) first takes a new number from a
//! global `epoch` and leaves a *tombstone* with it, then evicts. Every entry
//! remembers the epoch read before its query began. An entry is stale when a
//! tombstone for its token, account or tenant is newer than it; such an entry
//! is dropped and loaded again, even one that was only just loaded. When no
//! invalidation happened since an entry was loaded (the common case) the
//! check is a single atomic load.
//!
//! Tombstones live for the cache TTL plus the store timeout, longer than any
//! entry that could predate them. If capacity evicts a tombstone early, the
//! eviction raises `cleared_before`, which treats every older entry as stale:
//! correctness is kept at the price of some reloads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use moka::notification::RemovalCause;

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::store::{AuthRecord, StoreError, TokenLookup};
use crate::token::TokenHash;

/// Most tombstones kept per kind. A revocation storm past this only costs
/// reloads (see the module doc).
const MAX_TOMBSTONES: u64 = 100_000;

/// Times a stale entry is reloaded within one request before the request
/// is answered from a direct, uncached load.
const MAX_RELOADS: usize = 3;

/// A found token, with the header values the proxy sends upstream already
/// encoded (done once per load, not once per request).
#[derive(Debug)]
pub struct AuthEntry {
    /// The record the decision is made on.
    pub record: AuthRecord,
    /// Token id as a header value.
    pub token_id: HeaderValue,
    /// Token name, percent-encoded where not visible ASCII.
    pub token_name: HeaderValue,
    /// Abilities, comma-separated.
    pub abilities: HeaderValue,
    /// Tenant id, if any.
    pub tenant_id: Option<HeaderValue>,
    /// Account id, if any.
    pub account_id: Option<HeaderValue>,
    /// Workspace id, if any.
    pub workspace_id: Option<HeaderValue>,
    /// Key for last-used batching.
    pub last_used_key: Arc<str>,
    /// When it was read from the store.
    pub loaded: Instant,
    /// The last second in which it was used (see [`AuthEntry::first_use_in`]).
    used_in: AtomicI64,
    /// [`crate::proxy::caller_headers`] as written on the wire, made on
    /// the fast path's first use of the entry.
    pub wire: OnceLock<Vec<u8>>,
}

impl AuthEntry {
    /// Builds the entry for a record.
    pub fn new(record: AuthRecord) -> Self {
        let int = |v: Option<i64>| v.map(HeaderValue::from);
        Self {
            token_id: header_text(&record.token_id),
            token_name: header_text(&record.name),
            abilities: header_text(&record.abilities.join(",")),
            tenant_id: int(record.tenant_id),
            account_id: int(record.account_id),
            workspace_id: int(record.workspace_id),
            last_used_key: Arc::from(record.token_id.as_str()),
            loaded: Instant::now(),
            used_in: AtomicI64::new(i64::MIN),
            wire: OnceLock::new(),
            record,
        }
    }

    /// Notes a use in second `now` (Unix); `false` when this entry was
    /// already used in that second. A use's time need only be recorded
    /// once a second ([`crate::usage::LastUsed::record`] keeps whole
    /// seconds), so a busy token costs one atomic swap per request instead
    /// of a map lookup.
    pub fn first_use_in(&self, now: i64) -> bool {
        self.used_in.swap(now, Ordering::Relaxed) != now
    }
}

/// A header value from arbitrary text: visible ASCII and spaces as they are,
/// everything else percent-encoded (so `Zoë` becomes `Zo%C3%AB`).
pub fn header_text(s: &str) -> HeaderValue {
    if let Ok(v) = HeaderValue::from_str(s) {
        if s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return v;
        }
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if (b == b' ' || b.is_ascii_graphic()) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

/// What the cache holds for a hash: the record or "unknown", and the epoch
/// read before the query that produced it.
#[derive(Debug)]
struct Cached {
    loaded_at: u64,
    entry: Option<Arc<AuthEntry>>,
}

struct Expiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<TokenHash, Arc<Cached>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Arc<Cached>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(if value.entry.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }
}

/// The token-record cache. Cheap to share behind an `Arc`.
pub struct TokenCache {
    records: moka::future::Cache<TokenHash, Arc<Cached>>,
    epoch: AtomicU64,
    cleared_before: Arc<AtomicU64>,
    dead_tokens: moka::sync::Cache<TokenHash, u64>,
    dead_accounts: moka::sync::Cache<i64, u64>,
    dead_tenants: moka::sync::Cache<i64, u64>,
    store_timeout: Duration,
    ttl: Duration,
    metrics: Arc<Metrics>,
    /// The epoch, for whoever must act on an invalidation rather than
    /// check at its next read (an open tunnel).
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.records.entry_count())
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish()
    }
}

fn tombstones<K>(ttl: Duration, cleared_before: &Arc<AtomicU64>) -> moka::sync::Cache<K, u64>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    let cleared = Arc::clone(cleared_before);
    moka::sync::Cache::builder()
        .max_capacity(MAX_TOMBSTONES)
        .time_to_live(ttl)
        .eviction_listener(move |_k, epoch: u64, cause| {
            // A tombstone pushed out by capacity (not by its TTL) may still be
            // needed: make every entry older than it stale instead.
            if cause == RemovalCause::Size {
                cleared.fetch_max(epoch, Ordering::AcqRel);
            }
        })
        .build()
}

impl TokenCache {
    /// A cache sized and timed by `[cache]`; `store_timeout` bounds a load.
    pub fn new(cfg: &CacheConfig, store_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let cleared_before = Arc::new(AtomicU64::new(0));
        let tomb_ttl = cfg.ttl + store_timeout + Duration::from_secs(1);
        Self {
            records: moka::future::Cache::builder()
                .max_capacity(cfg.max_entries)
                .expire_after(Expiry {
                    ttl: cfg.ttl,
                    negative_ttl: cfg.negative_ttl,
                })
                .build(),
            epoch: AtomicU64::new(0),
            dead_tokens: tombstones(tomb_ttl, &cleared_before),
            dead_accounts: tombstones(tomb_ttl, &cleared_before),
            dead_tenants: tombstones(tomb_ttl, &cleared_before),
            cleared_before,
            store_timeout,
            ttl: cfg.ttl,
            metrics,
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The record for a hash: from the cache, or loaded (single-flight) from
    /// the store. `Ok(None)`: no such token. `Err`: the store could not be
    /// asked, and the caller must fail closed.
    pub async fn get(
        &self,
        hash: TokenHash,
        store: &dyn TokenLookup,
    ) -> Result<Option<Arc<AuthEntry>>, StoreError> {
        for _ in 0..MAX_RELOADS {
            let cached = self
                .records
                .try_get_with(hash, self.load(hash, store))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if !self.is_stale(&hash, &cached) {
                return Ok(cached.entry.clone());
            }
            self.records.invalidate(&hash).await;
        }
        // Invalidations keep landing on this token: answer from the store
        // directly rather than loop.
        Ok(self.load(hash, store).await?.entry.clone())
    }

    async fn load(
        &self,
        hash: TokenHash,
        store: &dyn TokenLookup,
    ) -> Result<Arc<Cached>, StoreError> {
        let loaded_at = self.epoch.load(Ordering::Acquire);
        self.metrics.store_lookups.inc();
        let found = tokio::time::timeout(self.store_timeout, store.lookup(&hash))
            .await
            .map_err(|_| StoreError::Unavailable("lookup timed out".into()))??;
        Ok(Arc::new(Cached {
            loaded_at,
            entry: found.map(|r| Arc::new(AuthEntry::new(r))),
        }))
    }

    fn is_stale(&self, hash: &TokenHash, c: &Cached) -> bool {
        if c.loaded_at == self.epoch.load(Ordering::Acquire) {
            return false;
        }
        if c.loaded_at < self.cleared_before.load(Ordering::Acquire) {
            return true;
        }
        let newer = |e: Option<u64>| e.is_some_and(|e| e > c.loaded_at);
        if newer(self.dead_tokens.get(hash)) {
            return true;
        }
        let Some(entry) = &c.entry else { return false };
        entry
            .record
            .account_id
            .is_some_and(|a| newer(self.dead_accounts.get(&a)))
            || entry
                .record
                .tenant_id
                .is_some_and(|t| newer(self.dead_tenants.get(&t)))
    }

    /// The invalidation count: it moves on every invalidation of any kind,
    /// so an answer taken while it read `e` is still current while it does.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Wakes on every invalidation (after the cache has forgotten what it
    /// names), for holders of a long-lived admission to check it again.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How long a record is trusted: what a holder of a long-lived
    /// admission re-checks it by when no invalidation tells it sooner (a
    /// change made by another process on SQLite, or an expiry).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets a token: after a revocation, or after a mint (so that a
    /// negative entry for its hash cannot outlive it).
    pub async fn invalidate_token(&self, hash: TokenHash) {
        let e = self.next_epoch();
        self.dead_tokens.insert(hash, e);
        self.records.invalidate(&hash).await;
        self.changes.send_replace(e);
    }

    /// Forgets every token of an account (blocked or unblocked).
    pub fn invalidate_account(&self, account_id: i64) {
        let e = self.next_epoch();
        self.dead_accounts.insert(account_id, e);
        self.changes.send_replace(e);
    }

    /// Forgets every token of a tenant (blocked or unblocked).
    pub fn invalidate_tenant(&self, tenant_id: i64) {
        let e = self.next_epoch();
        self.dead_tenants.insert(tenant_id, e);
        self.changes.send_replace(e);
    }

    /// Forgets everything (e.g. after missing invalidation events).
    pub fn invalidate_all(&self) {
        let e = self.next_epoch();
        self.cleared_before.fetch_max(e, Ordering::AcqRel);
        self.records.invalidate_all();
        self.changes.send_replace(e);
    }

    /// Entries currently held (approximate; for metrics).
    pub fn entry_count(&self) -> u64 {
        self.records.entry_count()
    }
}

/// The last token one client connection presented and its entry: clients
/// send the same token on every request of a keep-alive connection, and
/// this answers the repeat without hashing it or asking the cache.
///
/// Never less strict than the cache: the memo is used only while no
/// invalidation of any kind has happened since the entry was checked (the
/// cache's epoch has not moved) and while the entry is younger than the
/// cache TTL, and only for the identical token. Unknown tokens are never
/// memoised. The decision ([`crate::auth::decide`]) still runs on every
/// request.
#[derive(Default)]
pub struct ConnectionMemo(std::sync::Mutex<Option<Memo>>);

struct Memo {
    token: Box<str>,
    entry: Arc<AuthEntry>,
    epoch: u64,
}

impl std::fmt::Debug for ConnectionMemo {
    // Never shows the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionMemo")
    }
}

impl ConnectionMemo {
    /// The memoised entry, if `token` is the memoised token and the entry
    /// is still current.
    pub fn get(&self, token: &str, cache: &TokenCache) -> Option<Arc<AuthEntry>> {
        let slot = self.0.lock().ok()?;
        let m = slot.as_ref()?;
        let current = m.epoch == cache.epoch() && m.entry.loaded.elapsed() < cache.ttl;
        (current && same_secret(&m.token, token)).then(|| Arc::clone(&m.entry))
    }

    /// Remembers `entry` for `token`; `epoch` is [`TokenCache::epoch`] read
    /// before the lookup that produced it began.
    pub fn put(&self, token: &str, entry: &Arc<AuthEntry>, epoch: u64) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Memo {
                token: token.into(),
                entry: Arc::clone(entry),
                epoch,
            });
        }
    }
}

/// Equality that takes as long for a near miss as for a far one.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Status;
    use crate::token::TokenKind;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicBool;
    use tokio::sync::Notify;

    fn record(revoked: bool) -> AuthRecord {
        AuthRecord {
            token_id: "t1".into(),
            kind: TokenKind::Api,
            tenant_id: Some(1),
            account_id: Some(2),
            workspace_id: None,
            name: "n".into(),
            abilities: vec!["*".into()],
            expires_at: None,
            revoked_at: revoked.then_some(1),
            account_status: Some(Status::Active),
            tenant_status: Some(Status::Active),
        }
    }

    /// A store whose lookup reads the row, then (when gated) waits before
    /// answering: the window in which a revocation can commit and evict.
    struct GatedStore {
        revoked: AtomicBool,
        gate: AtomicBool,
        reached: Notify,
        release: Notify,
    }

    #[async_trait]
    impl TokenLookup for GatedStore {
        async fn lookup(&self, _h: &TokenHash) -> Result<Option<AuthRecord>, StoreError> {
            let seen = record(self.revoked.load(Ordering::SeqCst));
            if self.gate.swap(false, Ordering::SeqCst) {
                self.reached.notify_one();
                self.release.notified().await;
            }
            Ok(Some(seen))
        }
    }

    fn cache() -> TokenCache {
        TokenCache::new(
            &CacheConfig {
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(5),
                max_entries: 100,
            },
            Duration::from_secs(5),
            Arc::new(Metrics::default()),
        )
    }

    #[tokio::test]
    async fn a_fill_racing_a_revocation_never_caches_the_revoked_token_as_valid() {
        let cache = Arc::new(cache());
        let store = Arc::new(GatedStore {
            revoked: AtomicBool::new(false),
            gate: AtomicBool::new(true),
            reached: Notify::new(),
            release: Notify::new(),
        });
        let hash = TokenHash::of("tok");
        let (c, s) = (Arc::clone(&cache), Arc::clone(&store));
        let inflight = tokio::spawn(async move { c.get(hash, s.as_ref()).await });

        // The load has read the still-valid row; now the revocation commits
        // and evicts, before the load inserts its result.
        store.reached.notified().await;
        store.revoked.store(true, Ordering::SeqCst);
        cache.invalidate_token(hash).await;
        store.release.notify_one();

        let got = inflight.await.unwrap().unwrap().unwrap();
        assert!(
            got.record.revoked_at.is_some(),
            "in-flight request saw a stale record"
        );
        let again = cache.get(hash, store.as_ref()).await.unwrap().unwrap();
        assert!(
            again.record.revoked_at.is_some(),
            "stale record stayed cached"
        );
    }

    #[tokio::test]
    async fn account_block_makes_older_entries_stale() {
        let cache = cache();
        let store = GatedStore {
            revoked: AtomicBool::new(false),
            gate: AtomicBool::new(false),
            reached: Notify::new(),
            release: Notify::new(),
        };
        let hash = TokenHash::of("tok");
        cache.get(hash, &store).await.unwrap();
        cache.get(hash, &store).await.unwrap();
        assert_eq!(cache.metrics.store_lookups.get(), 1, "second get is a hit");
        cache.invalidate_account(2);
        cache.get(hash, &store).await.unwrap();
        assert_eq!(
            cache.metrics.store_lookups.get(),
            2,
            "blocked account reloads"
        );
        cache.invalidate_account(99);
        cache.get(hash, &store).await.unwrap();
        assert_eq!(
            cache.metrics.store_lookups.get(),
            2,
            "other accounts do not"
        );
        cache.invalidate_all();
        cache.get(hash, &store).await.unwrap();
        assert_eq!(cache.metrics.store_lookups.get(), 3, "clearing reloads");
    }

    #[test]
    fn header_text_encodes_what_headers_cannot_carry() {
        assert_eq!(header_text("CI Pipeline"), "CI Pipeline");
        assert_eq!(header_text("Zoë"), "Zo%C3%AB");
        assert_eq!(header_text("a\nb"), "a%0Ab");
        assert_eq!(header_text("100%\u{1}"), "100%25%01");
    }
}
