//! What a limit is: `[rate_limits]` as written and as validated, policy
//! names, and the limit and quota a token may carry.

use serde::{Deserialize, Serialize};

/// The most requests a policy, a token's limit or a quota may allow. Far
/// above any real limit; it keeps counts in `u32` and refuses typos such
/// as a window length pasted into `requests`.
pub const MAX_REQUESTS: u64 = 1_000_000_000;

/// The longest window, in seconds (31 days). Longer spans are what a
/// quota (`day` or `month`) is for; a window is kept in memory while it
/// holds counts.
pub const MAX_WINDOW_SECONDS: u64 = 31 * 86_400;

/// The longest policy name: it is written into every limited response's
/// `RateLimit` and `RateLimit-Policy` fields.
pub const MAX_NAME_LEN: usize = 32;

/// The name the fields give a token's own `rate_limit`.
pub const TOKEN_POLICY: &str = "token";
/// The name the fields give a token's `quota`.
pub const QUOTA_POLICY: &str = "quota";

/// A policy name, kept inline so that a refusal carrying it stays `Copy`.
/// Letters, digits, `-`, `_` and `.`: nothing that needs escaping inside a
/// structured-field string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PolicyName {
    len: u8,
    bytes: [u8; MAX_NAME_LEN],
}

impl PolicyName {
    /// A valid name, or why not.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(format!("must be 1 to {MAX_NAME_LEN} characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "{s:?} may hold only letters, digits, '-', '_' and '.'"
            ));
        }
        let mut bytes = [0u8; MAX_NAME_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Self {
            len: s.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Only ASCII was ever copied in.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    /// `token` (a token's own limit).
    pub fn token() -> Self {
        Self::parse(TOKEN_POLICY).unwrap_or(Self {
            len: 0,
            bytes: [0; MAX_NAME_LEN],
        })
    }

    /// `quota` (a token's quota).
    pub fn quota() -> Self {
        Self::parse(QUOTA_POLICY).unwrap_or(Self {
            len: 0,
            bytes: [0; MAX_NAME_LEN],
        })
    }
}

/// The name's own bytes, not the whole array: every request hashes the
/// policy's key, and the unused tail is always zero (so names equal as
/// arrays hash equal).
impl std::hash::Hash for PolicyName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.bytes[..usize::from(self.len)]);
    }
}

impl std::fmt::Debug for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum By {
    /// The token (its id).
    Token,
    /// The token's account.
    Account,
    /// The token's tenant.
    Tenant,
    /// The client's IP address (the connection's peer).
    ClientIp,
}

impl By {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token" => By::Token,
            "account" => By::Account,
            "tenant" => By::Tenant,
            "client_ip" => By::ClientIp,
            _ => return None,
        })
    }
}

/// `[rate_limits]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRateLimits {
    /// `"local"` (default): counts in this process only.
    pub store: String,
    /// Seconds between writes of quota counts to the token store
    /// (default 10).
    pub quota_flush_seconds: u64,
    /// `[[rate_limits.policies]]`.
    pub policies: Vec<FilePolicy>,
}

impl Default for FileRateLimits {
    fn default() -> Self {
        Self {
            store: "local".into(),
            quota_flush_seconds: 10,
            policies: Vec::new(),
        }
    }
}

/// `[[rate_limits.policies]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    /// Referenced by `routes[].rate_limits`.
    pub name: String,
    /// Requests admitted per window.
    pub requests: u64,
    /// The window's length in seconds.
    pub window_seconds: u64,
    /// `token`, `account`, `tenant` or `client_ip`.
    pub by: String,
}

/// A validated policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Its name.
    pub name: PolicyName,
    /// Requests admitted in any window of `window_seconds`.
    pub requests: u32,
    /// The window, in seconds.
    pub window_seconds: u32,
    /// What it counts by.
    pub by: By,
}

/// Where counts are kept.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CountStore {
    /// In this process.
    #[default]
    Local,
    /// Shared through Redis.
    Redis(super::shared::RedisUrl),
}

/// Validated `[rate_limits]`.
#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    /// Where counts are kept.
    pub store: CountStore,
    /// Between writes of quota counts to the token store.
    pub quota_flush: std::time::Duration,
    /// The policies, in file order.
    pub policies: Vec<Policy>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            store: CountStore::Local,
            quota_flush: std::time::Duration::from_secs(10),
            policies: Vec::new(),
        }
    }
}

/// A validation error: the key under `rate_limits` and what is wrong.
pub type Invalid = (String, String);

