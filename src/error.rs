//! Errors of the request path, mapped to responses in one place.
//!
//! Every way the gateway can refuse or fail a proxied request is a
//! [`Denial`]; [`Denial::status`] and [`Denial::code`] are the only mapping
//! to the wire, pinned by a test below. Responses are always JSON
//! (`{"error": true, "code": ..., "message": ...}`), never HTML, and never
//! carry internal detail: that goes to the log at the point of failure.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::StatusCode;

use crate::ratelimit::{header_values, Refusal};
use crate::route::PathError;

/// Why a request was not forwarded (or its forwarding failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Both `Authorization` and `token` present and different, or a
    /// credential header repeated with different values.
    #[error("conflicting credentials")]
    ConflictingCredentials,
    /// The request path cannot be normalised safely.
    #[error("bad path: {0}")]
    BadPath(PathError),
    /// A header name that reads as one of the gateway's own once separators
    /// are ignored (`X_Tenant_Id`, `x.tenant.id`).
    #[error("forbidden header")]
    ForbiddenHeader,
    /// An `Upgrade` to anything but WebSocket (e.g. `h2c`).
    #[error("upgrade not allowed")]
    UpgradeNotAllowed,
    /// A case variant of a standard method (`get`, `Post`): methods are
    /// case-sensitive, so it would slip past every route's method list.
    #[error("bad method")]
    BadMethod,
    /// No route for this path.
    #[error("no route")]
    RouteNotFound,
    /// A route for this path, not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The route needs a token and none was sent.
    #[error("missing token")]
    MissingToken,
    /// The token failed the format / checksum check or the header is unusable.
    #[error("malformed token")]
    MalformedToken,
    /// Well formed, but not in the store.
    #[error("unknown token")]
    UnknownToken,
    /// Revoked.
    #[error("revoked token")]
    TokenRevoked,
    /// Past its `expires_at`.
    #[error("expired token")]
    TokenExpired,
    /// The token lacks an ability the route needs.
    #[error("ability missing")]
    AbilityMissing,
    /// The token's account is blocked.
    #[error("account blocked")]
    AccountBlocked,
    /// The token's tenant is blocked.
    #[error("tenant blocked")]
    TenantBlocked,
    /// A root or tenant-admin token on the proxy path.
    #[error("token kind not allowed")]
    TokenKindNotAllowed,
    /// The token is not cached and the store cannot be reached: fail closed.
    #[error("store unavailable")]
    StoreUnavailable,
    /// The upstream refused the connection or broke it.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// Every connection the upstream may have (`max_connections`) stayed
    /// busy for the connect timeout.
    #[error("upstream busy")]
    UpstreamBusy,
    /// A window of a route's policy or of the token's own `rate_limit` is
    /// full.
    #[error("rate limited")]
    RateLimited(Refusal),
    /// The token's quota for the day or month is used up.
    #[error("quota exceeded")]
    QuotaExceeded(Refusal),
}

/// A refusal on its way to its response: the [`Denial`] and, for a 405,
/// the normalised path whose routes its `Allow` lists (the request's own,
/// or for forward auth the original request's).
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub denial: Denial,
    /// The path a 405's `Allow` is for.
    pub allow_for: Option<String>,
}

impl Refused {
    /// A refusal from routing `path`: a 405 keeps the path for its `Allow`.
    pub fn routing(denial: Denial, path: &str) -> Self {
        Self {
            denial,
            allow_for: (denial == Denial::MethodNotAllowed).then(|| path.to_owned()),
        }
    }
}

impl From<Denial> for Refused {
    fn from(denial: Denial) -> Self {
        Self {
            denial,
            allow_for: None,
        }
    }
}

