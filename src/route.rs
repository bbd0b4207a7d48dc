//! Path normalisation and the route table.
//!
//! A route is matched on exactly the path that will be forwarded, so that
//! `/api/calls/../admin`, `//admin` and `/%61dmin` cannot slip past a route
//! meant for `/admin`: [`normalize_path`] decodes percent-encoded unreserved
//! characters, collapses repeated slashes and resolves dot segments, and
//! refuses encoded `/` and `\` (which upstreams disagree about). The query
//! string never takes part. [`RouteTable::find`] then takes the longest
//! prefix that ends on a segment boundary and accepts the method.

use std::borrow::Cow;

use http::Method;

use crate::ability::Ability;
use crate::ratelimit::Policy;

/// Why a request path is refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path (`*`, empty, or no leading slash).
    #[error("path must start with /")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("path has a malformed percent-encoding")]
    BadEscape,
    /// `%2F`, `%5C` or a raw backslash.
    #[error("path has an encoded slash or a backslash")]
    EncodedSeparator,
    /// A NUL or other control byte, raw or encoded.
    #[error("path has a control character")]
    ControlChar,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalises a request path (no query string) into the form that is both
/// matched and forwarded.
///
/// - `%XX` of an unreserved character is decoded; other escapes are kept,
///   with upper-case hex; `%2F`/`%5C` and raw `\` are refused.
/// - Empty segments (`//`) and `.` are dropped, `..` removes the previous
///   segment (never above the root).
/// - A trailing slash is kept, as is the one a final `.` or `..` implies.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if is_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_slow(raw).map(Cow::Owned)
}

/// Whether `raw` is already what [`normalize_path`] would make of it: the
/// common case, checked in one pass without building segments, and then
/// borrowed, not copied. Anything unusual (an escape, a backslash, a
/// control or non-ASCII byte, an empty or dot segment before the end)
/// takes the full path.
fn is_canonical(raw: &str) -> bool {
    let Some((&b'/', rest)) = raw.as_bytes().split_first() else {
        return false;
    };
    // The segment being read: its length, and how many of it are dots.
    let (mut len, mut dots) = (0usize, 0usize);
    // `.` or `..` (a dot segment), or, before a '/', empty (`//`).
    let dot_segment = |len: usize, dots: usize| len == dots && (1..=2).contains(&len);
    for &b in rest {
        match CLASS[usize::from(b)] {
            PLAIN => len += 1,
            DOT => {
                len += 1;
                dots += 1;
            }
            SLASH => {
                if len == 0 || dot_segment(len, dots) {
                    return false;
                }
                (len, dots) = (0, 0);
            }
            _ => return false,
        }
    }
    // The last segment may be empty (`/a/`, `/`), never a dot segment.
    !dot_segment(len, dots)
}

/// What each byte is to [`is_canonical`]: one table lookup a byte.
const PLAIN: u8 = 0;
const DOT: u8 = 1;
const SLASH: u8 = 2;
/// An escape, a backslash, a control or non-ASCII byte.
const UNUSUAL: u8 = 3;
static CLASS: [u8; 256] = {
    let mut class = [UNUSUAL; 256];
    let mut b = 0x20;
    while b < 0x7f {
        class[b] = PLAIN;
        b += 1;
    }
    class[b'.' as usize] = DOT;
    class[b'/' as usize] = SLASH;
    class[b'%' as usize] = UNUSUAL;
    class[b'\\' as usize] = UNUSUAL;
    class
};

fn normalize_slow(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Pass 1: decode into a buffer of segments separated by '/'.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                if v == b'/' || v == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::ControlChar);
                }
                if is_unreserved(v) {
                    decoded.push(char::from(v));
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::EncodedSeparator),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ControlChar),
            _ => {
                // Multi-byte UTF-8 (never produced by hyper's URI parser, but
                // config paths may carry it) is copied through whole.
                let ch_len = utf8_len(b);
                let end = (i + ch_len).min(bytes.len());
                decoded.push_str(raw.get(i..end).ok_or(PathError::BadEscape)?);
                i = end;
                continue;
            }
        }
    }

    // Pass 2: resolve segments.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Whether `prefix` (normalised, no trailing slash but `/`) matches `path`
