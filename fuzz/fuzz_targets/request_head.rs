//! Request heads from clients (`wire::parse_request`): no panic on any
//! bytes, and for a head the fast path takes, what its callers rely on.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokengate::fast::wire::{parse_request, Parsed, MAX_BUFFERED_BODY};
use tokengate::fields::RequestFields;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let Parsed::Complete(head) = parse_request(&buf) else {
        return;
    };
    assert!(head.head_len <= data.len());
    assert!(head.body_len <= MAX_BUFFERED_BODY);
    assert!(head.has_length || head.body_len == 0);
    assert!(head.method != http::Method::CONNECT);
    assert!(head.path().starts_with('/'), "{head:?}");
    // Every field is one the hyper path would take too.
    for (name, value) in head.fields() {
        assert!(http::HeaderName::from_bytes(name).is_ok(), "{name:?}");
        assert!(http::HeaderValue::from_bytes(value).is_ok(), "{value:?}");
    }
    // The verdict does not depend on where a read ended: the head alone
    // reads the same, and any shorter prefix of it waits for more (a
    // prefix refused would send the connection to hyper or not according
    // to how TCP cut the bytes).
    let Parsed::Complete(alone) = parse_request(&buf.slice(..head.head_len)) else {
        panic!("the head alone is not complete: {head:?}");
    };
    assert_eq!(
        (alone.head_len, &alone.target, alone.body_len, alone.close),
        (head.head_len, &head.target, head.body_len, head.close)
    );
    for cut in [head.head_len - 1, head.head_len / 2] {
        let prefix = parse_request(&buf.slice(..cut));
        assert!(
            matches!(prefix, Parsed::Partial),
            "cut at {cut}: {prefix:?}"
        );
    }
});
