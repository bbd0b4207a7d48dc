//! The cache of token records, keyed by SHA-256 of the token.
//!
//! - moka holds found records for `cache.ttl_seconds` and unknown hashes for
//!   `cache.negative_ttl_seconds` (per-entry expiry).
//! - A miss loads through `try_get_with`, which is single-flight: a thousand
//!   concurrent requests for one cold token cause one store query.
//! - The cache never decides anything: the caller runs [`crate::auth::decide`]
//!   on every hit, so expiry is judged by the clock, not by the TTL.
//! - Hits are read from a dashmap *index* of the same entries, not from moka:
//!   a moka hit follows about five pointers (bucket array, bucket, value
//!   entry, then its recency list and frequency counters) into memory that a
//!   working set of 100k tokens keeps out of the CPU cache, and it dirties
//!   most of them. The index holds entry and key in one slot. moka stays the
//!   authority on what is held: entries enter the index only from a moka
//!   load, and leave it through moka's eviction listener (capacity, TTL,
//!   invalidation); clearing everything clears it too. A load moka never
//!   inserts (its request cancelled in between) can leave a stray, which is
//!   still checked like any entry and is swept out once the index outgrows
//!   moka's capacity. One index hit in sixteen on each runtime thread is
//!   also read through moka, a sample in proportion to each token's use,
//!   so that recency and frequency still rank what capacity evicts. The
//!   index is never trusted for correctness: the TTL and staleness checks
//!   below run on every hit.
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

use dashmap::DashMap;
use http::HeaderValue;
use moka::notification::RemovalCause;

use crate::metrics::Metrics;
use crate::store::{AuthRecord, StoreError, TokenLookup};
use crate::token::TokenHash;

/// Most tombstones kept per kind. A revocation storm past this only costs
/// reloads (see the module doc).
const MAX_TOMBSTONES: u64 = 100_000;

/// Times a stale entry is reloaded within one request before the request
/// is answered from a direct, uncached load.
const MAX_RELOADS: usize = 3;

/// One index hit in this many (per runtime thread) is also read through
/// moka (see the module doc): often enough for its eviction policy to rank
/// a busy token above an idle one, rarely enough not to pay moka's cost on
/// every hit.
const POLICY_READ_EVERY: u32 = 16;

/// Slack over `cache.max_entries` before the index is swept for strays:
/// moka itself may hold a few hundred entries over capacity until its
/// pending writes are processed.
const INDEX_SLACK: u64 = 1_024;

