//! HTTP vocabulary: the header names and lists every rule reads, how a
//! `Connection` list is read, and the field-access trait both codecs (the
//! fast path's bytes, hyper's `HeaderMap`) give the policy steps. The
//! bottom layer: it knows no other module.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The `token:` credential header.
pub static TOKEN_HEADER: HeaderName = HeaderName::from_static("token");

/// `X-Request-Id` on the gateway's own responses.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The W3C trace context header: the gateway sends its own
/// (`crate::trace`), continuing a valid one the client sent.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Client headers that upstream frameworks trust for the client's address,
/// scheme, path or method, and `traceparent`. Removed from every request:
/// the gateway states these itself (`X-Forwarded-*`, its own
/// `traceparent`), and a client must not be able to steer the upstream
/// past what was authorised.
pub(crate) static SPOOFABLE: [HeaderName; 10] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// The hop-by-hop names, lower case: the one list [`is_hop_by_hop`] and
/// [`is_hop_by_hop_bytes`] read.
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// `HeaderValue::to_str`'s rule for bytes: visible ASCII, spaces and tabs
/// only. Checked without an early exit, which the compiler vectorises.
pub fn is_visible_ascii(v: &[u8]) -> bool {
    v.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(0x20) < 0x5f) | (b == b'\t'))
    })
}

/// Appends an address as `Display` writes it; IPv4 (nearly every client)
/// without the formatting machinery: per connection (`X-Forwarded-For`)
/// and per access line.
pub fn push_ip(buf: &mut Vec<u8>, ip: std::net::IpAddr) {
    use std::io::Write as _;
    match ip {
        std::net::IpAddr::V4(v4) => {
            // At most 15 bytes, written digit by digit and copied once.
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            buf.extend_from_slice(&text[..n]);
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// Whether field name `name` is `lower` (lower-case, as `HeaderName`s
/// and our constants are), ignoring `name`'s case: one branch-free pass
/// after the length check (which rejects most names), where
/// `eq_ignore_ascii_case` folds both sides and stops at each byte.
pub fn is_name(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(true, |ok, (a, b)| ok & (a.to_ascii_lowercase() == *b))
}

/// The names `Connection` field values list, as every strip reads them:
/// a value that is not visible ASCII lists nothing (`HeaderValue::to_str`
/// refuses it); the others are split at commas and trimmed.
pub fn connection_tokens<'a>(
    values: impl Iterator<Item = &'a [u8]> + 'a,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    values
        .filter(|v| is_visible_ascii(v))
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// [`is_hop_by_hop`] for a name as sent, in any letter case.
pub fn is_hop_by_hop_bytes(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| is_name(name, h.as_bytes()))
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// plus the de-facto `Keep-Alive` and `Proxy-Connection`: [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_bytes(name.as_str().as_bytes())
}

/// Whether a comma-separated list field's values (`Connection`, `TE`)
/// name `token`, read as [`connection_tokens`] reads them.
pub fn list_has<'a>(values: impl Iterator<Item = &'a [u8]> + 'a, token: &[u8]) -> bool {
    connection_tokens(values).any(|t| t.eq_ignore_ascii_case(token))
}

/// Hop-by-hop and credential headers: never configurable as gateway headers.
pub fn is_reserved_header(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || name == header::AUTHORIZATION
        || name == TOKEN_HEADER
        || name == header::HOST
}

/// A request's header fields as the policy steps read them: the hyper
/// path's `HeaderMap`, or the fast path's fields as they came
/// ([`crate::fast::wire::RequestHead`]). Names compare in any letter case
/// (a `HeaderMap`'s are lower case already).
pub trait RequestFields {
    /// One field as the codec holds it: hyper's name and value (so a
    /// rewrite keeps them without copying), or the fast path's bytes.
    type Field<'a>: Copy
    where
        Self: 'a;

    /// Every field as held, in order.
    fn held(&self) -> impl Iterator<Item = Self::Field<'_>>;

    /// A held field's name and value.
    fn bytes<'a>(field: Self::Field<'a>) -> (&'a [u8], &'a [u8])
    where
        Self: 'a;

    /// Every field, name and value, in order.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.held().map(Self::bytes)
    }

    /// The values of every field called `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl RequestFields for HeaderMap {
    type Field<'a> = (&'a HeaderName, &'a HeaderValue);

    fn held(&self) -> impl Iterator<Item = Self::Field<'_>> {
        self.iter()
    }

    fn bytes<'a>((n, v): Self::Field<'a>) -> (&'a [u8], &'a [u8]) {
        (n.as_str().as_bytes(), v.as_bytes())
    }

    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut buf = b"for=".to_vec();
            push_ip(&mut buf, ip);
            assert_eq!(buf, format!("for={ip}").into_bytes());
        }
    }

    #[test]
    fn names_match_in_any_case_and_only_themselves() {
        assert!(is_name(b"Content-Length", b"content-length"));
        assert!(is_name(b"HOST", b"host"));
        assert!(is_name(b"", b""));
        assert!(!is_name(b"hosts", b"host"));
        assert!(!is_name(b"hist", b"host"));
        // Only letters fold: `^` is not `~`, `@` is not a back-tick.
        assert!(!is_name(b"x^y", b"x~y"));
        assert!(!is_name(b"x@y", b"x`y"));
    }

    /// A header map of `pairs`, in order.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_names_in_any_case_and_nothing_else() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
            assert!(
                is_hop_by_hop_bytes(n.to_ascii_uppercase().as_bytes()),
                "{n}"
            );
        }
        for n in [
            "host",
            "content-length",
            "x-request-id",
            "connections",
            "t",
            "tee",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
            assert!(!is_hop_by_hop_bytes(n.as_bytes()), "{n}");
        }
    }
}
