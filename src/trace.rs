//! Request identity: the W3C trace context and the request id.
//!
//! Both codecs ask [`identify`] once per request, before anything else, and
//! pass what it returns on: the request id to the upstream (and the
//! client, and the access log), the `traceparent` to the upstream, the
//! trace id to the access log.
//!
//! - `traceparent` (W3C Trace Context, level 1): a valid incoming one is
//!   continued (same trace id and flags, a new span id of the gateway's
//!   own as the upstream's parent); a missing, repeated or invalid one is
//!   replaced by a fresh trace, flagged sampled (the gateway is its root,
//!   and an upstream sampling by its parent should record it). The
//!   client's own `traceparent` never reaches the upstream as it came.
//! - `X-Request-Id`: the gateway's own (a UUIDv7), unless
//!   `server.trust_request_id` is on and the client sent exactly one of at
//!   most [`MAX_REQUEST_ID`] visible ASCII characters.

use std::cell::RefCell;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::clock::since_epoch;
use crate::fields::{RequestFields, TRACEPARENT, X_REQUEST_ID};

/// Longest client request id kept when `server.trust_request_id` is on.
pub const MAX_REQUEST_ID: usize = 128;

/// A request's place in a trace: the trace it belongs to and the span id
/// the gateway gives its call to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// The gateway's span: the upstream's parent.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled), continued as they came.
    pub flags: u8,
}

impl Trace {
    /// Continues the trace `incoming` names, or starts a new one when it is
    /// missing or invalid.
    pub fn continue_or_start(incoming: Option<&[u8]>) -> Self {
        let mut random = [0u8; 24];
        fill_random(&mut random);
        Self::from_random(incoming, &random)
    }

    /// As [`Self::continue_or_start`], with the 24 random bytes a new trace
    /// id (16) and span id (8) are made of.
    fn from_random(incoming: Option<&[u8]>, random: &[u8; 24]) -> Self {
        let (trace_id, span_id) = random.split_at(16);
        let span_id = nonzero(span_id);
        match incoming.and_then(parse_traceparent) {
            Some((trace_id, _parent, flags)) => Self {
                trace_id,
                span_id,
                flags,
            },
            None => Self {
                trace_id: nonzero(trace_id),
                span_id,
                flags: 0x01,
            },
        }
    }

    /// The `traceparent` value sent upstream: `00-{trace}-{span}-{flags}`.
    pub fn header_value(&self) -> HeaderValue {
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut buf[3..35]);
        buf[35] = b'-';
        hex_into(&self.span_id, &mut buf[36..52]);
        buf[52] = b'-';
        hex_into(&[self.flags], &mut buf[53..55]);
        // Lower-case hex and dashes: always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
    }

    /// The trace id as 32 lower-case hex digits (the access log's
    /// `trace_id`).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&self.trace_id, &mut out);
        out
    }
}

thread_local! {
    /// Each thread's generator of ids: xoshiro (`SmallRng`), seeded once
    /// from `rand`'s thread-local CSPRNG. Ids need to be unique, not
    /// secret, and a request takes 34 random bytes: drawing them from
    /// ChaCha (`thread_rng`) in three calls cost about 500 instructions a
    /// request, this about 60.
    static IDS: RefCell<SmallRng> = RefCell::new(seeded());
}

fn seeded() -> SmallRng {
    SmallRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| {
        // `thread_rng` does not fail once running; should it, the clock
        // still makes each thread's sequence its own.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SmallRng::seed_from_u64(nanos ^ u64::from(std::process::id()))
    })
}

/// Fills `out` from this thread's id generator.
fn fill_random(out: &mut [u8]) {
    IDS.with(|ids| match ids.try_borrow_mut() {
        Ok(mut ids) => ids.fill_bytes(out),
        // Never re-entered; were it, the CSPRNG serves.
        Err(_) => rand::thread_rng().fill_bytes(out),
    });
}

/// `bytes` as an id, never all zero (W3C: an all-zero id is invalid).
fn nonzero<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut v = [0u8; N];
    v.copy_from_slice(&bytes[..N]);
    if v.iter().all(|b| *b == 0) {
        v[N - 1] = 1;
    }
    v
}

/// A fresh request id (UUIDv7: sortable by time, unique without
/// coordination) for a request that came in `millis` after the Unix
/// epoch, with the 10 random bytes given.
fn new_request_id(millis: u64, random: &[u8; 10]) -> HeaderValue {
    let id = uuid::Builder::from_unix_timestamp_millis(millis, random).into_uuid();
    // Hyphenated, lower case: 8-4-4-4-12 hex digits.
    let b = id.as_bytes();
    let mut text = [b'-'; uuid::fmt::Hyphenated::LENGTH];
    for (from, to) in [(0..4, 0..8), (4..6, 9..13), (6..8, 14..18), (8..10, 19..23)] {
        hex_into(&b[from], &mut text[to]);
    }
    hex_into(&b[10..], &mut text[24..]);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
}

