//! Token by customer ID (`shared/seeds/customer-id-token.txt`).
//!
//! `POST /api/v1/global/users/gettokenbycustomerid` with a tenant-admin token
//! in the `token` header, as Bearer, or bare in `Authorization` (no scheme),
//! as the document's cURL example sends it (`-H "Authorization: <api_key>"`).
//! The bare form is accepted on this flow only, and only for a token of our
//! format (checksum included): the proxy path and the other flows keep
//! requiring the `Bearer` scheme.
//! Body: `customer_id` (aliases `customerid`, `customer_salt`), optional
//! `name`, optional `expiration_days` (a positive integer). Each call mints a
//! new token; earlier ones stay valid. Success: `200 {message, customerid,
//! customer_api_key, name, expires}` with `expires` a Unix timestamp or null.
//! Errors use the platform's `{"error": true, "message": CODE}`:
//! `CUSTOMER_ID_NOT_FOUND` (unknown, blocked or another tenant's customer),
//! `WORKSPACE_NOT_FOUND`, `INVALID_EXPIRATION_DAYS`.

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{active_workspace, audit_denied, check};
use crate::api::{integer, json_response, read_object, BodyError, Fields};
use crate::auth::{extract_credential, Ability, TOKEN_HEADER};
use crate::body::Body;
use crate::error::Denial;
use crate::gateway::Gateway;
use crate::issuer::{MintRequest, MAX_NAME_LEN};
use crate::store::Status;
use crate::token::{Checked, TokenFormat, TokenKind};

/// Largest `expiration_days` (ten years).
const MAX_EXPIRATION_DAYS: i64 = 3_650;
/// Name stored for a token minted without one (the response says `null`).
const UNNAMED: &str = "customer-api-key";

fn error(status: StatusCode, code: &str) -> Response<Body> {
    json_response(status, &json!({"error": true, "message": code}))
}

fn denied(d: Denial) -> Response<Body> {
    match d {
        Denial::MissingToken => error(StatusCode::UNAUTHORIZED, "TOKEN_REQUIRED"),
        Denial::TokenExpired => error(StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED"),
        Denial::StoreUnavailable => error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
        Denial::ConflictingCredentials => error(StatusCode::BAD_REQUEST, "CONFLICTING_CREDENTIALS"),
        _ => error(StatusCode::UNAUTHORIZED, "INVALID_TOKEN"),
    }
}

/// `expiration_days`: absent or null is "never"; anything but a whole
/// number from 1 to 3650 is `INVALID_EXPIRATION_DAYS`.
fn expiration_days(v: Option<&Value>) -> Result<Option<i64>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match integer(v) {
            Some(d) if (1..=MAX_EXPIRATION_DAYS).contains(&d) => Ok(Some(d)),
            _ => Err(()),
        },
    }
}

/// The caller's credential: the `token` header or `Authorization: Bearer`
/// as everywhere, or else a token of our format bare in `Authorization`
/// (the document's example). A `token` header beside a bare token must
/// carry the same one.
fn credential<'h>(format: &TokenFormat, headers: &'h HeaderMap) -> Result<Option<&'h str>, Denial> {
    let refused = match extract_credential(headers) {
        Ok(t) => return Ok(t),
        Err(Denial::MalformedToken) => Denial::MalformedToken,
        Err(d) => return Err(d),
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Err(refused);
    };
    if values.any(|v| v != first) {
        return Err(Denial::ConflictingCredentials);
    }
    let Ok(bare) = first.to_str().map(|v| v.trim_matches(' ')) else {
        return Err(refused);
    };
    if !matches!(format.check(bare), Ok(Checked::Native(_))) {
        return Err(refused);
    }
    if headers
        .get_all(&TOKEN_HEADER)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != bare.as_bytes())
    {
        return Err(Denial::ConflictingCredentials);
    }
    Ok(Some(bare))
}

/// The flow.
pub async fn handle(g: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    }
    let token = match credential(&g.config.tokens, req.headers()) {
        Ok(t) => t,
        Err(d) => return denied(d),
    };
    let caller = match check(g, token).await {
        Ok(c) => c,
        Err(d) => return denied(d),
    };
    let (TokenKind::TenantAdmin, Some(tenant)) = (caller.kind, caller.tenant_id) else {
        return error(StatusCode::FORBIDDEN, "FORBIDDEN");
    };
    let body = match read_object(req.into_body()).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
    };
    let f = Fields(&body);
    let customer_id = ["customer_id", "customerid", "customer_salt"]
        .iter()
        .map(|k| f.str(k))
        .find(|v| !matches!(v, Ok(None)));
    let customer_id = match customer_id {
        None => return error(StatusCode::BAD_REQUEST, "CUSTOMER_ID_REQUIRED"),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "INVALID_CUSTOMER_ID"),
        Some(Ok(Some(c))) => c.trim().to_string(),
        Some(Ok(None)) => return error(StatusCode::BAD_REQUEST, "CUSTOMER_ID_REQUIRED"),
    };
    let name = match f.str("name") {
        Ok(Some(n)) if n.chars().count() > MAX_NAME_LEN || n.chars().any(char::is_control) => {
            return error(StatusCode::BAD_REQUEST, "INVALID_NAME")
        }
        Ok(n) => n.filter(|n| !n.trim().is_empty()).map(str::to_string),
        Err(_) => return error(StatusCode::BAD_REQUEST, "INVALID_NAME"),
    };
    let days = match expiration_days(body.get("expiration_days")) {
        Ok(d) => d,
        Err(()) => return error(StatusCode::BAD_REQUEST, "INVALID_EXPIRATION_DAYS"),
    };

    let account = match g.store.find_account_by_customer_id(&customer_id).await {
        Ok(Some(a)) if a.tenant_id == tenant && a.status == Status::Active => a,
        Ok(Some(a)) if a.tenant_id != tenant => {
            audit_denied(
                g,
                &caller,
                format!("customer id of account {} of another tenant", a.id),
            )
            .await;
            return error(StatusCode::NOT_FOUND, "CUSTOMER_ID_NOT_FOUND");
        }
        Ok(_) => return error(StatusCode::NOT_FOUND, "CUSTOMER_ID_NOT_FOUND"),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    };
    let workspace_id = match active_workspace(g, account.id).await {
        Ok(Some(w)) => w,
        Ok(None) => return error(StatusCode::NOT_FOUND, "WORKSPACE_NOT_FOUND"),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    };
    let Ok(all) = Ability::parse("*") else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR");
    };
    if caller.check_grant(std::slice::from_ref(&all)).is_err() {
        return error(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let minted = g
        .issuer
        .mint(
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: Some(tenant),
                account_id: Some(account.id),
                workspace_id: Some(workspace_id),
                name: name.clone().unwrap_or_else(|| UNNAMED.into()),
                abilities: vec![all],
                expires_at: days.map(|d| g.clock().now() + d * 86_400),
            },
            &caller.actor(),
        )
        .await;
    match minted {
        Ok(m) => json_response(
            StatusCode::OK,
            &json!({
                "message": "API token generated successfully",
                "customerid": customer_id,
                "customer_api_key": m.secret.expose(),
                "name": name,
                "expires": m.row.expires_at,
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "customer-id mint failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
        }
    }
}