thread_local! {
    /// Index hits on this thread, for [`POLICY_READ_EVERY`]: counted here,
    /// not on the entry, so a hit writes to no shared memory.
    static INDEX_HITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

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
    /// When a use was last passed on to last-used batching (see
    /// [`AuthEntry::use_to_note`]).
    noted: AtomicI64,
    /// [`crate::rules::caller_headers`] as written on the wire, made on
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
            noted: AtomicI64::new(i64::MIN),
            wire: OnceLock::new(),
            record,
        }
    }

    /// Whether a use at `now` (Unix seconds) is to be passed on to
    /// `crate::usage::LastUsed::record`: the entry's first use, then the
    /// first at least `every` seconds (at least one) after the time its
    /// window was last set from (see [`AuthEntry::noted_from`]).
    /// `crate::usage::LastUsed` writes a token at most once per
    /// resolution period, so with `every` set to that period and the window
    /// set from what `record` answers, a token is looked up in its maps once
    /// a period instead of once a second (with 100k tokens each in use
    /// about once a second, that lookup was on nearly every request), and
    /// the stored time keeps its bound: at most the resolution plus the
    /// flush period behind the last use. Most calls only read the atomic,
    /// so they leave the entry's cache line clean.
    pub fn use_to_note(&self, now: i64, every: i64) -> bool {
        let last = self.noted.load(Ordering::Relaxed);
        if last != i64::MIN && now.saturating_sub(last) < every.max(1) {
            return false;
        }
        self.noted
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Sets the start of the window [`AuthEntry::use_to_note`] measures
    /// from: what `crate::usage::LastUsed::record` answered, which is
    /// earlier than the use when the token was written recently (by this
    /// entry or one loaded before it).
    pub fn noted_from(&self, since: i64) {
        self.noted.fetch_min(since, Ordering::Relaxed);
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
/// read before the query that produced it. Held by value (moka clones it on
/// a hit: one reference count), not behind another `Arc`, so a hit follows
/// one pointer fewer into memory that a big working set keeps cold.
#[derive(Clone, Debug)]
struct Cached {
    loaded_at: u64,
    entry: Option<Arc<AuthEntry>>,
    /// When it was loaded: the index's expiry check, and (with the above)
    /// which load this is.
    at: Instant,
}

impl Cached {
    /// The same load (not merely an equal record).
    fn is(&self, other: &Cached) -> bool {
        self.loaded_at == other.loaded_at
            && self.at == other.at
            && match (&self.entry, &other.entry) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// How long a load is trusted: found records for the TTL, unknown hashes
/// for the negative TTL. moka expires by it; the index checks hits by it.
#[derive(Clone, Copy)]
struct Expiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry {
    fn of(&self, c: &Cached) -> Duration {
        match c.entry {
            Some(_) => self.ttl,
            None => self.negative_ttl,
        }
    }
}

impl moka::Expiry<TokenHash, Cached> for Expiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Cached,
        _now: Instant,
    ) -> Option<Duration> {
        Some(self.of(value))
    }
}

/// The index of cache hits, hashed by foldhash, randomly seeded per
/// process: a hit is hashed on every new connection, and SipHash (the
/// standard hasher) cost several times as much. Seeded, so that what a
/// client can choose (a token, so its SHA-256) cannot pick the buckets.
type Index = DashMap<TokenHash, Cached, foldhash::quality::RandomState>;

/// The token-record cache. Cheap to share behind an `Arc`.
pub struct TokenCache {
    /// What is held: capacity, TTL, single-flight loads, invalidation.
    records: moka::future::Cache<TokenHash, Cached>,
    /// The same entries, for hits (see the module doc).
    index: Arc<Index>,
    epoch: AtomicU64,
    cleared_before: Arc<AtomicU64>,
    dead_tokens: moka::sync::Cache<TokenHash, u64>,
    dead_accounts: moka::sync::Cache<i64, u64>,
    dead_tenants: moka::sync::Cache<i64, u64>,
    store_timeout: Duration,
    expiry: Expiry,
    max_entries: u64,
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
        let expiry = Expiry {
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
        };
        let index: Arc<Index> = Arc::new(DashMap::default());
        let unindex = Arc::clone(&index);
        Self {
            records: moka::future::Cache::builder()
                .max_capacity(cfg.max_entries)
                .expire_after(expiry)
                // Whatever moka lets go of, for whatever cause, leaves the
                // index too; a newer load of the same hash stays.
                .eviction_listener(move |hash: Arc<TokenHash>, gone: Cached, _cause| {
                    unindex.remove_if(&*hash, |_, held| held.is(&gone));
                })
                .build(),
            index,
            epoch: AtomicU64::new(0),
            dead_tokens: tombstones(tomb_ttl, &cleared_before),
            dead_accounts: tombstones(tomb_ttl, &cleared_before),
            dead_tenants: tombstones(tomb_ttl, &cleared_before),
            cleared_before,
            store_timeout,
            expiry,
            max_entries: cfg.max_entries,
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
        self.get_at(hash, store, Instant::now()).await
    }

    /// [`Self::get`] for a request that read the clock at `at`: a cached
    /// entry's TTL is judged then, with no reading of the clock here.
    pub async fn get_at(
        &self,
        hash: TokenHash,
        store: &dyn TokenLookup,
        at: Instant,
    ) -> Result<Option<Arc<AuthEntry>>, StoreError> {
        if let Some(hit) = self.indexed(&hash, at).await {
            return Ok(hit.entry);
        }
        // Boxed: moka's load and the store's query are kilobytes of
        // future, which every request's future (and every connection's,
        // copied whole as its task is made) would otherwise carry for the
        // rare miss.
        Box::pin(self.get_or_load(hash, store)).await
    }

    /// [`Self::get`] past the index: through moka, loading on a miss.
    async fn get_or_load(
        &self,
        hash: TokenHash,
        store: &dyn TokenLookup,
    ) -> Result<Option<Arc<AuthEntry>>, StoreError> {
        for _ in 0..MAX_RELOADS {
            let cached = self
                .records
                .try_get_with(hash, self.load_and_index(hash, store))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if !self.is_stale(&hash, &cached) {
                return Ok(cached.entry);
            }
            self.records.invalidate(&hash).await;
        }
        // Invalidations keep landing on this token: answer from the store
        // directly rather than loop.
        Ok(self.load(hash, store).await?.entry)
    }

    /// A current entry from the index: not past its TTL, not stale. Anything
    /// else goes the long way, through moka, which reloads it.
    async fn indexed(&self, hash: &TokenHash, at: Instant) -> Option<Cached> {
        // Cloned and the shard's lock let go within this statement.
        let hit = self.index.get(hash).map(|c| c.clone())?;
        if at.saturating_duration_since(hit.at) >= self.expiry.of(&hit) || self.is_stale(hash, &hit)
        {
            return None;
        }
        let n = INDEX_HITS.with(|n| {
            n.set(n.get().wrapping_add(1));
            n.get()
        });
        if n.is_multiple_of(POLICY_READ_EVERY) {
            // Boxed, as the miss in `get` is: a rare step's future.
            let _ = Box::pin(self.records.get(hash)).await;
        }
        Some(hit)
    }

    /// A load for moka to insert, indexed first: moka inserts it after this
    /// returns, so its eviction (which unindexes it) can only come later.
    async fn load_and_index(
        &self,
        hash: TokenHash,
        store: &dyn TokenLookup,
    ) -> Result<Cached, StoreError> {
        let loaded = self.load(hash, store).await?;
        self.index.insert(hash, loaded.clone());
        if self.index.len() as u64 > self.max_entries + self.max_entries / 64 + INDEX_SLACK {
            self.drop_strays(&hash);
        }
        Ok(loaded)
    }

    /// Unindexes what moka does not hold, but for `loading` (which moka
    /// inserts next). Only a load whose value moka never inserted (its
    /// request cancelled between the two) can leave such a stray, so this
    /// runs only when the index has outgrown moka's capacity: the index
    /// stays bounded whatever happens. Another load in flight meanwhile is
    /// unindexed too, and served by moka until it is loaded again.
    fn drop_strays(&self, loading: &TokenHash) {
        self.index
            .retain(|hash, _| hash == loading || self.records.contains_key(hash));
    }

    async fn load(&self, hash: TokenHash, store: &dyn TokenLookup) -> Result<Cached, StoreError> {
        let loaded_at = self.epoch.load(Ordering::Acquire);
        self.metrics.store_lookups.inc();
        let found = tokio::time::timeout(self.store_timeout, store.lookup(&hash))
            .await
            .map_err(|_| StoreError::Unavailable("lookup timed out".into()))??;
        Ok(Cached {
            loaded_at,
            entry: found.map(|r| Arc::new(AuthEntry::new(r))),
            at: Instant::now(),
        })
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
        self.expiry.ttl
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
        self.index.clear();
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

/// How a request uses its connection's [`ConnectionMemo`]: read it, and
/// remember what it looked up unless no request follows on the connection
/// (a memo never read again is not worth its making).
#[derive(Clone, Copy, Default)]
pub struct MemoUse<'a> {
    memo: Option<&'a ConnectionMemo>,
    keep: bool,
}

impl<'a> MemoUse<'a> {
    /// No memo (a request with no connection of its own to remember by).
    pub fn none() -> Self {
        Self::default()
    }

    /// `memo` read, and written unless the request is its connection's
    /// `last`.
    pub fn of(memo: &'a ConnectionMemo, last: bool) -> Self {
        Self {
            memo: Some(memo),
            keep: !last,
        }
    }

    /// [`ConnectionMemo::get`], when there is a memo.
    pub fn get(self, token: &[u8], cache: &TokenCache, at: Instant) -> Option<Arc<AuthEntry>> {
        self.memo?.get(token, cache, at)
    }

    /// [`ConnectionMemo::put`], when there is a memo to keep.
    pub fn put(self, token: &str, entry: &Arc<AuthEntry>, epoch: u64) {
        if let Some(memo) = self.memo.filter(|_| self.keep) {
            memo.put(token, entry, epoch);
        }
    }
}

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
    /// is still current at `at` (the request's arrival).
    pub fn get(&self, token: &[u8], cache: &TokenCache, at: Instant) -> Option<Arc<AuthEntry>> {
        let slot = self.0.lock().ok()?;
        let m = slot.as_ref()?;
        let current = m.epoch == cache.epoch()
            && at.saturating_duration_since(m.entry.loaded) < cache.expiry.ttl;
        (current && same_secret(m.token.as_bytes(), token)).then(|| Arc::clone(&m.entry))
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

/// Equality that takes as long for a near miss as for a far one (eight
/// bytes at a time).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = wa
        .remainder()
        .iter()
        .zip(wb.remainder())
        .fold(0u64, |acc, (x, y)| acc | u64::from(x ^ y));
    let word = |c: &[u8]| c.try_into().map_or(0, u64::from_ne_bytes);
    wa.zip(wb)
        .fold(tail, |acc, (x, y)| acc | (word(x) ^ word(y)))
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

    #[test]
    fn same_secret_is_equality() {
        let base = b"tgk_rjDDfKGoDUof48AVwM0grSKukjfuVxpR17OQ1uh0mT534Sdc3";
        for len in [0, 1, 7, 8, 9, 16, 52] {
            let a = &base[..len];
            assert!(same_secret(a, a));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 0x20;
                assert!(!same_secret(a, &b), "{len} {i}");
            }
            assert!(!same_secret(a, &base[..len + 1]));
        }
    }

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
            limits: Default::default(),
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

    /// A store that answers at once (see [`GatedStore`] for the gate).
    fn open_store() -> GatedStore {
        GatedStore {
            revoked: AtomicBool::new(false),
            gate: AtomicBool::new(false),
            reached: Notify::new(),
            release: Notify::new(),
        }
    }

    /// Room for 100 entries, found records trusted for `ttl`.
    fn cache_with(ttl: Duration) -> TokenCache {
        TokenCache::new(
            &CacheConfig {
                ttl,
                negative_ttl: Duration::from_secs(5),
                max_entries: 100,
            },
            Duration::from_secs(5),
            Arc::new(Metrics::default()),
        )
    }

    fn cache() -> TokenCache {
        cache_with(Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_fill_racing_a_revocation_never_caches_the_revoked_token_as_valid() {
        let cache = Arc::new(cache());
        let store = Arc::new(GatedStore {
            gate: AtomicBool::new(true),
            ..open_store()
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
        let store = open_store();
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

    #[tokio::test]
    async fn the_index_never_holds_what_moka_has_let_go() {
        let cache = cache(); // room for 100
        let store = open_store();
        for i in 0..1_000 {
            let hash = TokenHash::of(&format!("tok-{i}"));
            cache.get(hash, &store).await.unwrap();
            cache.get(hash, &store).await.unwrap();
        }
        cache.records.run_pending_tasks().await;
        let held = cache.records.entry_count();
        assert!(held <= 100, "moka holds {held}");
        assert_eq!(cache.index.len() as u64, held, "index and moka agree");
        for entry in cache.index.iter() {
            assert!(
                cache.records.contains_key(entry.key()),
                "indexed but evicted"
            );
        }

        cache.invalidate_token(TokenHash::of("tok-999")).await;
        assert!(!cache.index.contains_key(&TokenHash::of("tok-999")));
        cache.invalidate_all();
        assert!(cache.index.is_empty(), "clearing empties the index");
    }

    #[tokio::test]
    async fn strays_are_dropped_once_the_index_outgrows_moka() {
        let cache = cache(); // room for 100
        let store = open_store();
        let held = TokenHash::of("held");
        cache.get(held, &store).await.unwrap();
        // Loads moka never inserted (their requests cancelled in between).
        let stray = cache.index.get(&held).map(|c| c.clone()).unwrap();
        // Past capacity plus the slack moka itself may run over by.
        for i in 0..1_200 {
            cache
                .index
                .insert(TokenHash::of(&format!("stray-{i}")), stray.clone());
        }
        let next = TokenHash::of("next");
        cache.get(next, &store).await.unwrap();
        assert_eq!(cache.index.len(), 2, "only what moka holds is left");
        assert!(cache.index.contains_key(&held));
        assert!(
            cache.index.contains_key(&next),
            "the load that found them stays"
        );
    }

    #[tokio::test]
    async fn an_indexed_entry_past_its_ttl_is_loaded_again() {
        // Long enough that a busy machine cannot age the entry between the
        // first two gets.
        let cache = cache_with(Duration::from_secs(2));
        let store = open_store();
        let hash = TokenHash::of("tok");
        cache.get(hash, &store).await.unwrap();
        cache.get(hash, &store).await.unwrap();
        assert_eq!(cache.metrics.store_lookups.get(), 1, "second get is a hit");
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        cache.get(hash, &store).await.unwrap();
        assert_eq!(
            cache.metrics.store_lookups.get(),
            2,
            "expired: loaded again"
        );
        cache.get(hash, &store).await.unwrap();
        assert_eq!(cache.metrics.store_lookups.get(), 2, "and indexed again");
    }

    #[test]
    fn a_use_is_passed_on_once_per_resolution() {
        let e = AuthEntry::new(record(false));
        assert!(e.use_to_note(1_000, 60), "the first use");
        assert!(!e.use_to_note(1_000, 60), "the same second");
        assert!(!e.use_to_note(1_059, 60), "within the period");
        assert!(e.use_to_note(1_060, 60), "a period on");
        assert!(!e.use_to_note(1_061, 60));
        // Resolution 0 (write every flush): once a second.
        let e = AuthEntry::new(record(false));
        assert!(e.use_to_note(1_000, 0));
        assert!(!e.use_to_note(1_000, 0));
        assert!(e.use_to_note(1_001, 0));
        // A new entry for a token written 40 s before: its window runs
        // from that write, not from its own first use.
        let e = AuthEntry::new(record(false));
        assert!(e.use_to_note(1_040, 60));
        e.noted_from(1_000);
        assert!(!e.use_to_note(1_059, 60));
        assert!(e.use_to_note(1_060, 60), "a period after the write");
    }

    #[test]
    fn header_text_encodes_what_headers_cannot_carry() {
        assert_eq!(header_text("CI Pipeline"), "CI Pipeline");
        assert_eq!(header_text("Zoë"), "Zo%C3%AB");
        assert_eq!(header_text("a\nb"), "a%0Ab");
        assert_eq!(header_text("100%\u{1}"), "100%25%01");
    }
}

/// Validated `[cache]`.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Lifetime of a found record.
    pub ttl: Duration,
    /// Lifetime of an unknown-hash entry.
    pub negative_ttl: Duration,
    /// Capacity in entries.
    pub max_entries: u64,
}
