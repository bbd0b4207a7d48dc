//! What the control plane shares: the native admin API and the seed token
//! flows alike read JSON bodies through here (size-limited, type-checked
//! field by field), and the native API maps its errors to responses in one
//! place, [`ApiError::into_response`]. The seed flows keep their own
//! documented error shapes (see `crate::flows`).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use crate::auth::Ability;
use crate::body::{full, Body};
use crate::clock::rfc3339;
use crate::error::Denial;
use crate::issuer::IssueError;
use crate::store::{Account, AuditEvent, StoreError, Tenant, TokenRow, Workspace};

/// Largest request body the control plane reads. Token requests are tiny;
/// anything bigger is refused with 413 before it is parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A request body that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over [`MAX_BODY_BYTES`].
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// Not JSON.
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    /// JSON, but not an object.
    #[error("request body must be a JSON object")]
    NotObject,
    /// The connection failed while reading.
    #[error("request body could not be read")]
    Read,
}

/// Reads a JSON object body; an empty body reads as `{}`.
pub async fn read_object(body: Incoming) -> Result<Map<String, Value>, BodyError> {
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(BodyError::TooLarge)
        }
        Err(_) => return Err(BodyError::Read),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(BodyError::NotObject),
        Err(e) => Err(BodyError::Malformed(e.to_string())),
    }
}

/// A field of the wrong type.
#[derive(Debug, thiserror::Error)]
#[error("{key} must be {expected}")]
pub struct FieldError {
    /// The field.
    pub key: String,
    /// What it must be.
    pub expected: &'static str,
}

/// Typed access to a JSON object's fields: absent or `null` is `None`,
/// present with another type is a [`FieldError`].
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn err(key: &str, expected: &'static str) -> FieldError {
        FieldError {
            key: key.into(),
            expected,
        }
    }

    /// Whether the key is present at all (even as `null`).
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// A string field. Control characters (NUL above all, which PostgreSQL
    /// refuses in text) are refused here, for every field of every endpoint.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                Err(Self::err(key, "text without control characters"))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Self::err(key, "a string")),
        }
    }

    /// An integer field (see [`integer`]).
    pub fn int(&self, key: &str) -> Result<Option<i64>, FieldError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => integer(v)
                .map(Some)
                .ok_or_else(|| Self::err(key, "an integer")),
        }
    }

    /// An id given as an integer or a string of digits.
    pub fn id(&self, key: &str) -> Result<Option<i64>, FieldError> {
        match self.0.get(key) {
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Self::err(key, "an id")),
            _ => self.int(key).map_err(|_| Self::err(key, "an id")),
        }
    }

    /// A list of strings.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>, FieldError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| Self::err(key, "a list of strings")),
            Some(_) => Err(Self::err(key, "a list of strings")),
        }
    }
}

/// A JSON integer that fits an `i64`. `7.0` counts: JSON has one number
/// type, and JSON Schema (so the OpenAPI document, and clients generated
/// from it) calls a number with no fraction an integer.
pub fn integer(v: &Value) -> Option<i64> {
    let Value::Number(n) = v else {
        return None;
    };
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
            .map(|f| f as i64)
    })
}

/// Parses a list of ability strings; `None` gives `default`.
pub fn abilities(list: Option<Vec<String>>, default: &[&str]) -> Result<Vec<Ability>, IssueError> {
    let list = list.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
    if list.is_empty() {
        return Err(IssueError::Invalid("abilities must not be empty".into()));
    }
    list.iter()
        .map(|a| Ability::parse(a).map_err(|e| IssueError::Invalid(format!("ability {a:?}: {e}"))))
        .collect()
}

/// Errors of the native admin API. One mapping to status and code, below.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable token (carries the request-path reason).
    #[error("unauthorized")]
    Unauthorized(Denial),
    /// The caller's kind may not do this at all.
    #[error("{0}")]
    Forbidden(String),
    /// Not found, or another tenant's (answered the same way).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A bad request; the message says which field and why.
    #[error("{0}")]
    Invalid(String),
    /// A uniqueness rule.
    #[error("{0}")]
    Conflict(String),
    /// Asked for abilities the caller lacks.
    #[error("{0}")]
    Escalation(String),
    /// Body over the limit.
    #[error("request body is too large")]
    TooLarge,
    /// The store cannot be reached.
    #[error("the store is unavailable")]
    Unavailable,
    /// A bug or an unexpected store error; detail is logged, not sent.
    #[error("internal error")]
    Internal,
    /// No such endpoint.
    #[error("no such endpoint")]
    EndpointNotFound,
    /// The endpoint exists, not with this method; carries the `Allow`
    /// value (`GET, HEAD`).
    #[error("method not allowed; this endpoint allows {0}")]
    MethodNotAllowed(String),
}