/// `bytes` in lower-case hex, into `out` (twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

fn lower_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Reads a `traceparent` value: `(trace id, parent id, flags)`, or `None`
/// when it is not a valid one. Version `00` must be exactly 55 characters;
/// a later version may carry more after a `-` (read as version `00`, as
/// the specification asks); version `ff`, upper-case hex and all-zero ids
/// are invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = lower_hex::<1>(&v[..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = lower_hex::<16>(&v[3..35])?;
    let parent = lower_hex::<8>(&v[36..52])?;
    let flags = lower_hex::<1>(&v[53..55])?[0];
    if trace_id.iter().all(|b| *b == 0) || parent.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace_id, parent, flags))
}

/// The only value of a field sent once, `None` when it is absent or
/// repeated.
fn single<'a>(fields: &'a (impl RequestFields + ?Sized), name: &'a HeaderName) -> Option<&'a [u8]> {
    let mut values = fields.values(name);
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// The request id and trace of a request (see the module doc): one draw
/// of random bytes makes a new trace's ids and, unless a trusted client's
/// is kept, the request id, timestamped `started` (when its head was read).
pub fn identify(
    fields: &(impl RequestFields + ?Sized),
    trust_request_id: bool,
    started: Instant,
) -> (HeaderValue, Trace) {
    let mut random = [0u8; 34];
    fill_random(&mut random);
    let (for_trace, for_id) = random.split_at(24);
    let for_trace: &[u8; 24] = for_trace.try_into().unwrap_or(&[1; 24]);
    let for_id: &[u8; 10] = for_id.try_into().unwrap_or(&[1; 10]);
    let trace = Trace::from_random(single(fields, &TRACEPARENT), for_trace);
    let kept = trust_request_id
        .then(|| single(fields, &X_REQUEST_ID))
        .flatten()
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(u8::is_ascii_graphic)
        })
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    let ours = || new_request_id(since_epoch(started).as_millis() as u64, for_id);
    (kept.unwrap_or_else(ours), trace)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let t = Trace::continue_or_start(Some(VALID.as_bytes()));
        assert_eq!(&t.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        let v = t.header_value();
        let s = v.to_str().unwrap();
        assert!(s.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{s}");
        assert_ne!(&s[36..52], "00f067aa0ba902b7");
        assert!(parse_traceparent(v.as_bytes()).is_some());
        // Unsampled stays unsampled.
        let off = VALID.replace("-01", "-00");
        assert_eq!(Trace::continue_or_start(Some(off.as_bytes())).flags, 0);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
            let t = Trace::continue_or_start(Some(bad.as_bytes()));
            assert_ne!(&t.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(t.flags, 1);
        }
        // A later version may carry more.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(parse_traceparent(later.as_bytes()).is_some());
    }

    #[test]
    fn fresh_traces_differ_and_parse() {
        let a = Trace::continue_or_start(None);
        let b = Trace::continue_or_start(None);
        assert_ne!(a.trace_id, b.trace_id);
        assert!(parse_traceparent(a.header_value().as_bytes()).is_some());
    }

    #[test]
    fn client_request_ids_are_kept_only_when_trusted_and_well_formed() {
        let map = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let id = |h: &http::HeaderMap, trust| identify(h, trust, Instant::now()).0;
        // The gateway's own: a UUIDv7.
        let ours = |v: HeaderValue| {
            let u = uuid::Uuid::parse_str(v.to_str().unwrap()).unwrap();
            u.get_version_num() == 7
        };
        let theirs = map(&[("x-request-id", "abc-123")]);
        assert_eq!(id(&theirs, true), "abc-123");
        assert!(ours(id(&theirs, false)));
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        for bad in [
            &map(&[("x-request-id", &long)]),
            &map(&[("x-request-id", "a b")]),
            &map(&[("x-request-id", "")]),
            &map(&[("x-request-id", "a"), ("x-request-id", "b")]),
        ] {
            assert!(ours(id(bad, true)));
        }
        let max = "a".repeat(MAX_REQUEST_ID);
        assert_eq!(id(&map(&[("x-request-id", &max)]), true), max.as_str());
    }

    #[test]
    fn request_ids_are_distinct_v7_uuids() {
        let none = http::HeaderMap::new();
        let ids: std::collections::HashSet<_> = (0..1000)
            .map(|_| identify(&none, false, Instant::now()).0)
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(10) {
            let u = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(u.get_version_num(), 7, "{id:?}");
            assert_eq!(id.to_str().unwrap(), u.hyphenated().to_string());
        }
    }

    #[test]
    fn ids_are_never_all_zero() {
        let t = Trace::from_random(None, &[0; 24]);
        assert!(t.trace_id.iter().any(|b| *b != 0) && t.span_id.iter().any(|b| *b != 0));
        assert!(parse_traceparent(t.header_value().as_bytes()).is_some());
    }
}
