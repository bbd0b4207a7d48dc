//! Counts shared through Redis (`rate_limits.store = "redis://…"`).
//!
//! Redis holds, per policy and key, the window's buckets (a hash: bucket
//! index -> requests reserved in it, expiring with the window). An
//! instance reserves a *slice* of the limit ahead of use ([`GRANT`], one
//! atomic script: drop buckets that left the window, sum the rest, grant
//! at most what is left), then admits locally from that allowance; a
//! request waits on Redis only when the allowance and what may be admitted
//! ahead of a grant are both used up while the next slice is on its way
//! (at most once per slice). Uses made without an allowance (ahead of a
//! grant, or while Redis is unreachable) are *forced* into the count with
//! the next grant, so Redis learns every use. Allowance left when its bucket ends is given
//! back ([`GIVE_BACK`]). The bound this gives is stated in README.md
//! ("Several instances: counts shared through Redis").
//!
//! Redis down or slow (no answer within [`RESPONSE_TIMEOUT`]): the
//! instance limits on its own count, counts it, logs once and counts the
//! error; a probe every [`REJOIN_EVERY`] brings it back. A Redis that
//! comes back empty (restarted) is told apart by its *epoch* (a random
//! value each instance offers, set only if none is there): a new epoch
//! means every count was lost, and each instance forces its own uses
//! within the window into the new one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::Metrics;

/// The longest a Redis call may take before the instance limits alone.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
/// How often an instance that lost Redis tries it again.
pub const REJOIN_EVERY: Duration = Duration::from_millis(500);
/// Where the keys live.
const PREFIX: &str = "tokengate:rl:";
/// The epoch's key.
const EPOCH_KEY: &str = "tokengate:rl:epoch";

/// Grants up to `want` requests in the bucket `ARGV[1]` of a window whose
/// oldest counted bucket is `ARGV[2]`, against `limit`, after counting
/// `force` uses made without a grant. Answers `{granted, used after,
/// epoch, earliest bucket still counted (-1: none)}`.
const GRANT: &str = r"
redis.call('SET', KEYS[2], ARGV[7], 'NX')
local epoch = redis.call('GET', KEYS[2])
local oldest = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local force = tonumber(ARGV[5])
local used = 0
local earliest = -1
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local b = tonumber(all[i])
  local c = tonumber(all[i + 1])
  if b < oldest then
    redis.call('HDEL', KEYS[1], all[i])
  elseif c > 0 then
    used = used + c
    if earliest < 0 or b < earliest then earliest = b end
  end
end
used = used + force
local granted = math.min(want, math.max(0, limit - used))
if force + granted > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], force + granted)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
  if earliest < 0 then earliest = tonumber(ARGV[1]) end
end
return {granted, used + granted, epoch, earliest}
";

/// Gives back up to `ARGV[2]` unused requests of bucket `ARGV[1]`.
const GIVE_BACK: &str = r"
local c = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local n = math.min(c, tonumber(ARGV[2]))
if n > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], -n) end
return n
";

/// A Redis URL; `Debug` hides all but the scheme (it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks a `redis://` URL (no connection is made); the error says why.
    pub fn parse(url: &str) -> Result<Self, String> {
        redis::Client::open(url).map_err(|e| format!("not a usable Redis URL: {e}"))?;
        Ok(Self(url.to_owned()))
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisUrl(redis://…)")
    }
}

/// What a grant asks for.
#[derive(Clone, Debug)]
pub(crate) struct Ask {
    /// The Redis key (policy, window and key).
    pub key: String,
    /// The bucket the grant is for.
    pub bucket: i64,
    /// The oldest bucket in the window.
    pub oldest: i64,
    /// The limit.
    pub limit: u32,
    /// Requests wanted ahead of use.
    pub want: u32,
    /// Uses made without a grant, to count.
    pub force: u32,
    /// Seconds the hash must outlive its newest bucket.
    pub ttl: u32,
}

/// What a grant answers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Granted {
    /// Requests granted (at most the ask's `want`).
    pub granted: u32,
    /// Requests counted in the window, every instance's, after the grant.
    pub used: u64,
    /// The earliest bucket still counted.
    pub earliest: i64,
    /// Whether Redis had lost its counts since this instance last asked.
    pub reset: bool,
}