impl Denial {
    /// The HTTP status for this denial.
    pub fn status(self) -> StatusCode {
        match self {
            Denial::ConflictingCredentials
            | Denial::BadPath(_)
            | Denial::ForbiddenHeader
            | Denial::UpgradeNotAllowed
            | Denial::BadMethod => StatusCode::BAD_REQUEST,
            Denial::MissingToken
            | Denial::MalformedToken
            | Denial::UnknownToken
            | Denial::TokenRevoked
            | Denial::TokenExpired => StatusCode::UNAUTHORIZED,
            Denial::AbilityMissing
            | Denial::AccountBlocked
            | Denial::TenantBlocked
            | Denial::TokenKindNotAllowed => StatusCode::FORBIDDEN,
            Denial::RouteNotFound => StatusCode::NOT_FOUND,
            Denial::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Denial::StoreUnavailable | Denial::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            Denial::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Denial::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Denial::RateLimited(_) | Denial::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Denial::ConflictingCredentials => "CONFLICTING_CREDENTIALS",
            Denial::BadPath(_) => "BAD_PATH",
            Denial::ForbiddenHeader => "FORBIDDEN_HEADER",
            Denial::UpgradeNotAllowed => "UPGRADE_NOT_ALLOWED",
            Denial::BadMethod => "BAD_METHOD",
            Denial::RouteNotFound => "ROUTE_NOT_FOUND",
            Denial::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Denial::MissingToken => "TOKEN_MISSING",
            Denial::MalformedToken => "TOKEN_MALFORMED",
            Denial::UnknownToken => "TOKEN_INVALID",
            Denial::TokenRevoked => "TOKEN_REVOKED",
            Denial::TokenExpired => "TOKEN_EXPIRED",
            Denial::AbilityMissing => "ABILITY_MISSING",
            Denial::AccountBlocked => "ACCOUNT_BLOCKED",
            Denial::TenantBlocked => "TENANT_BLOCKED",
            Denial::TokenKindNotAllowed => "TOKEN_KIND_NOT_ALLOWED",
            Denial::StoreUnavailable => "STORE_UNAVAILABLE",
            Denial::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Denial::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Denial::UpstreamBusy => "UPSTREAM_BUSY",
            Denial::RateLimited(_) => "RATE_LIMITED",
            Denial::QuotaExceeded(_) => "QUOTA_EXCEEDED",
        }
    }

