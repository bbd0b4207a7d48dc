//! Forward auth: the question a front proxy (nginx `auth_request`, Caddy
//! `forward_auth`, Traefik ForwardAuth, Envoy ext_authz) asks before it
//! forwards a request itself: would the gateway let this request through,
//! and as whom?
//!
//! Served on the public listener at `forward_auth.path` and everything
//! below it, by both paths: [`crate::proxy::handle`] and the
//! fast path ([`crate::fast`]) find it with [`suffix`] and decide it with
//! [`decide`], which runs the proxy path's own steps
//! ([`Snapshot::route`](crate::gateway::Snapshot::route), [`Gateway::admit`]) on the *original* request:
//!
//! - its method: `X-Forwarded-Method`, else `X-Original-Method`, else the
//!   forward-auth request's own;
//! - its target: `X-Forwarded-Uri`, else `X-Original-URI`, else what
//!   follows `forward_auth.path` in the request's own path (Envoy's
//!   `path_prefix`), else `/`. The query string never takes part.
//!
//! Allowed: 200 with an empty body and the caller's gateway headers (none
//! on an `auth = "none"` route, or an `optional` one without a token).
//! Refused: the proxy path's own denial, status and JSON body alike.
//! Nothing is forwarded.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response};

use crate::body::{full, Body};
use crate::cache::MemoUse;
use crate::config::ForwardAuthConfig;
use crate::error::{Denial, Refused};
use crate::fields::{RequestFields, X_REQUEST_ID};
use crate::gateway::{Admission, Gateway, Snapshot};
use crate::route::{normalize_path, PathError};
use crate::rules::{caller_headers, HeaderNames};

