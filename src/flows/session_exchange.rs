//! A login session exchanged for a long-lived API token
//! (`shared/seeds/session-exchange-token.txt`).
//!
//! `POST /api/v1/global/generate-token` with the session token in the
//! `token` header (the document allows no other place). The new token never
//! expires and keeps the session's account, tenant, workspace and
//! abilities. `200 {"message": "API token generated successfully", "token"}`;
//! errors `{"error": true, "message": CODE}`: `LOGIN_TOKEN_REQUIRED` (400),
//! `INVALID_LOGIN_TOKEN` (401: unknown, revoked, not a session, or its
//! account blocked) and `SESSIONEXPIRED` (401).
//!
//! `POST /api/v1/global/verify`, the document's next step, answers for the
//! token in the `token` header.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::check;
use crate::api::{json_response, read_object, BodyError};
use crate::auth::{Ability, TOKEN_HEADER};
use crate::body::Body;
use crate::error::Denial;
use crate::gateway::Gateway;
use crate::issuer::MintRequest;
use crate::token::TokenKind;

fn error(status: StatusCode, code: &str) -> Response<Body> {
    json_response(status, &json!({"error": true, "message": code}))
}

/// The `token` header, trimmed; `Err` for a value that is not text.
fn token_header(req: &Request<Incoming>) -> Result<Option<String>, ()> {
    match req.headers().get(&TOKEN_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
            .map_err(|_| ()),
    }
}

/// Reads (and so validates) the optional body: `{}` or nothing.
async fn check_body(req: Request<Incoming>) -> Option<Response<Body>> {
    match read_object(req.into_body()).await {
        Ok(_) => None,
        Err(BodyError::TooLarge) => Some(error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")),
        Err(_) => Some(error(StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY")),
    }
}

/// `POST /api/v1/global/generate-token`
pub async fn generate(g: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    }
    let token = match token_header(&req) {
        Ok(Some(t)) => t,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "LOGIN_TOKEN_REQUIRED"),
        Err(()) => return error(StatusCode::UNAUTHORIZED, "INVALID_LOGIN_TOKEN"),
    };
    let session = match check(g, Some(&token)).await {
        Ok(c) if c.kind == TokenKind::Session => c,
        Ok(_) => return error(StatusCode::UNAUTHORIZED, "INVALID_LOGIN_TOKEN"),
        Err(Denial::TokenExpired) => return error(StatusCode::UNAUTHORIZED, "SESSIONEXPIRED"),
        Err(Denial::StoreUnavailable) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
        }
        Err(_) => return error(StatusCode::UNAUTHORIZED, "INVALID_LOGIN_TOKEN"),
    };
    if let Some(r) = check_body(req).await {
        return r;
    }
    let abilities: Vec<Ability> = session
        .abilities
        .iter()
        .filter_map(|a| Ability::parse(a).ok())
        .collect();
    let minted = g
        .issuer
        .mint(
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: session.tenant_id,
                account_id: session.account_id,
                workspace_id: session.workspace_id,
                name: "generated-token".into(),
                abilities,
                expires_at: None,
            },
            &session.actor(),
        )
        .await;
    match minted {
        Ok(m) => json_response(
            StatusCode::OK,
            &json!({"message": "API token generated successfully", "token": m.secret.expose()}),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "session exchange mint failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
        }
    }
}

/// `POST /api/v1/global/verify`
pub async fn verify(g: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    }
    let token = match token_header(&req) {
        Ok(Some(t)) => t,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "TOKEN_REQUIRED"),
        Err(()) => return error(StatusCode::UNAUTHORIZED, "INVALID_TOKEN"),
    };
    let caller = match check(g, Some(&token)).await {
        Ok(c) if matches!(c.kind, TokenKind::Api | TokenKind::Session) => c,
        Ok(_) => return error(StatusCode::UNAUTHORIZED, "INVALID_TOKEN"),
        Err(Denial::TokenExpired) => return error(StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED"),
        Err(Denial::StoreUnavailable) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
        }
        Err(_) => return error(StatusCode::UNAUTHORIZED, "INVALID_TOKEN"),
    };
    if let Some(r) = check_body(req).await {
        return r;
    }
    json_response(
        StatusCode::OK,
        &json!({
            "error": false,
            "message": "TOKEN_VERIFIED",
            "data": {
                "token_id": caller.token_id, "kind": caller.kind,
                "tenant_id": caller.tenant_id, "account_id": caller.account_id,
                "workspace_id": caller.workspace_id, "abilities": caller.abilities,
                "expires": caller.expires_at,
            },
        }),
    )
}