/// on a segment boundary: `/api/calls` matches `/api/calls`, `/api/calls/`
/// and `/api/calls/7`, not `/api/callsx`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The standard methods (RFC 9110 section 9, and PATCH, RFC 5789).
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Whether `method` is a case variant of a standard method (`get`,
/// `Post`). Methods are case-sensitive (RFC 9110 9.1), so such a request
/// matches no route's method list and would fall through to a route that
/// allows every method, while many upstream frameworks read it as the
/// standard one. It is refused instead (400 `BAD_METHOD`), as nginx does.
pub fn is_miscased_method(method: &Method) -> bool {
    // The standard names are upper case: one without a lower-case letter
    // is either one of them exactly or no variant of one (a few byte
    // checks on every request, nothing more).
    let m = method.as_str();
    m.bytes().any(|b| b.is_ascii_lowercase())
        && STANDARD_METHODS.iter().any(|s| s.eq_ignore_ascii_case(m))
}

/// The outcome of matching a request against the routes.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    /// The longest prefix that allows the method.
    Found(&'a RouteConfig),
    /// Some route's prefix matches, but none allows this method.
    MethodNotAllowed,
    /// No route's prefix matches.
    NotFound,
}

/// Routes sorted longest prefix first, so the first hit is the answer.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<RouteConfig>,
}

impl RouteTable {
    /// Builds the table from validated routes.
    pub fn new(mut routes: Vec<RouteConfig>) -> Self {
        // Stable sort keeps file order among equal-length prefixes, which
        // config validation already made disjoint by method.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Self { routes }
    }

    /// Finds the route for a normalised path and method.
    pub fn find(&self, path: &str, method: &Method) -> RouteMatch<'_> {
        let mut path_matched = false;
        for r in &self.routes {
            if prefix_matches(&r.path, path) {
                if r.methods.is_empty() || r.methods.contains(method) {
                    return RouteMatch::Found(r);
                }
                path_matched = true;
            }
        }
        if path_matched {
            RouteMatch::MethodNotAllowed
        } else {
            RouteMatch::NotFound
        }
    }

    /// The `Allow` value of a 405 (RFC 9110 15.5.6) for a normalised path:
    /// every method some route whose prefix matches it allows, in a fixed
    /// order (`GET, POST`). Only called after [`RouteTable::find`] said
    /// [`RouteMatch::MethodNotAllowed`], so every such route lists its
    /// methods; never on the path of a request that is forwarded.
    pub fn allow(&self, path: &str) -> String {
        let mut methods: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| prefix_matches(&r.path, path))
            .flat_map(|r| r.methods.iter().map(Method::as_str))
            .collect();
        methods.sort_unstable();
        methods.dedup();
        methods.join(", ")
    }
}

/// Whether a route needs a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid token with the route's abilities is needed.
    Required,
    /// No token: forwarded anonymously. A token: it must be valid.
    Optional,
    /// Never checked; credential and tenant headers are still stripped.
    None,
}

/// Validated `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Normalised prefix, no trailing slash except `/` itself.
    pub path: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// Allowed methods; empty = all.
    pub methods: Vec<Method>,
    /// Token requirement.
    pub auth: AuthMode,
    /// Abilities needed, all of them.
    pub abilities: Vec<Ability>,
    /// `[[rate_limits.policies]]` counted here (carried with the route,
    /// so that a reload swaps them with it).
    pub rate_limits: Vec<Policy>,
    /// The `route` label of its metric series: its `name`, else its
    /// `path` (see [`route_label`]).
    pub label: String,
    /// Index of its series among the config's distinct labels (two
    /// unnamed routes on one path, split by method, share one).
    pub series: usize,
}

/// Longest route name accepted.
pub const MAX_ROUTE_NAME: usize = 64;

/// The `route` label values of requests that match no route, of the seed
/// token endpoints and of forward-auth requests. A route name may not be
/// one of them (nor can a configured path, which starts with `/`).
pub const RESERVED_ROUTE_LABELS: [&str; 3] = ["none", "token_api", "forward_auth"];

