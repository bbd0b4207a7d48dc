//! Sub-account tokens (`shared/seeds/sub-account-token.txt`).
//!
//! `POST /api/v1/apiClient/token` with the parent account's token (or a
//! tenant-admin token) as Bearer; body `name` and `subAccountId`, both
//! required. `name` is unique among the sub-account's live tokens. Success
//! is the documented `201` envelope; errors are the documented `400`s
//! (missing name, missing sub account, duplicate name), `403` for a
//! sub-account that is not the caller's, and `401 {"code": 401, "message":
//! "Token expired"}` (with no stack trace) for an expired caller token.
//!
//! The minted token gets the caller's abilities (never more) and, when the
//! caller is an api token, never outlives it.
//!
//! `GET /api/v1/apiClient/token?subAccountId=…` lists the sub-account's
//! tokens in the same envelope, masked: the document's "subsequent API calls
//! will only return a masked version of the token".

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{active_workspace, audit_denied, check};
use crate::api::{json_response, read_object, BodyError, Fields};
use crate::auth::{extract_credential, Ability};
use crate::body::Body;
use crate::clock::rfc3339;
use crate::error::Denial;
use crate::gateway::Gateway;
use crate::issuer::{Caller, MintRequest, MAX_NAME_LEN};
use crate::store::{Account, TokenFilter, TokenRow};
use crate::token::TokenKind;

/// `2024-01-15T10:30:00.000Z`, the document's timestamp form.
fn millis(unix: i64) -> String {
    rfc3339(unix).replacen('Z', ".000Z", 1)
}

fn envelope(status: StatusCode, message: &str, data: Value) -> Response<Body> {
    json_response(
        status,
        &json!({
            "app_type": "web", "app_version": "1.0", "maintainence": 0, "new_version": 0,
            "force_update": 0, "invalid_token": 0, "refresh_token": "", "show_message": 0,
            "is_enc": false, "status": true, "message": message, "message_type": "toast",
            "data": data, "error": {},
        }),
    )
}

fn failure(status: StatusCode, message: &str, detail: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "status": false, "message": message, "message_type": "toast",
            "data": {}, "error": {"message": detail},
        }),
    )
}

fn validation(detail: &str) -> Response<Body> {
    failure(StatusCode::BAD_REQUEST, "Validation error", detail)
}

fn forbidden() -> Response<Body> {
    failure(
        StatusCode::FORBIDDEN,
        "Forbidden",
        "Sub account does not belong to you or does not exist",
    )
}

fn unavailable() -> Response<Body> {
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service unavailable",
        "Please retry shortly",
    )
}

fn denied(d: Denial) -> Response<Body> {
    let message = match d {
        Denial::TokenExpired => "Token expired",
        Denial::MissingToken => "Token required",
        Denial::StoreUnavailable => return unavailable(),
        Denial::ConflictingCredentials => return validation("Conflicting credentials"),
        _ => "Invalid token",
    };
    json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"code": 401, "message": message}),
    )
}

fn token_data(t: &TokenRow, sub: i64, token: String) -> Value {
    json!({
        "_id": t.id, "name": t.name, "token": token,
        "status": if t.revoked_at.is_some() { "revoked" } else { "active" },
        "subAccountId": sub.to_string(), "createdAt": millis(t.created_at),
    })
}

/// The sub-account, if the caller may mint for it: an account token of its
/// parent, or a tenant admin of its tenant (and it must be a sub-account).
async fn owned_sub_account(
    g: &Gateway,
    caller: &Caller,
    sub: i64,
) -> Result<Account, Response<Body>> {
    let acc = match g.store.get_account(sub).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(forbidden()),
        Err(_) => return Err(unavailable()),
    };
    let mine = match caller.kind {
        TokenKind::TenantAdmin => {
            caller.tenant_id == Some(acc.tenant_id) && acc.parent_account_id.is_some()
        }
        TokenKind::Api | TokenKind::Session => {
            acc.parent_account_id.is_some() && acc.parent_account_id == caller.account_id
        }
        TokenKind::Root => false,
    } && acc.status == crate::store::Status::Active;
    if !mine {
        audit_denied(
            g,
            caller,
            format!("sub-account token for account {sub} not owned by the caller"),
        )
        .await;
        return Err(forbidden());
    }
    Ok(acc)
}

/// The flow: `POST` mints, `GET` lists masked.
pub async fn handle(g: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let token = match extract_credential(req.headers()) {
        Ok(t) => t,
        Err(d) => return denied(d),
    };
    let caller = match check(g, token).await {
        Ok(c) => c,
        Err(d) => return denied(d),
    };
    match *req.method() {
        Method::POST => create(g, caller, req).await,
        Method::GET => list(g, caller, req).await,
        _ => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "Use POST or GET",
        ),
    }
}

async fn create(g: &Gateway, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    let body = match read_object(req.into_body()).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Validation error",
                "Request body is too large",
            )
        }
        Err(_) => return validation("Request body must be a JSON object"),
    };
    let f = Fields(&body);
    let name = match f.str("name") {
        Ok(Some(n)) if !n.trim().is_empty() => n.to_string(),
        Ok(_) => return validation("API name is required"),
        Err(_) => return validation("API name must be a string"),
    };
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return validation("API name must be at most 255 characters, without control characters");
    }
    let sub = match f.id("subAccountId") {
        Ok(Some(s)) => s,
        Ok(None) => return validation("Sub account ID is required"),
        // An id in no format of ours cannot be anyone's sub-account.
        Err(_) => return forbidden(),
    };
    let acc = match owned_sub_account(g, &caller, sub).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match g.store.list_tokens(TokenFilter::Account(acc.id)).await {
        Ok(rows)
            if rows
                .iter()
                .any(|t| t.name == name && t.revoked_at.is_none()) =>
        {
            return validation("Token name already exists for this sub-account")
        }
        Ok(_) => {}
        Err(_) => return unavailable(),
    }
    let abilities: Vec<Ability> = caller
        .abilities
        .iter()
        .filter_map(|a| Ability::parse(a).ok())
        .collect();
    if abilities.is_empty() {
        return forbidden();
    }
    let workspace_id = match active_workspace(g, acc.id).await {
        Ok(w) => w,
        Err(_) => return unavailable(),
    };
    let minted = g
        .issuer
        .mint(
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: Some(acc.tenant_id),
                account_id: Some(acc.id),
                workspace_id,
                name,
                abilities,
                expires_at: caller.cap_expiry(acc.id, None),
            },
            &caller.actor(),
        )
        .await;
    match minted {
        Ok(m) => envelope(
            StatusCode::CREATED,
            "API token created successfully",
            token_data(&m.row, acc.id, m.secret.expose().to_string()),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "sub-account mint failed");
            unavailable()
        }
    }
}

async fn list(g: &Gateway, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    let sub = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "subAccountId")
            .map(|(_, v)| v.into_owned())
    });
    let Some(sub) = sub else {
        return validation("Sub account ID is required");
    };
    let Ok(sub) = sub.trim().parse::<i64>() else {
        return forbidden();
    };
    let acc = match owned_sub_account(g, &caller, sub).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match g.store.list_tokens(TokenFilter::Account(acc.id)).await {
        Ok(rows) => envelope(
            StatusCode::OK,
            "API tokens fetched successfully",
            Value::Array(
                rows.iter()
                    .map(|t| token_data(t, acc.id, format!("{}…", t.display_prefix)))
                    .collect(),
            ),
        ),
        Err(_) => unavailable(),
    }
}
