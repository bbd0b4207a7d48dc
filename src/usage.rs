//! Last-used times, batched in memory and flushed periodically.
//!
//! The request path only records "token X was used at T" in a dashmap (no
//! I/O, no lock held across an await); a background task writes the batch
//! in one store transaction every `store.last_used_flush_seconds`. A failed
//! flush puts its batch back, so a store blip loses nothing; shutdown does a
//! final flush.
//!
//! A token written less than `store.last_used_resolution_seconds` ago is not
//! noted again: a token in constant use costs one row write per resolution
//! period, not one per flush (100k busy tokens written every 10 s took a
//! sixth of a core on SQLite). The stored time is then at most the
//! resolution plus the flush period behind the true last use.
//!
//! Each cache entry holds back a token's uses until a period after the
//! time [`LastUsed::record`] answers (its last write, or the use it noted),
//! so a token in constant use reaches these maps once a period, not once
//! a second ([`crate::cache::AuthEntry::use_to_note`]).

use std::sync::Arc;

use dashmap::DashMap;

use crate::cache::AuthEntry;
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::store::TokenStore;

/// Pending last-used times by token id.
#[derive(Debug, Default)]
pub struct LastUsed {
    pending: DashMap<Arc<str>, i64>,
    /// When each recently written token's time was written (as the time
    /// written), kept for one resolution period.
    written: DashMap<Arc<str>, i64>,
    resolution: i64,
}

impl LastUsed {
    /// Batches that write a token at most once per `resolution`.
    pub fn new(resolution: std::time::Duration) -> Self {
        Self {
            resolution: i64::try_from(resolution.as_secs()).unwrap_or(i64::MAX),
            ..Self::default()
        }
    }

    /// Notes a use of a cached token: passed on to [`LastUsed::record`] only
    /// when the entry's window allows it, and the window then set from
    /// what `record` answers.
    pub fn note_use(&self, entry: &AuthEntry, now: i64) {
        if entry.use_to_note(now, self.resolution) {
            entry.noted_from(self.record(&entry.last_used_key, now));
        }
    }

    /// Notes a use. Only ever moves a token's time forward. Answers the
    /// time from which the token's uses within one resolution period need
    /// not be noted: when it was last written, if that is within the
    /// period, else `now`.
    pub fn record(&self, token_id: &Arc<str>, now: i64) -> i64 {
        // Written recently enough: nothing to note until the resolution
        // period has passed.
        if self.resolution > 0 {
            let written = self.written.get(token_id).map(|t| *t);
            if let Some(t) = written.filter(|t| now.saturating_sub(*t) < self.resolution) {
                return t;
            }
        }
        // Already noted for this second; skip the write lock.
        if self.pending.get(token_id).is_some_and(|t| *t >= now) {
            return now;
        }
        self.pending
            .entry(Arc::clone(token_id))
            .and_modify(|t| *t = (*t).max(now))
            .or_insert(now);
        now
    }

    /// Tokens waiting to be flushed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes everything pending; on failure the batch is merged back.
    /// `now` ages out the record of what was written.
    pub async fn flush(&self, store: &dyn TokenStore, metrics: &Metrics, now: i64) -> bool {
        if self.resolution > 0 {
            self.written
                .retain(|_, t| now.saturating_sub(*t) < self.resolution);
        }
        let keys: Vec<Arc<str>> = self.pending.iter().map(|e| Arc::clone(e.key())).collect();
        let mut batch = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((k, t)) = self.pending.remove(&k) {
                batch.push((k, t));
            }
        }
        if batch.is_empty() {
            return true;
        }
        let rows: Vec<(String, i64)> = batch.iter().map(|(k, t)| (k.to_string(), *t)).collect();
        match store.touch_last_used(&rows).await {
            Ok(()) => {
                metrics.last_used_written.add(rows.len() as u64);
                if self.resolution > 0 {
                    for (k, t) in batch {
                        self.written.insert(k, t);
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, tokens = rows.len(), "last-used flush failed; will retry");
                metrics.last_used_flush_failures.inc();
                for (k, t) in batch {
                    self.pending
                        .entry(k)
                        .and_modify(|v| *v = (*v).max(t))
                        .or_insert(t);
                }
                false
            }
        }
    }
}

/// Writes the quota counts made here since the last batch, in one store
/// transaction (every instance adds its own), and takes back each token's
/// stored count, so that an instance sees the others' counts once per
/// flush. A failed write keeps its counts for the next one (the store
/// being down loses nothing but the shutdown's last batch).
pub async fn flush_quotas(limiter: &Limiter, store: &dyn TokenStore) -> bool {
    let batch = limiter.take_quota_deltas();
    if batch.is_empty() {
        return true;
    }
    let rows: Vec<(String, i64, i64)> = batch
        .iter()
        .map(|d| {
            let n = i64::try_from(d.delta).unwrap_or(i64::MAX);
            (d.token_id.to_string(), d.period_start, n)
        })
        .collect();
    match store.add_quota_counts(&rows).await {
        Ok(stored) => {
            for (id, start, used) in stored {
                limiter.settle_quota(&id, start, u64::try_from(used).unwrap_or(0));
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, tokens = rows.len(), "quota count flush failed; will retry");
            limiter.restore_quota_deltas(batch);
            false
        }
    }
}
