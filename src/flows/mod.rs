//! The five documented token-issuing APIs, reproduced on the public
//! listener at the paths of `[token_api]` (defaults: the documented ones).
//!
//! Each flow is a thin adapter over [`crate::issuer::Issuer`] and answers in
//! its original document's shapes: request fields and aliases, defaults,
//! status codes, success and error bodies (`shared/seeds/`). What they share
//! lives here: matching a path to a flow, authenticating the caller, and the
//! audit of cross-tenant attempts.
//!
//! | flow | module | caller |
//! |---|---|---|
//! | white-label admin mints for a platform user | [`white_label`] | tenant admin |
//! | token by customer ID | [`customer_id`] | tenant admin (`token:` header) |
//! | sub-account token | [`sub_account`] | the parent's account token, or tenant admin |
//! | session exchanged for an API token | [`session_exchange`] | session (`token:` header) |
//! | personal access token with abilities | [`personal_token`] | session (Bearer) |

pub mod customer_id;
pub mod personal_token;
pub mod session_exchange;
pub mod sub_account;
pub mod white_label;

use http::header::{HeaderValue, ALLOW};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::decide;
use crate::body::Body;
use crate::config::TokenApiPaths;
use crate::error::Denial;
use crate::gateway::Gateway;
use crate::issuer::Caller;
use crate::store::{NewAuditEvent, Status};

/// Which flow a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// `POST /api/white-label/token`
    WhiteLabelToken,
    /// `GET /api/white-label/users`
    WhiteLabelUsers,
    /// `POST /api/v1/global/users/gettokenbycustomerid`
    CustomerIdToken,
    /// `POST|GET /api/v1/apiClient/token`
    SubAccountToken,
    /// `POST /api/v1/global/generate-token`
    SessionExchange,
    /// `POST /api/v1/global/verify`
    SessionVerify,
    /// `POST /api/v1/user/api-tokens`
    PersonalAccessToken,
}

/// The flow mounted at exactly this (normalised) path, if any.
pub fn match_flow(paths: &TokenApiPaths, path: &str) -> Option<Flow> {
    let is = |p: &Option<String>| p.as_deref() == Some(path);
    if is(&paths.white_label_token) {
        Some(Flow::WhiteLabelToken)
    } else if is(&paths.white_label_users) {
        Some(Flow::WhiteLabelUsers)
    } else if is(&paths.customer_id_token) {
        Some(Flow::CustomerIdToken)
    } else if is(&paths.sub_account_token) {
        Some(Flow::SubAccountToken)
    } else if is(&paths.session_exchange) {
        Some(Flow::SessionExchange)
    } else if is(&paths.session_verify) {
        Some(Flow::SessionVerify)
    } else if is(&paths.personal_access_token) {
        Some(Flow::PersonalAccessToken)
    } else {
        None
    }
}

impl Flow {
    /// The methods the flow is served with, as an `Allow` value.
    pub fn allow(self) -> &'static str {
        match self {
            Flow::WhiteLabelUsers => "GET",
            Flow::SubAccountToken => "GET, POST",
            Flow::WhiteLabelToken
            | Flow::CustomerIdToken
            | Flow::SessionExchange
            | Flow::SessionVerify
            | Flow::PersonalAccessToken => "POST",
        }
    }
}

/// Serves a flow. Each flow words its own 405 in its document's shape;
/// the `Allow` header every 405 must carry (RFC 9110 15.5.6) is added
/// here, once for all of them.
pub async fn handle(g: &Gateway, flow: Flow, req: Request<Incoming>) -> Response<Body> {
    let mut resp = serve(g, flow, req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(flow.allow()));
    }
    resp
}

async fn serve(g: &Gateway, flow: Flow, req: Request<Incoming>) -> Response<Body> {
    match flow {
        Flow::WhiteLabelToken => white_label::token(g, req).await,
        Flow::WhiteLabelUsers => white_label::users(g, req).await,
        Flow::CustomerIdToken => customer_id::handle(g, req).await,
        Flow::SubAccountToken => sub_account::handle(g, req).await,
        Flow::SessionExchange => session_exchange::generate(g, req).await,
        Flow::SessionVerify => session_exchange::verify(g, req).await,
        Flow::PersonalAccessToken => personal_token::handle(g, req).await,
    }
}

/// A token that is valid now: known, not revoked or expired, its tenant
/// and account active. The denial says why not, for each flow to word.
pub async fn check(g: &Gateway, token: Option<&str>) -> Result<Caller, Denial> {
    let token = token.ok_or(Denial::MissingToken)?;
    let entry = g.lookup(token).await?;
    decide(&entry.record, g.clock().now(), std::iter::empty())?;
    Ok(Caller::from_record(&entry.record))
}

/// Audits an attempt on another tenant's object (answered as "not found").
pub async fn audit_denied(g: &Gateway, caller: &Caller, detail: String) {
    let event = NewAuditEvent {
        at: g.clock().now(),
        action: "access.denied".into(),
        actor_token_id: Some(caller.token_id.clone()),
        tenant_id: caller.tenant_id,
        target_token_id: None,
        outcome: "denied".into(),
        detail: Some(detail),
    };
    if let Err(e) = g.store.append_audit(&event).await {
        tracing::warn!(error = %e, "could not audit a denied attempt");
    }
}

/// The first active workspace of an account.
pub async fn active_workspace(
    g: &Gateway,
    account_id: i64,
) -> Result<Option<i64>, crate::store::StoreError> {
    Ok(g.store
        .list_workspaces(account_id)
        .await?
        .into_iter()
        .find(|w| w.status == Status::Active)
        .map(|w| w.id))
}
