//! The IETF rate-limit fields (draft-ietf-httpapi-ratelimit-headers):
//! `RateLimit-Policy: "per-token";q=100;w=60` and
//! `RateLimit: "per-token";r=42;t=17`, one list member per policy, the one
//! closest to refusing first. Both codecs, the forward-auth answers and
//! the 429 denial write what [`header_values`] makes; nothing else spells
//! these fields.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use super::policy::PolicyName;

/// `RateLimit-Policy`: each policy's quota (`q`) and window (`w`).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: each policy's remaining requests (`r`) and seconds until
/// they grow (`t`).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Where a request leaves one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The policy's name.
    pub name: PolicyName,
    /// Requests per window (`q`).
    pub quota: u32,
    /// The window in seconds (`w`).
    pub window: u32,
    /// Requests still admitted (`r`).
    pub remaining: u32,
    /// Seconds until `remaining` grows (`t`).
    pub reset: u32,
}

/// The two fields for the policies a request met, made once per request
/// and written by whichever codec answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitFields {
    /// `RateLimit-Policy`.
    pub policy: HeaderValue,
    /// `RateLimit`.
    pub state: HeaderValue,
}

impl LimitFields {
    /// The fields as (name, value) pairs, in the order they are written.
    pub fn pairs(&self) -> [(&'static HeaderName, &HeaderValue); 2] {
        [(&RATELIMIT_POLICY, &self.policy), (&RATELIMIT, &self.state)]
    }
}

/// The two fields for the policies a request met, closest to refusing
/// (fewest remaining) first. `None` for no policy.
pub fn header_values(standings: &mut [Standing]) -> Option<LimitFields> {
    if standings.is_empty() {
        return None;
    }
    standings.sort_by_key(|s| (s.remaining, s.reset));
    let mut policy = Vec::with_capacity(32 * standings.len());
    let mut state = Vec::with_capacity(32 * standings.len());
    for (i, s) in standings.iter().enumerate() {
        member(&mut policy, i, s, [b";q=", b";w="], [s.quota, s.window]);
        member(&mut state, i, s, [b";r=", b";t="], [s.remaining, s.reset]);
    }
    // Names hold only letters, digits, `-`, `_` and `.`: always valid.
    Some(LimitFields {
        policy: HeaderValue::from_maybe_shared(Bytes::from(policy)).ok()?,
        state: HeaderValue::from_maybe_shared(Bytes::from(state)).ok()?,
    })
}

/// One list member, `"name";k1=n1;k2=n2`, after a separator unless first.
/// Written piece by piece (`itoa` for the numbers): this runs for every
/// request on a limited route, and the formatting machinery cost more
/// than the counting.
fn member(out: &mut Vec<u8>, i: usize, s: &Standing, keys: [&[u8]; 2], nums: [u32; 2]) {
    if i > 0 {
        out.extend_from_slice(b", ");
    }
    out.push(b'"');
    out.extend_from_slice(s.name.as_str().as_bytes());
    out.push(b'"');
    for (key, n) in keys.into_iter().zip(nums) {
        out.extend_from_slice(key);
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s(name: &str, quota: u32, window: u32, remaining: u32, reset: u32) -> Standing {
        Standing {
            name: PolicyName::parse(name).unwrap(),
            quota,
            window,
            remaining,
            reset,
        }
    }

    #[test]
    fn closest_to_refusing_first() {
        let f = header_values(&mut [s("per-token", 100, 60, 42, 17), s("per-ip", 10, 1, 3, 1)])
            .unwrap();
        let (p, r) = (f.policy, f.state);
        assert_eq!(p, "\"per-ip\";q=10;w=1, \"per-token\";q=100;w=60");
        assert_eq!(r, "\"per-ip\";r=3;t=1, \"per-token\";r=42;t=17");
        assert!(header_values(&mut []).is_none());
    }
}