/// The connection and the instance's view of Redis's health.
pub(crate) struct Shared {
    conn: ConnectionManager,
    grant: redis::Script,
    give_back: redis::Script,
    healthy: AtomicBool,
    rejoining: AtomicBool,
    /// The epoch last seen; a lock held for a compare and a store only.
    epoch: Mutex<Option<String>>,
    candidate: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("healthy", &self.healthy())
            .finish()
    }
}

impl Shared {
    /// A lazily connected client (nothing is sent until the first grant,
    /// so a Redis that is down at start-up stops nothing). Must be called
    /// within a tokio runtime.
    pub fn new(url: &RedisUrl, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = redis::Client::open(url.0.as_str()).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(Self {
            conn,
            grant: redis::Script::new(GRANT),
            give_back: redis::Script::new(GIVE_BACK),
            healthy: AtomicBool::new(true),
            rejoining: AtomicBool::new(false),
            epoch: Mutex::new(None),
            candidate: format!("{:016x}", rand::random::<u64>()),
            metrics,
        })
    }

    /// Whether counts are being shared (else the instance limits alone).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The Redis key of a window.
    pub fn key(policy: &str, window: u32, key: &str) -> String {
        format!("{PREFIX}{policy}:{window}:{key}")
    }

    /// Asks for a grant.
    pub async fn ask(self: &Arc<Self>, a: &Ask) -> Result<Granted, ()> {
        let mut conn = self.conn.clone();
        let mut call = self.grant.prepare_invoke();
        call.key(&a.key)
            .key(EPOCH_KEY)
            .arg(a.bucket)
            .arg(a.oldest)
            .arg(a.limit)
            .arg(a.want)
            .arg(a.force)
            .arg(a.ttl)
            .arg(&self.candidate);
        let answer = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            call.invoke_async::<(i64, i64, String, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((granted, used, epoch, earliest))) => {
                let reset = self.note_epoch(epoch);
                Ok(Granted {
                    granted: u32::try_from(granted.max(0)).unwrap_or(0),
                    used: u64::try_from(used.max(0)).unwrap_or(0),
                    earliest,
                    reset,
                })
            }
            Ok(Err(e)) => {
                self.down(&e.to_string());
                Err(())
            }
            Err(_) => {
                self.down("no answer in time");
                Err(())
            }
        }
    }

    /// Gives back unused requests of a bucket; a failure only leaves them
    /// counted until the bucket leaves the window.
    pub async fn give_back(self: &Arc<Self>, key: String, bucket: i64, n: u32) {
        let mut conn = self.conn.clone();
        let mut call = self.give_back.prepare_invoke();
        call.key(&key).arg(bucket).arg(n);
        let answer =
            tokio::time::timeout(RESPONSE_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.down(&e.to_string()),
            Err(_) => self.down("no answer in time"),
        }
    }

    /// Whether `epoch` is a new one (Redis lost its counts); remembers it.
    fn note_epoch(&self, epoch: String) -> bool {
        let mut known = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        let reset = known.as_ref().is_some_and(|k| *k != epoch);
        if reset {
            tracing::warn!("the rate-limit store lost its counts (restarted?); each instance adds back its own");
        }
        *known = Some(epoch);
        reset
    }

    /// Redis failed: limit alone, say so once, probe until it answers.
    fn down(self: &Arc<Self>, why: &str) {
        self.metrics.rate_limit_store_errors.inc();
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %why, "rate-limit store (Redis) unreachable; each instance limits on its own count until it answers");
        }
        if self.rejoining.swap(true, Ordering::Relaxed) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REJOIN_EVERY).await;
                let mut conn = me.conn.clone();
                let ping = tokio::time::timeout(
                    RESPONSE_TIMEOUT,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await;
                if matches!(ping, Ok(Ok(_))) {
                    break;
                }
                me.metrics.rate_limit_store_errors.inc();
            }
            me.rejoining.store(false, Ordering::Relaxed);
            me.healthy.store(true, Ordering::Relaxed);
            tracing::info!("rate-limit store (Redis) answers again; counts are shared again");
        });
    }
}
