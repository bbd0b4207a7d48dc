//! Path normalisation (`route::normalize_path`), which decides the path
//! both matched against the routes and forwarded: no panic on any string,
//! and a normalised path is canonical (normalising it again changes
//! nothing, no empty, `.` or `..` segment, no separator smuggled in).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::route::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = normalize_path(raw) else {
        return;
    };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert_eq!(
        normalize_path(&path).as_deref(),
        Ok(path.as_str()),
        "{raw:?}"
    );
    // Only the last segment may be empty (a trailing slash).
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        assert!(
            !seg.is_empty() || i + 1 == segments.len(),
            "{raw:?} -> {path:?}"
        );
        assert!(*seg != "." && *seg != "..", "{raw:?} -> {path:?}");
    }
    assert!(!path.contains('\\'), "{raw:?} -> {path:?}");
    assert!(!path.bytes().any(|b| b < 0x20 || b == 0x7f), "{raw:?}");
    // Every escape left is of a reserved byte, in upper-case hex, and
    // never a separator.
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
        assert!(
            hex.len() == 2
                && hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{raw:?} -> {path:?}"
        );
        assert!(hex != b"2F" && hex != b"5C", "{raw:?} -> {path:?}");
    }
    // A path `http` takes as a request target stays one.
    if !raw.contains(['?', '#']) && http::uri::PathAndQuery::try_from(raw).is_ok() {
        assert!(
            http::uri::PathAndQuery::try_from(path.as_str()).is_ok(),
            "{raw:?} -> {path:?}"
        );
    }
});