/// Whether `name` is usable as a route name: 1 to [`MAX_ROUTE_NAME`] ASCII
/// letters, digits, `_`, `-`, `.`, `:` or `/`, not a reserved label. Safe
/// in a Prometheus label value and a log line as it stands.
pub fn check_route_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ROUTE_NAME {
        return Err(format!("must be 1 to {MAX_ROUTE_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
    {
        return Err(format!(
            "{name:?} may hold only ASCII letters, digits and _ - . : /"
        ));
    }
    if RESERVED_ROUTE_LABELS.contains(&name) {
        return Err(format!("{name:?} is reserved (requests matching no route, the seed token endpoints, forward auth)"));
    }
    Ok(())
}

/// A route's label value: its name, else its configured path.
pub fn route_label(name: Option<&str>, path: &str) -> String {
    name.unwrap_or(path).to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::AuthMode;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn case_variants_of_standard_methods_are_told_apart() {
        for m in [
            "get", "Get", "gEt", "post", "Post", "delete", "patch", "Options", "head",
        ] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(is_miscased_method(&method), "{m}");
        }
        for m in [
            "GET", "POST", "PATCH", "PROPFIND", "propfind", "BREW", "GETS",
        ] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!is_miscased_method(&method), "{m}");
        }
    }

    #[test]
    fn normalises_the_classic_bypasses() {
        let n = |p| normalize_path(p).unwrap();
        assert_eq!(n("/api/calls/../admin"), "/api/admin");
        assert_eq!(n("/api/calls/../../admin"), "/admin");
        assert_eq!(n("//admin"), "/admin");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/%2e%2e/admin"), "/admin");
        assert_eq!(n("/a/./b/"), "/a/b/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/../../.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/a%3fb"), "/a%3Fb");
        assert_eq!(n("/caf%C3%A9"), "/caf%C3%A9");
    }

    #[test]
    fn refuses_encoded_separators_and_junk() {
        assert_eq!(normalize_path("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a\\b"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%00"), Err(PathError::ControlChar));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path(""), Err(PathError::NotAbsolute));
    }

    fn route(path: &str, methods: &[Method]) -> RouteConfig {
        RouteConfig {
            label: path.into(),
            series: 0,
            path: path.into(),
            upstream: 0,
            methods: methods.to_vec(),
            auth: AuthMode::Required,
            abilities: vec![],
            rate_limits: vec![],
        }
    }

    #[test]
    fn longest_segment_prefix_wins() {
        let t = RouteTable::new(vec![
            route("/", &[]),
            route("/api/calls", &[Method::GET]),
            route("/api", &[]),
        ]);
        let path_of = |p: &str, m: &Method| match t.find(p, m) {
            RouteMatch::Found(r) => r.path.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(path_of("/api/calls/7", &Method::GET), "/api/calls");
        assert_eq!(path_of("/api/calls", &Method::GET), "/api/calls");
        assert_eq!(path_of("/api/callsx", &Method::GET), "/api");
        assert_eq!(path_of("/api/calls/7", &Method::POST), "/api");
        assert_eq!(path_of("/other", &Method::GET), "/");
    }

    #[test]
    fn a_405_allows_what_the_matching_routes_allow() {
        let t = RouteTable::new(vec![
            route("/api", &[Method::GET, Method::HEAD]),
            route("/api/calls", &[Method::POST]),
            route("/api/calls", &[Method::GET]),
            route("/other", &[Method::DELETE]),
        ]);
        assert!(matches!(
            t.find("/api/calls/7", &Method::PUT),
            RouteMatch::MethodNotAllowed
        ));
        assert_eq!(t.allow("/api/calls/7"), "GET, HEAD, POST");
        assert_eq!(t.allow("/api/x"), "GET, HEAD");
    }

    #[test]
    fn method_and_not_found_are_told_apart() {
        let t = RouteTable::new(vec![route("/api", &[Method::GET])]);
        assert!(matches!(
            t.find("/api/x", &Method::POST),
            RouteMatch::MethodNotAllowed
        ));
        assert!(matches!(
            t.find("/else", &Method::GET),
            RouteMatch::NotFound
        ));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,4}",
            Just(".".to_string()),
            Just("..".to_string()),
            Just("".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just("%61".to_string()),
            Just("%20".to_string()),
        ]
    }

    proptest! {
        /// Normalising twice changes nothing: what is matched is what is sent.
        #[test]
        fn normalisation_is_idempotent(segs in proptest::collection::vec(segment(), 0..10)) {
            let raw = format!("/{}", segs.join("/"));
            let once = normalize_path(&raw).unwrap();
            prop_assert_eq!(normalize_path(&once).unwrap(), once.clone());
        }

        /// The result never holds a dot segment, an empty segment or an
        /// encoded unreserved character.
        #[test]
        fn normalised_paths_are_canonical(segs in proptest::collection::vec(segment(), 0..10)) {
            let raw = format!("/{}", segs.join("/"));
            let n = normalize_path(&raw).unwrap();
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"));
            for seg in n.split('/') {
                prop_assert!(seg != "." && seg != "..");
            }
            prop_assert!(!n.to_ascii_lowercase().contains("%2e"));
            prop_assert!(!n.to_ascii_lowercase().contains("%61"));
        }

        /// A path that normalises under a prefix really does begin with it:
        /// no sequence of dots and slashes climbs out of a matched route.
        #[test]
        fn matched_prefix_is_a_real_prefix(segs in proptest::collection::vec(segment(), 0..10)) {
            let raw = format!("/api/{}", segs.join("/"));
            let n = normalize_path(&raw).unwrap();
            if prefix_matches("/api", &n) {
                prop_assert!(n == "/api" || n.starts_with("/api/"));
            }
        }

        /// The one-pass check for already-canonical paths agrees with the
        /// full normalisation on every input it accepts.
        #[test]
        fn canonical_fast_path_agrees(
            segs in proptest::collection::vec(prop_oneof![segment(), "[a-z/.%\\\\]{0,4}"], 0..8),
        ) {
            let raw = format!("/{}", segs.join("/"));
            prop_assert_eq!(normalize_path(&raw).map(Cow::into_owned), normalize_slow(&raw));
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = normalize_path(&s);
        }
    }
}