    /// A human-readable message; never internal detail.
    pub fn message(self) -> &'static str {
        match self {
            Denial::ConflictingCredentials => {
                "Authorization and token headers carry different credentials"
            }
            Denial::BadPath(PathError::EncodedSeparator) => {
                "encoded slash or backslash in the path is not allowed"
            }
            Denial::BadPath(_) => "the request path is malformed",
            Denial::ForbiddenHeader => "a header name collides with a gateway header",
            Denial::UpgradeNotAllowed => "only WebSocket upgrades are allowed",
            Denial::BadMethod => "methods are case-sensitive: use the standard upper-case name",
            Denial::RouteNotFound => "no route matches this path",
            Denial::MethodNotAllowed => "this method is not allowed on this path",
            Denial::MissingToken => "an API token is required",
            Denial::MalformedToken => "the API token is malformed",
            Denial::UnknownToken => "the API token is not valid",
            Denial::TokenRevoked => "the API token has been revoked",
            Denial::TokenExpired => "the API token has expired",
            Denial::AbilityMissing => "the API token lacks an ability this route requires",
            Denial::AccountBlocked => "the account is blocked",
            Denial::TenantBlocked => "the tenant is blocked",
            Denial::TokenKindNotAllowed => "this kind of token cannot call the API",
            Denial::StoreUnavailable => "the token store is unavailable; retry shortly",
            Denial::UpstreamUnavailable => "the upstream service is unavailable",
            Denial::UpstreamTimeout => "the upstream service did not answer in time",
            Denial::UpstreamBusy => {
                "the upstream service is at its connection limit; retry shortly"
            }
            Denial::RateLimited(_) => "too many requests; retry after the time in Retry-After",
            Denial::QuotaExceeded(_) => "the API token's quota for this period is used up",
        }
    }

    /// The JSON response in pieces (status, headers with
    /// `WWW-Authenticate` on 401, `Retry-After` on 503 and 429, and the
    /// refusing policy's `RateLimit-Policy` / `RateLimit` on 429, body): each
    /// codec writes them its own way (`crate::body::denial_response` for
    /// hyper, the fast path as bytes).
    pub fn parts(self, request_id: Option<&HeaderValue>) -> (StatusCode, HeaderMap, Bytes) {
        let body = serde_json::json!({
            "error": true,
            "code": self.code(),
            "message": self.message(),
        });
        let mut h = HeaderMap::with_capacity(4);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(id) = request_id {
            h.insert(crate::fields::X_REQUEST_ID.clone(), id.clone());
        }
        match self.status() {
            StatusCode::UNAUTHORIZED => {
                let v = match self {
                    Denial::MissingToken => HeaderValue::from_static("Bearer"),
                    _ => HeaderValue::from_static("Bearer error=\"invalid_token\""),
                };
                h.insert(WWW_AUTHENTICATE, v);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let Denial::RateLimited(r) | Denial::QuotaExceeded(r) = self {
            h.insert(RETRY_AFTER, HeaderValue::from(r.retry_after()));
            if let Some(fields) = header_values(&mut [r.0]) {
                for (name, value) in fields.pairs() {
                    h.insert(name.clone(), value.clone());
                }
            }
        }
        (self.status(), h, Bytes::from(body.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{RATELIMIT, RATELIMIT_POLICY};

    /// Pins the wire contract: a change here is a breaking change.
    #[test]
    fn mapping_is_pinned() {
        let table = [
            (
                Denial::ConflictingCredentials,
                400,
                "CONFLICTING_CREDENTIALS",
            ),
            (
                Denial::BadPath(PathError::EncodedSeparator),
                400,
                "BAD_PATH",
            ),
            (Denial::ForbiddenHeader, 400, "FORBIDDEN_HEADER"),
            (Denial::UpgradeNotAllowed, 400, "UPGRADE_NOT_ALLOWED"),
            (Denial::BadMethod, 400, "BAD_METHOD"),
            (Denial::RouteNotFound, 404, "ROUTE_NOT_FOUND"),
            (Denial::MethodNotAllowed, 405, "METHOD_NOT_ALLOWED"),
            (Denial::MissingToken, 401, "TOKEN_MISSING"),
            (Denial::MalformedToken, 401, "TOKEN_MALFORMED"),
            (Denial::UnknownToken, 401, "TOKEN_INVALID"),
            (Denial::TokenRevoked, 401, "TOKEN_REVOKED"),
            (Denial::TokenExpired, 401, "TOKEN_EXPIRED"),
            (Denial::AbilityMissing, 403, "ABILITY_MISSING"),
            (Denial::AccountBlocked, 403, "ACCOUNT_BLOCKED"),
            (Denial::TenantBlocked, 403, "TENANT_BLOCKED"),
            (Denial::TokenKindNotAllowed, 403, "TOKEN_KIND_NOT_ALLOWED"),
            (Denial::StoreUnavailable, 503, "STORE_UNAVAILABLE"),
            (Denial::UpstreamUnavailable, 502, "UPSTREAM_UNAVAILABLE"),
            (Denial::UpstreamTimeout, 504, "UPSTREAM_TIMEOUT"),
            (Denial::UpstreamBusy, 503, "UPSTREAM_BUSY"),
            (Denial::RateLimited(refusal()), 429, "RATE_LIMITED"),
            (Denial::QuotaExceeded(refusal()), 429, "QUOTA_EXCEEDED"),
        ];
        for (d, status, code) in table {
            assert_eq!(d.status().as_u16(), status, "{d:?}");
            assert_eq!(d.code(), code, "{d:?}");
            let (s, headers, _) = d.parts(None);
            assert_eq!(s.as_u16(), status);
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert_eq!(
                headers.contains_key(WWW_AUTHENTICATE),
                status == 401,
                "{d:?}"
            );
            assert_eq!(
                headers.contains_key(RETRY_AFTER),
                status == 503 || status == 429
            );
        }
    }

    fn refusal() -> Refusal {
        Refusal(crate::ratelimit::Standing {
            name: crate::ratelimit::PolicyName::token(),
            quota: 10,
            window: 60,
            remaining: 0,
            reset: 17,
        })
    }

    #[test]
    fn a_429_says_when_and_which_policy() {
        let (s, h, body) = Denial::RateLimited(refusal()).parts(None);
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(h[RETRY_AFTER], "17");
        assert_eq!(h[&RATELIMIT_POLICY], "\"token\";q=10;w=60");
        assert_eq!(h[&RATELIMIT], "\"token\";r=0;t=17");
        assert!(std::str::from_utf8(&body)
            .unwrap_or("")
            .contains("RATE_LIMITED"));
    }
}
