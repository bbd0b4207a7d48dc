//! Response heads from upstreams (`wire::parse_response`), which the fast
//! path rewrites for the client: no panic on any bytes, and the rewrite is
//! a head that reads back with the same status and framing and rewrites
//! to itself.
//!
//! Input: a flag byte (bit 0: the request was `HEAD`), then the head.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::fast::wire::{parse_response, Framing, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((flags, buf)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let mut out = Vec::new();
    let Parsed::Complete(head) = parse_response(buf, head_request, &mut out) else {
        return;
    };
    assert!(head.head_len <= buf.len());
    if head.framing == Framing::UntilClose {
        assert!(head.close);
    }
    let no_body = head_request || matches!(head.status.as_u16(), 204 | 304);
    if no_body || head.status.is_informational() {
        assert_eq!(head.framing, Framing::Empty);
    }

    // Where a read ended does not change the verdict.
    let mut again = Vec::new();
    let Parsed::Complete(alone) = parse_response(&buf[..head.head_len], head_request, &mut again)
    else {
        panic!("the head alone is not complete");
    };
    assert_eq!(
        (alone.head_len, alone.status, alone.framing),
        (head.head_len, head.status, head.framing)
    );
    assert_eq!(again, out);
    for cut in [head.head_len - 1, head.head_len / 2] {
        let prefix = parse_response(&buf[..cut], head_request, &mut Vec::new());
        assert!(
            matches!(prefix, Parsed::Partial),
            "cut at {cut}: {prefix:?}"
        );
    }

    if head.status.is_informational() {
        assert!(out.is_empty(), "an interim head is not written");
        return;
    }
    // What the client gets (the caller ends the head the same way, after
    // its own fields) is a head with the same status and framing, and
    // rewriting it changes nothing more.
    assert!(out.starts_with(b"HTTP/1.1 ") && out.ends_with(b"\r\n"));
    out.extend_from_slice(b"\r\n");
    let mut twice = Vec::new();
    let Parsed::Complete(reread) = parse_response(&out, head_request, &mut twice) else {
        panic!(
            "the rewritten head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(
        (reread.head_len, reread.status, reread.framing, reread.dated),
        (out.len(), head.status, head.framing, head.dated)
    );
    twice.extend_from_slice(b"\r\n");
    assert_eq!(twice, out);
});
