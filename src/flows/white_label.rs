//! White-label admins mint tokens for their platform users
//! (`shared/seeds/white-label-user-token.txt`).
//!
//! `POST /api/white-label/token` with a tenant-admin token as Bearer, body
//! `user_id` (the account's integer id) or `email` (one is required) and
//! optional `token_name` (default `api-token`). The token never expires.
//! Success is `200 {message, user{id,name,email}, token, token_name}`.
//! Errors follow the platform's (Laravel) shapes: `401 {"message":
//! "Unauthenticated."}`, `403 {"message": ...}`, `404 {"message": "User not
//! found."}`, `422 {"message", "errors": {field: [..]}}`.
//!
//! `GET /api/white-label/users` lists the admin's platform users.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{active_workspace, audit_denied, check};
use crate::api::{json_response, read_object, BodyError, Fields};
use crate::auth::{extract_credential, Ability};
use crate::body::Body;
use crate::error::Denial;
use crate::gateway::Gateway;
use crate::issuer::{Caller, IssueError, MintRequest, MAX_NAME_LEN};
use crate::store::{Account, Status};
use crate::token::TokenKind;

const DEFAULT_TOKEN_NAME: &str = "api-token";

fn message(status: StatusCode, m: &str) -> Response<Body> {
    json_response(status, &json!({"message": m}))
}

fn invalid(field: &str, m: &str) -> Response<Body> {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"message": m, "errors": {field: [m]}}),
    )
}

fn body_error(e: BodyError) -> Response<Body> {
    match e {
        BodyError::TooLarge => message(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large.",
        ),
        _ => message(
            StatusCode::BAD_REQUEST,
            "The request body is not valid JSON.",
        ),
    }
}

fn denied(d: Denial) -> Response<Body> {
    match d {
        Denial::StoreUnavailable => {
            message(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable.")
        }
        Denial::ConflictingCredentials => {
            message(StatusCode::BAD_REQUEST, "Conflicting credentials.")
        }
        _ => message(StatusCode::UNAUTHORIZED, "Unauthenticated."),
    }
}

fn store_down() -> Response<Body> {
    message(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable.")
}

/// The tenant-admin caller, or the response that refuses it.
async fn admin(g: &Gateway, req: &Request<Incoming>) -> Result<Caller, Response<Body>> {
    let token = extract_credential(req.headers()).map_err(denied)?;
    let caller = check(g, token).await.map_err(denied)?;
    if caller.kind != TokenKind::TenantAdmin {
        return Err(message(
            StatusCode::FORBIDDEN,
            "This action is unauthorized: a white-label admin token is required.",
        ));
    }
    Ok(caller)
}

fn user_json(a: &Account) -> Value {
    json!({"id": a.id, "name": a.name, "email": a.email})
}

/// `POST /api/white-label/token`
pub async fn token(g: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not supported for this route. Supported methods: POST.",
        );
    }
    let caller = match admin(g, &req).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = match read_object(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return body_error(e),
    };
    let f = Fields(&body);
    let user_id = match f.int("user_id") {
        Ok(v) => v,
        Err(_) => return invalid("user_id", "The user id field must be an integer."),
    };
    let email = match f.str("email") {
        Ok(v) => v,
        Err(_) => return invalid("email", "The email field must be a string."),
    };
    let token_name = match f.str("token_name") {
        Ok(None) => DEFAULT_TOKEN_NAME.to_string(),
        Ok(Some(n)) if n.trim().is_empty() => DEFAULT_TOKEN_NAME.to_string(),
        Ok(Some(n)) if n.chars().count() > MAX_NAME_LEN => {
            return invalid(
                "token_name",
                "The token name field must not be greater than 255 characters.",
            )
        }
        Ok(Some(n)) if n.chars().any(char::is_control) => {
            return invalid("token_name", "The token name field format is invalid.")
        }
        Ok(Some(n)) => n.to_string(),
        Err(_) => return invalid("token_name", "The token name field must be a string."),
    };
    let Some(tenant) = caller.tenant_id else {
        return message(StatusCode::FORBIDDEN, "This action is unauthorized.");
    };

    let found = match (user_id, email) {
        (Some(id), _) => g.store.get_account(id).await,
        (None, Some(email)) => g
            .store
            .list_accounts(tenant, Some(email))
            .await
            .map(|mut v| v.pop()),
        (None, None) => {
            let m = "The user id field is required when email is not present.";
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"message": m, "errors": {
                    "user_id": [m],
                    "email": ["The email field is required when user id is not present."],
                }}),
            );
        }
    };
    let user = match found {
        Ok(Some(a)) if a.tenant_id == tenant => a,
        Ok(Some(a)) => {
            audit_denied(
                g,
                &caller,
                format!("white-label token for account {} of another tenant", a.id),
            )
            .await;
            return message(StatusCode::NOT_FOUND, "User not found.");
        }
        Ok(None) => return message(StatusCode::NOT_FOUND, "User not found."),
        Err(_) => return store_down(),
    };
    if user.status == Status::Blocked {
        return message(StatusCode::FORBIDDEN, "The user is blocked.");
    }
    let workspace_id = match active_workspace(g, user.id).await {
        Ok(w) => w,
        Err(_) => return store_down(),
    };
    let abilities = match Ability::parse("*") {
        Ok(a) => vec![a],
        Err(_) => return store_down(),
    };
    if caller.check_grant(&abilities).is_err() {
        return message(
            StatusCode::FORBIDDEN,
            "This action is unauthorized: the admin token cannot grant full access.",
        );
    }
    let minted = g
        .issuer
        .mint(
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: Some(tenant),
                account_id: Some(user.id),
                workspace_id,
                name: token_name,
                abilities,
                expires_at: None,
            },
            &caller.actor(),
        )
        .await;
    match minted {
        Ok(m) => json_response(
            StatusCode::OK,
            &json!({
                "message": "Token created successfully.",
                "user": user_json(&user),
                "token": m.secret.expose(),
                "token_name": m.row.name,
            }),
        ),
        Err(IssueError::Invalid(m)) => invalid("token_name", &m),
        Err(e) => {
            tracing::warn!(error = %e, "white-label mint failed");
            store_down()
        }
    }
}

/// `GET /api/white-label/users`
pub async fn users(g: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not supported for this route. Supported methods: GET.",
        );
    }
    let caller = match admin(g, &req).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(tenant) = caller.tenant_id else {
        return message(StatusCode::FORBIDDEN, "This action is unauthorized.");
    };
    match g.store.list_accounts(tenant, None).await {
        Ok(list) => json_response(
            StatusCode::OK,
            &json!({"data": list.iter().map(|a| json!({
                "id": a.id, "name": a.name, "email": a.email, "status": a.status,
            })).collect::<Vec<_>>()}),
        ),
        Err(_) => store_down(),
    }
}