impl ApiError {
    /// Status and code, the one mapping.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(d) => (d.status(), d.code()),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ApiError::Escalation(_) => (StatusCode::FORBIDDEN, "ABILITY_ESCALATION"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            ApiError::EndpointNotFound => (StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
        }
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Body> {
        if let ApiError::Unauthorized(d) = self {
            return crate::body::denial_response(d, None);
        }
        let (status, code) = self.status_and_code();
        let mut r = json_response(
            status,
            &json!({"error": true, "code": code, "message": self.to_string()}),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::MethodNotAllowed(allow) = &self {
            // RFC 9110 15.5.6: a 405 lists the methods the target allows.
            if let Ok(v) = HeaderValue::from_str(allow) {
                r.headers_mut().insert(http::header::ALLOW, v);
            }
        }
        r
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Invalid(m) => ApiError::Invalid(m),
            IssueError::NotFound(what) => ApiError::NotFound(what),
            IssueError::Conflict(m) => ApiError::Conflict(m),
            IssueError::Escalation(m) => ApiError::Escalation(m),
            IssueError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                ApiError::Unavailable
            }
            StoreError::Conflict(m) => {
                tracing::warn!(error = %m, "store conflict");
                ApiError::Conflict("that would duplicate an existing record".into())
            }
            StoreError::NotFound(m) => {
                tracing::warn!(error = %m, "store reference missing");
                ApiError::NotFound("referenced object")
            }
            StoreError::Other(m) => {
                tracing::error!(error = %m, "store error");
                ApiError::Internal
            }
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => ApiError::TooLarge,
            other => ApiError::Invalid(other.to_string()),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

fn ts(t: Option<i64>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// A tenant in the native API.
pub fn tenant_json(t: &Tenant) -> Value {
    json!({"id": t.id, "name": t.name, "status": t.status, "created_at": rfc3339(t.created_at)})
}

/// An account in the native API, with its default workspace.
pub fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id, "tenant_id": a.tenant_id, "email": a.email, "name": a.name,
        "customer_id": a.customer_id, "parent_account_id": a.parent_account_id,
        "external_id": a.external_id, "status": a.status, "workspace_id": a.workspace_id,
        "created_at": rfc3339(a.created_at),
    })
}

/// A workspace in the native API.
pub fn workspace_json(w: &Workspace) -> Value {
    json!({"id": w.id, "account_id": w.account_id, "name": w.name, "status": w.status,
           "created_at": rfc3339(w.created_at)})
}

/// A token, masked: never the secret, never the hash.
pub fn masked_token_json(t: &TokenRow) -> Value {
    json!({
        "id": t.id, "kind": t.kind, "name": t.name, "abilities": t.abilities,
        "token": format!("{}…", t.display_prefix),
        "tenant_id": t.tenant_id, "account_id": t.account_id, "workspace_id": t.workspace_id,
        "created_at": rfc3339(t.created_at), "expires_at": ts(t.expires_at),
        "revoked_at": ts(t.revoked_at), "last_used_at": ts(t.last_used_at),
        "created_by": t.created_by,
    })
}

/// An audit event in the native API.
pub fn audit_json(e: &AuditEvent) -> Value {
    json!({
        "id": e.id, "at": rfc3339(e.at), "action": e.action,
        "actor_token_id": e.actor_token_id, "tenant_id": e.tenant_id,
        "target_token_id": e.target_token_id, "outcome": e.outcome, "detail": e.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_whole_numbers_however_written() {
        for (v, want) in [
            (json!(7), Some(7)),
            (json!(-7), Some(-7)),
            (json!(7.0), Some(7)),
            (json!(-5216878227765219.0), Some(-5_216_878_227_765_219)),
            (json!(7.5), None),
            (json!(1e300), None),
            (json!(u64::MAX), None),
            (json!("7"), None),
            (json!(null), None),
        ] {
            assert_eq!(integer(&v), want, "{v}");
        }
    }
}