impl RateLimitConfig {
    /// Validates `[rate_limits]`; errors name the key
    /// (`rate_limits.policies[1].window_seconds`).
    pub fn validate(f: &FileRateLimits) -> Result<Self, Invalid> {
        let store = match f.store.as_str() {
            "local" => CountStore::Local,
            s if s.starts_with("rediss://") => {
                return Err((
                    "rate_limits.store".into(),
                    "rediss:// (TLS) is not supported by this build; use redis://".into(),
                ))
            }
            s if s.starts_with("redis://") => CountStore::Redis(
                super::shared::RedisUrl::parse(s).map_err(|m| ("rate_limits.store".into(), m))?,
            ),
            s => {
                return Err((
                    "rate_limits.store".into(),
                    format!("{s:?} is neither \"local\" nor a redis:// URL"),
                ))
            }
        };
        if f.quota_flush_seconds == 0 || f.quota_flush_seconds > 3600 {
            return Err((
                "rate_limits.quota_flush_seconds".into(),
                "must be 1 to 3600".into(),
            ));
        }
        let mut policies: Vec<Policy> = Vec::with_capacity(f.policies.len());
        for (i, p) in f.policies.iter().enumerate() {
            let key = |k: &str| format!("rate_limits.policies[{i}].{k}");
            let name = PolicyName::parse(&p.name).map_err(|m| (key("name"), m))?;
            if matches!(p.name.as_str(), TOKEN_POLICY | QUOTA_POLICY) {
                return Err((
                    key("name"),
                    format!("{:?} is reserved for a token's own limit and quota", p.name),
                ));
            }
            if policies.iter().any(|q| q.name == name) {
                return Err((key("name"), format!("{:?} is defined twice", p.name)));
            }
            let (requests, window_seconds) =
                limit_values(p.requests, p.window_seconds).map_err(|(k, m)| (key(k), m))?;
            let by = By::parse(&p.by).ok_or_else(|| {
                (
                    key("by"),
                    format!(
                        "{:?} is not one of \"token\", \"account\", \"tenant\", \"client_ip\"",
                        p.by
                    ),
                )
            })?;
            policies.push(Policy {
                name,
                requests,
                window_seconds,
                by,
            });
        }
        Ok(Self {
            store,
            quota_flush: std::time::Duration::from_secs(f.quota_flush_seconds),
            policies,
        })
    }

    /// The named policies, for `routes[].rate_limits` (a route carries
    /// its policies, so a reload swaps them with it); the error is the
    /// message for the key.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Policy>, String> {
        let mut found: Vec<Policy> = Vec::with_capacity(names.len());
        for n in names {
            let p = self
                .policies
                .iter()
                .find(|p| p.name.as_str() == n)
                .ok_or_else(|| format!("no policy named {n:?} in [[rate_limits.policies]]"))?;
            if found.iter().any(|f| f.name == p.name) {
                return Err(format!("{n:?} is named twice"));
            }
            found.push(*p);
        }
        Ok(found)
    }
}

/// `requests` and `window_seconds` checked against their bounds; the error
/// names which of the two.
fn limit_values(requests: u64, window_seconds: u64) -> Result<(u32, u32), (&'static str, String)> {
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(("requests", format!("must be 1 to {MAX_REQUESTS}")));
    }
    if window_seconds == 0 || window_seconds > MAX_WINDOW_SECONDS {
        return Err((
            "window_seconds",
            format!("must be 1 to {MAX_WINDOW_SECONDS} (31 days)"),
        ));
    }
    Ok((requests as u32, window_seconds as u32))
}

/// A token's own rate limit: `{"requests": N, "window_seconds": S}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TokenRateLimit {
    /// Requests admitted in any window.
    pub requests: u32,
    /// The window, in seconds.
    pub window_seconds: u32,
}

impl TokenRateLimit {
    /// A limit within the bounds, or the field at fault and why.
    pub fn new(requests: u64, window_seconds: u64) -> Result<Self, (&'static str, String)> {
        let (requests, window_seconds) = limit_values(requests, window_seconds)?;
        Ok(Self {
            requests,
            window_seconds,
        })
    }
}

/// A quota's calendar period, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// From 00:00 UTC to the next.
    Day,
    /// From the first of the month, 00:00 UTC.
    Month,
}

impl Period {
    /// From its name (`day`, `month`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Period::Day),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The start of the period holding `now` (Unix seconds, UTC).
    pub fn start(self, now: i64) -> i64 {
        let day = now - now.rem_euclid(86_400);
        match self {
            Period::Day => day,
            Period::Month => time::OffsetDateTime::from_unix_timestamp(day)
                .ok()
                .and_then(|t| t.replace_day(1).ok())
                .map_or(day, |t| t.unix_timestamp()),
        }
    }

    /// The start of the next period after the one holding `now`.
    pub fn end(self, now: i64) -> i64 {
        let start = self.start(now);
        match self {
            Period::Day => start + 86_400,
            // The 1st plus 31 days is always in the next month; its start
            // is the 1st of that month.
            Period::Month => self.start(start + 31 * 86_400),
        }
    }
}

