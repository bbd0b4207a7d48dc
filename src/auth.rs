//! The auth decision: which credential a request carries, and whether the
//! token behind it may make this request.
//!
//! Everything here is pure and in memory, so it runs on every request, on a
//! cache hit as much as on a miss: revocation, expiry (against the clock,
//! never the cache TTL), blocked tenant or account, token kind, abilities.

use http::header::AUTHORIZATION;

use crate::error::Denial;
use crate::fields::{is_visible_ascii, RequestFields};
use crate::store::{AuthRecord, Status};
use crate::token::TokenKind;

/// The `token:` credential header of the seed APIs.
pub use crate::fields::TOKEN_HEADER;

pub use crate::ability::{grants, grants_all, Ability, AbilityError, MAX_ABILITY_LEN};

/// Extracts the credential from `Authorization: Bearer <t>` (scheme in any
/// case) or `token: <t>`.
///
/// `Ok(None)`: no credential at all. Errors: two different credentials
/// (400), several `Authorization` or `token` headers that disagree (400), or
/// an `Authorization` header in another scheme or with no token (401).
pub fn extract_credential(headers: &(impl RequestFields + ?Sized)) -> Result<Option<&str>, Denial> {
    credential_bytes(headers)?.map(as_token).transpose()
}

/// [`extract_credential`], the credential left as bytes: every one of
/// them visible ASCII (checked), so [`as_token`] takes it as it is. A
/// request on a connection that presented it before is matched by these
/// bytes ([`crate::cache::ConnectionMemo`]), never made text.
pub fn credential_bytes(headers: &(impl RequestFields + ?Sized)) -> Result<Option<&[u8]>, Denial> {
    let bearer = single(headers.values(&AUTHORIZATION))?
        .map(|v| {
            let space = v
                .iter()
                .position(|&b| b == b' ')
                .ok_or(Denial::MalformedToken)?;
            let (scheme, rest) = v.split_at(space);
            if !scheme.eq_ignore_ascii_case(b"bearer") {
                return Err(Denial::MalformedToken);
            }
            let t = trim_spaces(rest);
            if t.is_empty() {
                Err(Denial::MalformedToken)
            } else {
                Ok(t)
            }
        })
        .transpose()?;
    let token = single(headers.values(&TOKEN_HEADER))?
        .map(trim_spaces)
        .filter(|t| !t.is_empty());
    Ok(match (bearer, token) {
        (Some(a), Some(b)) if a != b => return Err(Denial::ConflictingCredentials),
        (Some(a), _) => Some(a),
        (None, b) => b,
    })
}

/// A credential from [`credential_bytes`] as text.
pub fn as_token(credential: &[u8]) -> Result<&str, Denial> {
    std::str::from_utf8(credential).map_err(|_| Denial::MalformedToken)
}

/// The one value of a header; repeated identical values count as one.
/// Non-ASCII can never be one of our tokens.
fn single<'h>(mut values: impl Iterator<Item = &'h [u8]>) -> Result<Option<&'h [u8]>, Denial> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|v| v != first) {
        return Err(Denial::ConflictingCredentials);
    }
    if !is_visible_ascii(first) {
        return Err(Denial::MalformedToken);
    }
    Ok(Some(first))
}

