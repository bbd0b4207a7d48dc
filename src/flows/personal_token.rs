//! Personal access tokens with abilities
//! (`shared/seeds/personal-access-token.txt`).
//!
//! `POST /api/v1/user/api-tokens` with a session token as Bearer; body
//! `name` (required, at most 255 characters) and `abilities` (optional,
//! default `["*"]`, each within the session's own). `201 {"data": {id, name,
//! abilities, token, created_at}}`; the token is shown once. Errors follow
//! the platform's (Laravel) shapes: `401 {"message": "Unauthenticated."}`,
//! `422 {"message", "errors": {field: [..]}}`, `403 {"message"}` for
//! abilities beyond the session's.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::check;
use crate::api::{json_response, read_object, BodyError, Fields};
use crate::auth::{extract_credential, Ability};
use crate::body::Body;
use crate::clock::rfc3339;
use crate::error::Denial;
use crate::gateway::Gateway;
use crate::issuer::{MintRequest, MAX_NAME_LEN};
use crate::token::TokenKind;

fn message(status: StatusCode, m: &str) -> Response<Body> {
    json_response(status, &json!({"message": m}))
}

fn invalid(field: &str, m: &str) -> Response<Body> {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"message": m, "errors": {field: [m]}}),
    )
}

/// The flow.
pub async fn handle(g: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not supported for this route. Supported methods: POST.",
        );
    }
    let token = match extract_credential(req.headers()) {
        Ok(t) => t,
        Err(Denial::ConflictingCredentials) => {
            return message(StatusCode::BAD_REQUEST, "Conflicting credentials.")
        }
        Err(_) => return message(StatusCode::UNAUTHORIZED, "Unauthenticated."),
    };
    let session = match check(g, token).await {
        Ok(c) if c.kind == TokenKind::Session => c,
        Err(Denial::StoreUnavailable) => {
            return message(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable.")
        }
        _ => return message(StatusCode::UNAUTHORIZED, "Unauthenticated."),
    };
    let body = match read_object(req.into_body()).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return message(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is too large.",
            )
        }
        Err(_) => {
            return message(
                StatusCode::BAD_REQUEST,
                "The request body is not valid JSON.",
            )
        }
    };
    let f = Fields(&body);
    let name = match f.str("name") {
        Ok(Some(n)) if !n.trim().is_empty() => n.to_string(),
        Ok(_) => return invalid("name", "The name field is required."),
        Err(_) => return invalid("name", "The name field must be a string."),
    };
    if name.chars().count() > MAX_NAME_LEN {
        return invalid(
            "name",
            "The name field must not be greater than 255 characters.",
        );
    }
    if name.chars().any(char::is_control) {
        return invalid("name", "The name field format is invalid.");
    }
    let wanted = match f.str_list("abilities") {
        Ok(None) => vec!["*".to_string()],
        Ok(Some(list)) if list.is_empty() => {
            return invalid(
                "abilities",
                "The abilities field must have at least 1 item.",
            )
        }
        Ok(Some(list)) => list,
        Err(_) => {
            return invalid(
                "abilities",
                "The abilities field must be an array of strings.",
            )
        }
    };
    let mut abilities = Vec::with_capacity(wanted.len());
    for (i, a) in wanted.iter().enumerate() {
        match Ability::parse(a) {
            Ok(a) => abilities.push(a),
            Err(_) => {
                return invalid(
                    &format!("abilities.{i}"),
                    &format!("The abilities.{i} field format is invalid."),
                )
            }
        }
    }
    if session.check_grant(&abilities).is_err() {
        return message(
            StatusCode::FORBIDDEN,
            "The requested abilities exceed those of the session.",
        );
    }
    let minted = g
        .issuer
        .mint(
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: session.tenant_id,
                account_id: session.account_id,
                workspace_id: session.workspace_id,
                name,
                abilities,
                expires_at: None,
            },
            &session.actor(),
        )
        .await;
    match minted {
        Ok(m) => json_response(
            StatusCode::CREATED,
            &json!({"data": {
                "id": m.row.id, "name": m.row.name, "abilities": m.row.abilities,
                "token": m.secret.expose(), "created_at": rfc3339(m.row.created_at),
            }}),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "personal access token mint failed");
            message(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable.")
        }
    }
}