/// A token's quota: `{"requests": N, "period": "day" | "month"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// Requests admitted per period.
    pub requests: u32,
    /// The period.
    pub period: Period,
}

impl Quota {
    /// A quota within the bounds, or why not.
    pub fn new(requests: u64, period: Period) -> Result<Self, String> {
        if requests == 0 || requests > MAX_REQUESTS {
            return Err(format!("must be 1 to {MAX_REQUESTS}"));
        }
        Ok(Self {
            requests: requests as u32,
            period,
        })
    }
}

/// What a token carries for the limiter: its own limit, its quota, and the
/// quota count its record was read with (`used` in the period starting at
/// `period_start`), which seeds this process's count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// `rate_limit`, if set.
    pub rate_limit: Option<TokenRateLimit>,
    /// `quota`, if set.
    pub quota: Option<Quota>,
    /// The stored quota count.
    pub quota_used: u64,
    /// The period the stored count belongs to.
    pub quota_period_start: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `[rate_limits]` as read from a file, with these policies
    /// `(name, requests, window_seconds, by)`.
    pub(crate) fn file(policies: &[(&str, u64, u64, &str)]) -> FileRateLimits {
        FileRateLimits {
            policies: policies
                .iter()
                .map(|(n, r, w, b)| FilePolicy {
                    name: n.to_string(),
                    requests: *r,
                    window_seconds: *w,
                    by: b.to_string(),
                })
                .collect(),
            ..FileRateLimits::default()
        }
    }

    #[test]
    fn policies_validate_with_keys_named() {
        let ok = RateLimitConfig::validate(&file(&[("a", 10, 60, "token")])).unwrap();
        assert_eq!(ok.policies[0].requests, 10);
        assert_eq!(ok.resolve(&["a".into()]).unwrap(), vec![ok.policies[0]]);
        assert!(ok
            .resolve(&["b".into()])
            .unwrap_err()
            .contains("no policy named"));
        for (f, key) in [
            (
                file(&[("a", 0, 60, "token")]),
                "rate_limits.policies[0].requests",
            ),
            (
                file(&[("a", 1 << 40, 60, "token")]),
                "rate_limits.policies[0].requests",
            ),
            (
                file(&[("a", 1, 0, "token")]),
                "rate_limits.policies[0].window_seconds",
            ),
            (
                file(&[("a", 1, 1 << 30, "token")]),
                "rate_limits.policies[0].window_seconds",
            ),
            (file(&[("a", 1, 1, "ip")]), "rate_limits.policies[0].by"),
            (
                file(&[("a b", 1, 1, "token")]),
                "rate_limits.policies[0].name",
            ),
            (
                file(&[("token", 1, 1, "token")]),
                "rate_limits.policies[0].name",
            ),
            (
                file(&[("a", 1, 1, "token"), ("a", 1, 1, "tenant")]),
                "rate_limits.policies[1].name",
            ),
        ] {
            assert_eq!(RateLimitConfig::validate(&f).unwrap_err().0, key);
        }
        let mut f = file(&[]);
        f.store = "memcached://x".into();
        assert_eq!(
            RateLimitConfig::validate(&f).unwrap_err().0,
            "rate_limits.store"
        );
        let mut f = file(&[]);
        f.quota_flush_seconds = 0;
        assert_eq!(
            RateLimitConfig::validate(&f).unwrap_err().0,
            "rate_limits.quota_flush_seconds"
        );
    }

    #[test]
    fn periods_are_utc_calendar() {
        // 2026-03-15T13:00:00Z
        let t = 1_773_579_600;
        assert_eq!(
            crate::clock::rfc3339(Period::Day.start(t)),
            "2026-03-15T00:00:00Z"
        );
        assert_eq!(
            crate::clock::rfc3339(Period::Day.end(t)),
            "2026-03-16T00:00:00Z"
        );
        assert_eq!(
            crate::clock::rfc3339(Period::Month.start(t)),
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(
            crate::clock::rfc3339(Period::Month.end(t)),
            "2026-04-01T00:00:00Z"
        );
        // December rolls into the next year.
        let dec = 1_796_083_200; // 2026-12-01T00:00:00Z
        assert_eq!(
            crate::clock::rfc3339(Period::Month.start(dec)),
            "2026-12-01T00:00:00Z"
        );
        assert_eq!(
            crate::clock::rfc3339(Period::Month.end(dec + 86_400 * 30)),
            "2027-01-01T00:00:00Z"
        );
    }

    #[test]
    fn names() {
        assert_eq!(
            PolicyName::parse("per-token").unwrap().as_str(),
            "per-token"
        );
        assert!(PolicyName::parse(&"a".repeat(33)).is_err());
        assert!(PolicyName::parse("a\"b").is_err());
        assert_eq!(PolicyName::token().as_str(), "token");
    }
}
