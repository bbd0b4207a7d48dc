//! Credential extraction (`auth::extract_credential`) on request fields,
//! as the fast path reads them (a `RequestHead` from `wire::parse_request`)
//! and as the hyper path does (a `HeaderMap` of the same fields): no panic,
//! the two agree, and a credential found is a visible-ASCII string with no
//! spaces around it.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokengate::auth::extract_credential;
use tokengate::fast::wire::{parse_request, Parsed};
use tokengate::fields::RequestFields;

/// The names extraction looks at, in assorted cases, and a few others.
const NAMES: &[&str] = &[
    "Authorization",
    "authorization",
    "AUTHORIZATION",
    "token",
    "Token",
    "TOKEN",
    "Host",
    "X-Token",
];

#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

fuzz_target!(|fields: Vec<(Name, Vec<u8>)>| {
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for (name, value) in &fields {
        match name {
            Name::Known(i) => {
                raw.extend_from_slice(NAMES[usize::from(*i) % NAMES.len()].as_bytes())
            }
            Name::Raw(n) => raw.extend_from_slice(n),
        }
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let Parsed::Complete(head) = parse_request(&Bytes::from(raw)) else {
        return;
    };
    let mut map = http::HeaderMap::new();
    for (n, v) in head.fields() {
        map.append(
            http::HeaderName::from_bytes(n).expect("a field the fast path took"),
            http::HeaderValue::from_bytes(v).expect("a field the fast path took"),
        );
    }
    let fast = extract_credential(&head);
    assert_eq!(fast, extract_credential(&map));
    if let Ok(Some(token)) = fast {
        assert!(!token.is_empty());
        // Visible ASCII as `HeaderValue::to_str` has it (a tab included:
        // the token format check refuses that later).
        assert!(
            token
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) || b == b'\t'),
            "{token:?}"
        );
        assert!(
            !token.starts_with(' ') && !token.ends_with(' '),
            "{token:?}"
        );
    }
});