/// `v` without the spaces around it.
fn trim_spaces(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ').map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

/// Token kinds that may call upstream APIs through the proxy. Root and
/// tenant-admin tokens are for the control plane only: they carry no
/// account to tell the upstream about.
pub fn kind_may_proxy(kind: TokenKind) -> bool {
    matches!(kind, TokenKind::Api | TokenKind::Session)
}

/// Decides whether `record` may be used now for a request needing `needed`.
/// Order matters for the answer a client gets: a revoked or expired token is
/// told so before anything about its abilities.
pub fn decide<'a>(
    record: &AuthRecord,
    now: i64,
    needed: impl IntoIterator<Item = &'a str>,
) -> Result<(), Denial> {
    if record.revoked_at.is_some() {
        return Err(Denial::TokenRevoked);
    }
    if record.expires_at.is_some_and(|exp| now >= exp) {
        return Err(Denial::TokenExpired);
    }
    if record.tenant_status == Some(Status::Blocked) {
        return Err(Denial::TenantBlocked);
    }
    if record.account_status == Some(Status::Blocked) {
        return Err(Denial::AccountBlocked);
    }
    if !grants_all(&record.abilities, needed) {
        return Err(Denial::AbilityMissing);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fields::tests::headers;
    use http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    #[test]
    fn wildcards() {
        assert!(grants("*", "calls:read"));
        assert!(grants("*", "*"));
        assert!(grants("calls:*", "calls:read"));
        assert!(grants("calls:*", "calls:read:own"));
        assert!(grants("calls:*", "calls:*"));
        assert!(!grants("calls:*", "calls"));
        assert!(!grants("calls:*", "callsx:read"));
        assert!(!grants("calls:*", "*"));
        assert!(!grants("calls:read", "calls:*"));
        assert!(!grants("calls:read", "calls:write"));
        assert!(grants("calls:read", "calls:read"));
    }

    #[test]
    fn ability_syntax() {
        for ok in ["*", "calls:*", "calls:read", "a.b-c_d:e", "a:b:*"] {
            assert!(Ability::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(Ability::parse(""), Err(AbilityError::Length));
        assert_eq!(Ability::parse("a b"), Err(AbilityError::Charset));
        assert_eq!(Ability::parse("ca*lls"), Err(AbilityError::Wildcard));
        assert_eq!(Ability::parse("calls*"), Err(AbilityError::Wildcard));
        assert_eq!(Ability::parse("*:read"), Err(AbilityError::Wildcard));
        assert_eq!(Ability::parse(":x"), Err(AbilityError::Charset));
        assert_eq!(Ability::parse(&"a".repeat(129)), Err(AbilityError::Length));
    }

    #[test]
    fn credential_sources() {
        assert_eq!(extract_credential(&headers(&[])).unwrap(), None);
        assert_eq!(
            extract_credential(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            extract_credential(&headers(&[("authorization", "bEaReR  abc ")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            extract_credential(&headers(&[("token", "abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            extract_credential(&headers(&[
                ("authorization", "Bearer abc"),
                ("token", "abc")
            ]))
            .unwrap(),
            Some("abc")
        );
        assert_eq!(
            extract_credential(&headers(&[
                ("authorization", "Bearer abc"),
                ("token", "xyz")
            ])),
            Err(Denial::ConflictingCredentials)
        );
        assert_eq!(
            extract_credential(&headers(&[("token", "abc"), ("token", "xyz")])),
            Err(Denial::ConflictingCredentials)
        );
        assert_eq!(
            extract_credential(&headers(&[("authorization", "Basic dXNlcg==")])),
            Err(Denial::MalformedToken)
        );
        assert_eq!(
            extract_credential(&headers(&[("authorization", "Bearer ")])),
            Err(Denial::MalformedToken)
        );
    }

    fn ability() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            "[a-c]{1,2}",
            "[a-c]{1,2}:[a-c]{1,2}",
            "[a-c]{1,2}:\\*",
            "[a-c]{1,2}:[a-c]{1,2}:\\*",
        ]
    }

    proptest! {
        /// `*` grants anything; every ability grants itself.
        #[test]
        fn star_and_identity(a in ability()) {
            prop_assert!(grants("*", &a));
            prop_assert!(grants(&a, &a));
        }

        /// Granting is transitive: if a grants b and b grants c, a grants c.
        /// So holding a wildcard never grants less than what it grants.
        #[test]
        fn transitive(a in ability(), b in ability(), c in ability()) {
            if grants(&a, &b) && grants(&b, &c) {
                prop_assert!(grants(&a, &c));
            }
        }

        /// A namespace wildcard grants exactly the abilities inside its
        /// namespace: never a sibling namespace that shares a prefix.
        #[test]
        fn namespace_is_bounded(ns in "[a-c]{1,3}", needed in ability()) {
            let held = format!("{ns}:*");
            prop_assert_eq!(
                grants(&held, &needed),
                needed.starts_with(&format!("{ns}:"))
            );
        }

        /// A credential is read exactly when `HeaderValue::to_str` reads it.
        #[test]
        fn credential_bytes_read_as_to_str_does(v in proptest::collection::vec(any::<u8>(), 1..40)) {
            if let Ok(hv) = HeaderValue::from_bytes(&v) {
                let mut h = HeaderMap::new();
                h.insert(&TOKEN_HEADER, hv.clone());
                match hv.to_str() {
                    Ok(s) => {
                        let want = s.trim_matches(' ');
                        prop_assert_eq!(
                            extract_credential(&h).unwrap(),
                            (!want.is_empty()).then_some(want)
                        );
                    }
                    Err(_) => prop_assert_eq!(extract_credential(&h), Err(Denial::MalformedToken)),
                }
            }
        }

        /// Only `*` grants `*`.
        #[test]
        fn only_star_grants_star(a in ability()) {
            prop_assert_eq!(grants(&a, "*"), a == "*");
        }

        /// Every generated ability is valid syntax.
        #[test]
        fn generated_abilities_parse(a in ability()) {
            prop_assert!(Ability::parse(&a).is_ok());
        }
    }
}