/// The original method, as Traefik and Caddy send it.
pub static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// The original method, as nginx recipes send it.
pub static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
/// The original target, as Traefik and Caddy send it.
pub static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// The original target, as nginx recipes send it.
pub static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// What follows `forward_auth.path` in a request's path (`""` for the path
/// itself, `/api/calls/7` for Envoy's `path_prefix` form), or `None` when
/// the request is not for forward auth.
///
/// Matched, on a segment boundary, on the path as sent (`raw`), so that
/// whatever follows the prefix is the original target even when it holds
/// dot segments (`/_tokengate/auth/../admin` asks about `/admin`; it is
/// never proxied), and on the `normalised` path, so that
/// `//_tokengate/auth` is forward auth too.
pub fn suffix<'a>(
    config: &ForwardAuthConfig,
    raw: &'a str,
    normalised: &'a str,
) -> Option<&'a str> {
    let prefix = config.path.as_deref()?;
    [raw, normalised].into_iter().find_map(|p| {
        p.strip_prefix(prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Decides a forward-auth request with the proxy path's own steps:
/// normalisation, [`Snapshot::route`] (method case, look-alike headers,
/// 404 / 405) and [`Gateway::admit`] (the route's `auth` mode, the
/// credential from the request's own `Authorization` / `token` fields,
/// cache, store, revocation, abilities, rate limits and quota counted as
/// for a proxied request, by `client_ip`: the front proxy's address).
/// `own_method` is the request's method and `suffix` what [`suffix`]
/// found.
/// `snapshot`: the request's ([`Gateway::snapshot`]); `started`: when its
/// head was read. A 405 names the original path, for its `Allow`.
#[allow(clippy::too_many_arguments)]
pub async fn decide(
    g: &Gateway,
    snapshot: &Snapshot,
    own_method: &Method,
    suffix: &str,
    fields: &(impl RequestFields + ?Sized),
    memo: MemoUse<'_>,
    client_ip: IpAddr,
    started: Instant,
) -> Result<Admission, Refused> {
    let (method, path) = original(own_method, suffix, fields)?;
    let (route, _) = snapshot
        .route(&path, &method, fields)
        .map_err(|d| Refused::routing(d, &path))?;
    let admission = g.admit(route, fields, memo, client_ip, started).await?;
    g.metrics.forward_auth_allowed.inc();
    Ok(admission)
}

/// The original request's method and normalised path (borrowed from the
/// request when it is already normal, as it usually is).
fn original<'a>(
    own_method: &Method,
    suffix: &'a str,
    fields: &'a (impl RequestFields + ?Sized),
) -> Result<(Method, Cow<'a, str>), Denial> {
    let method = match first_of(fields, [&X_FORWARDED_METHOD, &X_ORIGINAL_METHOD]) {
        Err(Conflict) => return Err(Denial::BadMethod),
        Ok(Some(m)) => Method::from_bytes(m).map_err(|_| Denial::BadMethod)?,
        Ok(None) => own_method.clone(),
    };
    let path = match first_of(fields, [&X_FORWARDED_URI, &X_ORIGINAL_URI]) {
        Err(Conflict) => return Err(Denial::BadPath(PathError::BadEscape)),
        Ok(Some(target)) => {
            normalize_path(target_path(target)?.path()).map(|p| Cow::Owned(p.into_owned()))
        }
        Ok(None) if suffix.is_empty() => Ok(Cow::Borrowed("/")),
        Ok(None) => normalize_path(suffix),
    }
    .map_err(Denial::BadPath)?;
    Ok((method, path))
}

/// Two copies of a field that say different things.
struct Conflict;

/// The value of the first of `names` present. Several copies of it must
/// agree: which one the front proxy set cannot be told.
fn first_of<'a, const N: usize>(
    fields: &'a (impl RequestFields + ?Sized),
    names: [&'a HeaderName; N],
) -> Result<Option<&'a [u8]>, Conflict> {
    for name in names {
        let mut values = fields.values(name);
        if let Some(first) = values.next() {
            return match values.all(|v| v == first) {
                true => Ok(Some(first)),
                false => Err(Conflict),
            };
        }
    }
    Ok(None)
}

/// An original target as a front proxy states it: origin form (`/path?q`),
/// which the proxy path's request line parser would take, and no fragment.
fn target_path(target: &[u8]) -> Result<PathAndQuery, Denial> {
    if target.first() != Some(&b'/') {
        return Err(Denial::BadPath(PathError::NotAbsolute));
    }
    // A fragment is no part of a request target; it is refused rather
    // than dropped, so the path checked is the one the upstream reads.
    if target.contains(&b'#') {
        return Err(Denial::BadPath(PathError::BadEscape));
    }
    PathAndQuery::try_from(target).map_err(|_| Denial::BadPath(PathError::BadEscape))
}

/// The allowed answer through hyper: 200, no body, the caller's gateway
/// headers (configured names, less `headers.omit`), the route's
/// `RateLimit` fields and the request id.
pub fn allowed(
    names: &HeaderNames,
    admission: &Admission,
    request_id: &HeaderValue,
) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    let headers = resp.headers_mut();
    if let Some(a) = admission.entry.as_deref() {
        caller_headers(names, a, |n, v| {
            headers.append(n.clone(), v.clone());
        });
    }
    if let Some(l) = &admission.limits {
        for (n, v) in l.pairs() {
            headers.append(n.clone(), v.clone());
        }
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::fields::tests::headers as map;

    fn on(path: &str) -> ForwardAuthConfig {
        ForwardAuthConfig {
            path: Some(path.into()),
        }
    }

    #[test]
    fn the_endpoint_and_everything_below_it() {
        let c = on("/_tokengate/auth");
        let s = |raw, n| suffix(&c, raw, n);
        assert_eq!(s("/_tokengate/auth", "/_tokengate/auth"), Some(""));
        assert_eq!(s("/_tokengate/auth/", "/_tokengate/auth/"), Some("/"));
        assert_eq!(
            s(
                "/_tokengate/auth/api/calls/7",
                "/_tokengate/auth/api/calls/7"
            ),
            Some("/api/calls/7")
        );
        // What follows the prefix as sent is the original target, dot
        // segments and all.
        assert_eq!(
            s("/_tokengate/auth/../admin", "/_tokengate/admin"),
            Some("/../admin")
        );
        assert_eq!(s("/_tokengate/auth/..", "/_tokengate"), Some("/.."));
        // A path that only normalises to it is forward auth too.
        assert_eq!(s("//_tokengate/auth", "/_tokengate/auth"), Some(""));
        assert_eq!(s("/_tokengate/%61uth/x", "/_tokengate/auth/x"), Some("/x"));
        // Segment boundaries.
        assert_eq!(s("/_tokengate/authx", "/_tokengate/authx"), None);
        assert_eq!(s("/_tokengate", "/_tokengate"), None);
        assert_eq!(s("/api", "/api"), None);
        assert_eq!(
            suffix(
                &ForwardAuthConfig::default(),
                "/_tokengate/auth",
                "/_tokengate/auth"
            ),
            None
        );
    }

    fn orig(own: &str, suffix: &str, h: &[(&str, &str)]) -> Result<(String, String), Denial> {
        let own = Method::from_bytes(own.as_bytes()).unwrap();
        original(&own, suffix, &map(h)).map(|(m, p)| (m.to_string(), p.into_owned()))
    }

    fn ok(m: &str, p: &str) -> Result<(String, String), Denial> {
        Ok((m.into(), p.into()))
    }

    #[test]
    fn the_original_request_and_its_precedence() {
        assert_eq!(orig("GET", "", &[]), ok("GET", "/"));
        assert_eq!(
            orig("POST", "/api/calls/7", &[]),
            ok("POST", "/api/calls/7")
        );
        assert_eq!(orig("GET", "/a/../b/./c", &[]), ok("GET", "/b/c"));
        let both = [
            ("x-original-method", "PUT"),
            ("x-forwarded-method", "DELETE"),
            ("x-original-uri", "/original?q=1"),
            ("x-forwarded-uri", "/forwarded?q=2"),
        ];
        assert_eq!(orig("GET", "/suffix", &both), ok("DELETE", "/forwarded"));
        assert_eq!(orig("GET", "/suffix", &both[..1]), ok("PUT", "/suffix"));
        assert_eq!(
            orig("GET", "/suffix", &both[..3]),
            ok("DELETE", "/original")
        );
        assert_eq!(
            orig("GET", "/suffix", &[("x-original-uri", "/%61pi//x/..?a=/b")]),
            ok("GET", "/api/")
        );
        // Agreeing copies are one; disagreeing ones cannot be told apart.
        let twice = [("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/a")];
        assert_eq!(orig("GET", "", &twice), ok("GET", "/a"));
        let differ = [("x-forwarded-uri", "/a"), ("x-forwarded-uri", "/b")];
        assert_eq!(
            orig("GET", "", &differ),
            Err(Denial::BadPath(PathError::BadEscape))
        );
        let differ = [("x-original-method", "GET"), ("x-original-method", "POST")];
        assert_eq!(orig("GET", "", &differ), Err(Denial::BadMethod));
    }

    #[test]
    fn malformed_originals_are_refused() {
        let bad_path = |v: &str| orig("GET", "/fine", &[("x-forwarded-uri", v)]);
        assert_eq!(
            bad_path("/a%2Fb"),
            Err(Denial::BadPath(PathError::EncodedSeparator))
        );
        assert_eq!(
            bad_path("/a%2fb?x"),
            Err(Denial::BadPath(PathError::EncodedSeparator))
        );
        assert_eq!(
            bad_path("/a%5Cb"),
            Err(Denial::BadPath(PathError::EncodedSeparator))
        );
        assert_eq!(
            bad_path("/a%zz"),
            Err(Denial::BadPath(PathError::BadEscape))
        );
        assert_eq!(
            bad_path("/a#/../admin"),
            Err(Denial::BadPath(PathError::BadEscape))
        );
        assert_eq!(
            bad_path("api"),
            Err(Denial::BadPath(PathError::NotAbsolute))
        );
        assert_eq!(bad_path(""), Err(Denial::BadPath(PathError::NotAbsolute)));
        assert_eq!(
            bad_path("http://h/api"),
            Err(Denial::BadPath(PathError::NotAbsolute))
        );
        assert_eq!(bad_path("*"), Err(Denial::BadPath(PathError::NotAbsolute)));
        assert_eq!(
            orig("GET", "/a%2Fb", &[]),
            Err(Denial::BadPath(PathError::EncodedSeparator))
        );
        assert_eq!(
            orig("GET", "", &[("x-forwarded-method", "G T")]),
            Err(Denial::BadMethod)
        );
        assert_eq!(
            orig("GET", "", &[("x-forwarded-method", "")]),
            Err(Denial::BadMethod)
        );
        // A case variant parses; `Snapshot::route` refuses it, as it does
        // on the proxy path.
        assert_eq!(
            orig("GET", "", &[("x-forwarded-method", "get")]),
            ok("get", "/")
        );
    }
}
