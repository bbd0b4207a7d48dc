//! The admin listener: the operator's native API, health, readiness,
//! metrics and the OpenAPI document.
//!
//! Every `/v1/*` endpoint needs a root token (everything) or a tenant-admin
//! token (its own tenant only). Another tenant's object answers exactly like
//! a missing one (404), and the attempt is audited. [`ROUTES`] lists every
//! endpoint; the router below serves exactly those, and a test holds
//! `openapi.json` to the same list.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use crate::api::{
    abilities, account_json, audit_json, json_response, limits_change, masked_token_json,
    read_object, tenant_json, workspace_json, ApiError, Fields,
};
use crate::auth::{decide, Ability};
use crate::body::{full, Body};
use crate::clock::rfc3339;
use crate::error::Denial;
use crate::gateway::Gateway;
use crate::issuer::{validate_name, Caller, MintRequest};
use crate::store::{Account, NewAccount, NewAuditEvent, Status, TokenFilter, TokenRow};
use crate::token::TokenKind;

/// Bound on the readiness probe's store round-trip.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default session lifetime, seconds.
pub const SESSION_TTL_DEFAULT: i64 = 86_400;
/// Largest session lifetime (`ttl_seconds`), seconds: a year.
pub const SESSION_TTL_MAX: i64 = 365 * 86_400;
/// Largest `expires_in_days` of an api token: ten years.
pub const MAX_EXPIRES_DAYS: i64 = 3_650;
/// Default audit page.
pub const AUDIT_LIMIT_DEFAULT: u32 = 100;
/// Largest audit page (`limit`).
pub const AUDIT_LIMIT_MAX: u32 = 1_000;

/// The OpenAPI document of the native API and the seed flows.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every endpoint of the admin listener: method and path template.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants"),
    ("PATCH", "/v1/tenants/{id}"),
    ("POST", "/v1/tenants/{id}/admin-tokens"),
    ("POST", "/v1/tenants/{id}/accounts"),
    ("GET", "/v1/tenants/{id}/accounts"),
    ("PATCH", "/v1/accounts/{id}"),
    ("POST", "/v1/accounts/{id}/workspaces"),
    ("POST", "/v1/accounts/{id}/sessions"),
    ("POST", "/v1/accounts/{id}/tokens"),
    ("GET", "/v1/accounts/{id}/tokens"),
    ("DELETE", "/v1/tokens/{id}"),
    ("PATCH", "/v1/tokens/{id}"),
    ("GET", "/v1/tokens/{id}/usage"),
    ("POST", "/v1/tokens/verify"),
    ("GET", "/v1/audit"),
];

/// Handles one request on the admin listener. `HEAD` is answered wherever
/// `GET` is, with the same status and headers (`Content-Length` included)
/// and no body; hyper would drop the body of an HTTP/1.1 answer to `HEAD`
/// by itself, but not an h2 one, so it is dropped here for both.
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let resp = match route(gateway, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if head {
        without_body(resp)
    } else {
        resp
    }
}

/// The same answer with its body's length stated and the body dropped.
fn without_body(mut resp: Response<Body>) -> Response<Body> {
    if let Some(len) = http_body::Body::size_hint(resp.body()).exact() {
        resp.headers_mut()
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    *resp.body_mut() = full(Bytes::new());
    resp
}

/// The endpoints (method, template) that serve a path: of the templates
/// that match it, the most specific, as routers do: a literal segment wins
/// over a `{param}`, so `/v1/tokens/verify` is the verify endpoint, never
/// the token whose id is `verify`.
fn endpoints(segs: &[&str]) -> Vec<(&'static str, &'static str)> {
    let literals = |t: &str| {
        t.split('/')
            .filter(|s| !s.is_empty() && !s.starts_with('{'))
            .count()
    };
    let matching: Vec<(&str, &str)> = ROUTES
        .iter()
        .copied()
        .filter(|(_, t)| template_matches(t, segs))
        .collect();
    let best = matching.iter().map(|(_, t)| literals(t)).max();
    matching
        .into_iter()
        .filter(|(_, t)| Some(literals(t)) == best)
        .collect()
}

/// The methods a path is served with, as an `Allow` value (`GET, HEAD`),
/// or `None` when no endpoint has this path.
pub fn allowed_methods(segs: &[&str]) -> Option<String> {
    let mut methods: Vec<&str> = endpoints(segs).into_iter().map(|(m, _)| m).collect();
    if methods.is_empty() {
        return None;
    }
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods.sort_unstable();
    methods.dedup();
    Some(methods.join(", "))
}

fn created(body: Value) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::CREATED, &body))
}

fn ok(body: Value) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &body))
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn route(g: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // HEAD is served as GET; `handle` drops the body.
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let allow = allowed_methods(&segs).ok_or(ApiError::EndpointNotFound)?;
    if !endpoints(&segs).iter().any(|(m, _)| *m == method.as_str()) {
        return Err(ApiError::MethodNotAllowed(allow));
    }

    // Unauthenticated operator endpoints.
    match (&method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => return ok(json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => {
            return match tokio::time::timeout(READY_TIMEOUT, g.store.ping()).await {
                Ok(Ok(())) => ok(json!({"status": "ready"})),
                _ => Ok(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "unavailable", "reason": "store unreachable"}),
                )),
            };
        }
        (&Method::GET, ["metrics"]) => {
            let mut r = Response::new(full(g.metrics.render(g.cache.entry_count())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Ok(r);
        }
        (&Method::GET, ["openapi.json"]) => {
            let mut r = Response::new(full(OPENAPI));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok(r);
        }
        _ => {}
    }

    let caller = g
        .caller(req.headers())
        .await
        .map_err(ApiError::Unauthorized)?;
    if !matches!(caller.kind, TokenKind::Root | TokenKind::TenantAdmin) {
        return Err(ApiError::Forbidden(
            "the native API needs a root or tenant-admin token".into(),
        ));
    }
    let email = query_param(&req, "email");
    if email
        .as_deref()
        .is_some_and(|e| e.chars().any(char::is_control))
    {
        return Err(ApiError::Invalid(
            "email must be text without control characters".into(),
        ));
    }
    let limit = query_param(&req, "limit");
    let owned: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
    let segs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let body = match method {
        Method::POST | Method::PATCH => read_object(req.into_body()).await?,
        _ => Map::new(),
    };
    let f = Fields(&body);
    let id = |s: &str, what: &'static str| s.parse::<i64>().map_err(|_| ApiError::NotFound(what));

    match (&method, segs.as_slice()) {
        (&Method::POST, ["v1", "tenants"]) => create_tenant(g, &caller, f).await,
        (&Method::GET, ["v1", "tenants"]) => {
            require_root(&caller)?;
            let list: Vec<Value> = g
                .store
                .list_tenants()
                .await?
                .iter()
                .map(tenant_json)
                .collect();
            ok(json!({"data": list}))
        }
        (&Method::PATCH, ["v1", "tenants", t]) => {
            require_root(&caller)?;
            let status = status_field(f)?;
            let t = g
                .issuer
                .set_tenant_status(id(t, "tenant")?, status, &caller.actor())
                .await?;
            ok(tenant_json(&t))
        }
        (&Method::POST, ["v1", "tenants", t, "admin-tokens"]) => {
            let tenant = reach_tenant(g, &caller, id(t, "tenant")?).await?;
            let name = required_name(f, "name")?;
            let wanted = vec![ability("*")?];
            caller.check_grant(&wanted)?;
            let m = g
                .issuer
                .mint(
                    MintRequest {
                        kind: TokenKind::TenantAdmin,
                        tenant_id: Some(tenant),
                        account_id: None,
                        workspace_id: None,
                        name,
                        abilities: wanted,
                        expires_at: None,
                    },
                    &caller.actor(),
                )
                .await?;
            created(json!({
                "id": m.row.id, "name": m.row.name, "token": m.secret.expose(),
                "created_at": rfc3339(m.row.created_at),
            }))
        }
        (&Method::POST, ["v1", "tenants", t, "accounts"]) => {
            let tenant = reach_tenant(g, &caller, id(t, "tenant")?).await?;
            create_account(g, &caller, tenant, f).await
        }
        (&Method::GET, ["v1", "tenants", t, "accounts"]) => {
            let tenant = reach_tenant(g, &caller, id(t, "tenant")?).await?;
            let list: Vec<Value> = g
                .store
                .list_accounts(tenant, email.as_deref())
                .await?
                .iter()
                .map(account_json)
                .collect();
            ok(json!({"data": list}))
        }
        (&Method::PATCH, ["v1", "accounts", a]) => {
            let acc = reach_account(g, &caller, id(a, "account")?).await?;
            let status = status_field(f)?;
            let acc = g
                .issuer
                .set_account_status(acc.id, status, &caller.actor())
                .await?;
            ok(account_json(&acc))
        }
        (&Method::POST, ["v1", "accounts", a, "workspaces"]) => {
            let acc = reach_account(g, &caller, id(a, "account")?).await?;
            let name = required_name(f, "name")?;
            let w = g
                .store
                .create_workspace(acc.id, &name, g.clock().now())
                .await?;
            created(workspace_json(&w))
        }
        (&Method::POST, ["v1", "accounts", a, "sessions"]) => {
            let acc = reach_account(g, &caller, id(a, "account")?).await?;
            create_session(g, &caller, &acc, f).await
        }
        (&Method::POST, ["v1", "accounts", a, "tokens"]) => {
            let acc = reach_account(g, &caller, id(a, "account")?).await?;
            create_api_token(g, &caller, &acc, f).await
        }
        (&Method::GET, ["v1", "accounts", a, "tokens"]) => {
            let acc = reach_account(g, &caller, id(a, "account")?).await?;
            let list: Vec<Value> = g
                .store
                .list_tokens(TokenFilter::Account(acc.id))
                .await?
                .iter()
                .map(masked_token_json)
                .collect();
            ok(json!({"data": list}))
        }
        (&Method::POST, ["v1", "tokens", "verify"]) => verify(g, &caller, f).await,
        (&Method::DELETE, ["v1", "tokens", t]) => {
            reach_token(g, &caller, t).await?;
            g.issuer.revoke(t, &caller.actor()).await?;
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        (&Method::PATCH, ["v1", "tokens", t]) => {
            let row = reach_token(g, &caller, t).await?;
            let change = limits_change(f)?;
            if change.rate_limit.is_none() && change.quota.is_none() {
                return Err(ApiError::Invalid(
                    "give rate_limit or quota (null removes one)".into(),
                ));
            }
            if !crate::auth::kind_may_proxy(row.kind) {
                return Err(ApiError::Invalid(
                    "only api and session tokens carry a rate limit or quota".into(),
                ));
            }
            let row = g.issuer.set_limits(t, change, &caller.actor()).await?;
            ok(masked_token_json(&row))
        }
        (&Method::GET, ["v1", "tokens", t, "usage"]) => {
            let row = reach_token(g, &caller, t).await?;
            ok(usage_json(g, &row))
        }
        (&Method::GET, ["v1", "audit"]) => {
            let limit = match limit {
                None => AUDIT_LIMIT_DEFAULT,
                Some(l) => l
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=AUDIT_LIMIT_MAX).contains(l))
                    .ok_or_else(|| {
                        ApiError::Invalid(format!("limit must be 1 to {AUDIT_LIMIT_MAX}"))
                    })?,
            };
            let scope = match caller.kind {
                TokenKind::Root => None,
                _ => caller.tenant_id,
            };
            let list: Vec<Value> = g
                .store
                .list_audit(scope, limit)
                .await?
                .iter()
                .map(audit_json)
                .collect();
            ok(json!({"data": list}))
        }
        _ => Err(ApiError::EndpointNotFound),
    }
}

/// Whether a path template (`/v1/tenants/{id}`) matches path segments.
pub fn template_matches(template: &str, segs: &[&str]) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    t.len() == segs.len()
        && t.iter()
            .zip(segs)
            .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
}

fn require_root(caller: &Caller) -> Result<(), ApiError> {
    if caller.kind == TokenKind::Root {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "this endpoint needs a root token".into(),
        ))
    }
}

fn ability(s: &str) -> Result<Ability, ApiError> {
    Ability::parse(s).map_err(|e| ApiError::Invalid(e.to_string()))
}

fn required_name(f: Fields<'_>, key: &str) -> Result<String, ApiError> {
    let name = f
        .str(key)?
        .ok_or_else(|| ApiError::Invalid(format!("{key} is required")))?;
    validate_name(key, name)?;
    Ok(name.to_string())
}

fn status_field(f: Fields<'_>) -> Result<Status, ApiError> {
    let s = f
        .str("status")?
        .ok_or_else(|| ApiError::Invalid("status is required".into()))?;
    Status::parse(s)
        .ok_or_else(|| ApiError::Invalid("status must be \"active\" or \"blocked\"".into()))
}

/// The token, if the caller reaches it: its tenant's admin, or root (404
/// otherwise, audited as a cross-tenant attempt).
async fn reach_token(g: &Gateway, caller: &Caller, id: &str) -> Result<TokenRow, ApiError> {
    let row = g
        .store
        .get_token(id)
        .await?
        .ok_or(ApiError::NotFound("token"))?;
    let reachable = match row.tenant_id {
        Some(tenant) => caller.reaches_tenant(tenant),
        None => caller.kind == TokenKind::Root,
    };
    if !reachable {
        return Err(deny_cross_tenant(g, caller, "token", id).await);
    }
    Ok(row)
}

/// `GET /v1/tokens/{id}/usage`: what is left of the token's own limit (as
/// this instance counts it) and of its quota (the stored count, or this
/// instance's when it is ahead: the stored one lags by up to a flush).
fn usage_json(g: &Gateway, row: &TokenRow) -> Value {
    let now = g.clock().now();
    let rate_limit = row.rate_limit.map(|l| {
        let left = g.limiter.token_limit_left(&row.id, l, now);
        json!({
            "requests": l.requests, "window_seconds": l.window_seconds,
            "remaining": left.remaining, "reset_seconds": left.reset,
        })
    });
    let quota = row.quota.map(|q| {
        let stored = if row.quota_period_start == q.period.start(now) {
            u64::try_from(row.quota_used).unwrap_or(0)
        } else {
            0
        };
        let here = g.limiter.quota_used(&row.id, q.period, now).unwrap_or(0);
        let used = stored.max(here);
        json!({
            "requests": q.requests, "period": q.period, "used": used,
            "remaining": u64::from(q.requests).saturating_sub(used),
            "resets_at": rfc3339(q.period.end(now)),
        })
    });
    json!({"rate_limit": rate_limit, "quota": quota})
}

/// Audits a cross-tenant attempt and answers as for a missing object.
async fn deny_cross_tenant(g: &Gateway, caller: &Caller, what: &'static str, id: &str) -> ApiError {
    let event = NewAuditEvent {
        at: g.clock().now(),
        action: "access.denied".into(),
        actor_token_id: Some(caller.token_id.clone()),
        tenant_id: caller.tenant_id,
        target_token_id: None,
        outcome: "denied".into(),
        detail: Some(format!("{what} {id} belongs to another tenant")),
    };
    if let Err(e) = g.store.append_audit(&event).await {
        tracing::warn!(error = %e, "could not audit a cross-tenant attempt");
    }
    ApiError::NotFound(what)
}

/// The tenant, if the caller reaches it (404 otherwise, audited).
async fn reach_tenant(g: &Gateway, caller: &Caller, tenant: i64) -> Result<i64, ApiError> {
    if !caller.reaches_tenant(tenant) {
        return Err(deny_cross_tenant(g, caller, "tenant", &tenant.to_string()).await);
    }
    g.store
        .get_tenant(tenant)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    Ok(tenant)
}

/// The account, if the caller reaches its tenant (404 otherwise, audited).
async fn reach_account(g: &Gateway, caller: &Caller, account: i64) -> Result<Account, ApiError> {
    let acc = g
        .store
        .get_account(account)
        .await?
        .ok_or(ApiError::NotFound("account"))?;
    if !caller.reaches_tenant(acc.tenant_id) {
        return Err(deny_cross_tenant(g, caller, "account", &account.to_string()).await);
    }
    Ok(acc)
}

async fn create_tenant(
    g: &Gateway,
    caller: &Caller,
    f: Fields<'_>,
) -> Result<Response<Body>, ApiError> {
    require_root(caller)?;
    let name = required_name(f, "name")?;
    let (t, m) = g
        .issuer
        .create_tenant_with_admin(&name, &caller.actor())
        .await?;
    let mut body = tenant_json(&t);
    body["admin_token"] = json!(m.secret.expose());
    body["admin_token_id"] = json!(m.row.id);
    created(body)
}

async fn create_account(
    g: &Gateway,
    caller: &Caller,
    tenant: i64,
    f: Fields<'_>,
) -> Result<Response<Body>, ApiError> {
    let email = f
        .str("email")?
        .ok_or_else(|| ApiError::Invalid("email is required".into()))?;
    let name = required_name(f, "name")?;
    let workspace = if f.has("workspace") {
        f.str("workspace")?.map(str::to_string)
    } else {
        Some("default".to_string())
    };
    let new = NewAccount {
        tenant_id: tenant,
        email: email.to_string(),
        name,
        external_id: f.str("external_id")?.map(str::to_string),
        parent_account_id: f.int("parent_account_id")?,
        workspace,
    };
    let (acc, _) = g.issuer.create_account(&new, &caller.actor()).await?;
    created(account_json(&acc))
}

/// The workspace tokens of an account are bound to by default: its first
/// active one.
async fn default_workspace(g: &Gateway, account: i64) -> Result<Option<i64>, ApiError> {
    Ok(g.store
        .list_workspaces(account)
        .await?
        .into_iter()
        .find(|w| w.status == Status::Active)
        .map(|w| w.id))
}

async fn owned_workspace(
    g: &Gateway,
    account: i64,
    f: Fields<'_>,
) -> Result<Option<i64>, ApiError> {
    match f.int("workspace_id")? {
        None => default_workspace(g, account).await,
        Some(w) => {
            let found = g
                .store
                .list_workspaces(account)
                .await?
                .into_iter()
                .any(|ws| ws.id == w);
            if found {
                Ok(Some(w))
            } else {
                Err(ApiError::NotFound("workspace"))
            }
        }
    }
}

async fn create_session(
    g: &Gateway,
    caller: &Caller,
    acc: &Account,
    f: Fields<'_>,
) -> Result<Response<Body>, ApiError> {
    let ttl = f.int("ttl_seconds")?.unwrap_or(SESSION_TTL_DEFAULT);
    if !(1..=SESSION_TTL_MAX).contains(&ttl) {
        return Err(ApiError::Invalid(format!(
            "ttl_seconds must be 1 to {SESSION_TTL_MAX}"
        )));
    }
    let wanted = abilities(f.str_list("abilities")?, &["*"])?;
    caller.check_grant(&wanted)?;
    let workspace_id = default_workspace(g, acc.id).await?;
    let m = g
        .issuer
        .mint(
            MintRequest {
                kind: TokenKind::Session,
                tenant_id: Some(acc.tenant_id),
                account_id: Some(acc.id),
                workspace_id,
                name: "session".into(),
                abilities: wanted,
                expires_at: Some(g.clock().now() + ttl),
            },
            &caller.actor(),
        )
        .await?;
    created(json!({
        "id": m.row.id, "token": m.secret.expose(),
        "expires_at": m.row.expires_at.map(rfc3339),
        "abilities": m.row.abilities, "workspace_id": m.row.workspace_id,
    }))
}

async fn create_api_token(
    g: &Gateway,
    caller: &Caller,
    acc: &Account,
    f: Fields<'_>,
) -> Result<Response<Body>, ApiError> {
    let name = required_name(f, "name")?;
    let wanted = abilities(f.str_list("abilities")?, &["*"])?;
    caller.check_grant(&wanted)?;
    let expires_at = match f.int("expires_in_days")? {
        None => None,
        Some(d) if (1..=MAX_EXPIRES_DAYS).contains(&d) => Some(g.clock().now() + d * 86_400),
        Some(_) => {
            return Err(ApiError::Invalid(format!(
                "expires_in_days must be 1 to {MAX_EXPIRES_DAYS}"
            )))
        }
    };
    let limits = limits_change(f)?;
    let workspace_id = owned_workspace(g, acc.id, f).await?;
    let m = g
        .issuer
        .mint_with_limits(
            MintRequest {
                kind: TokenKind::Api,
                tenant_id: Some(acc.tenant_id),
                account_id: Some(acc.id),
                workspace_id,
                name,
                abilities: wanted,
                expires_at,
            },
            limits,
            &caller.actor(),
        )
        .await?;
    created(json!({
        "id": m.row.id, "name": m.row.name, "abilities": m.row.abilities,
        "token": m.secret.expose(), "created_at": rfc3339(m.row.created_at),
        "expires_at": m.row.expires_at.map(rfc3339), "workspace_id": m.row.workspace_id,
        "rate_limit": m.row.rate_limit, "quota": m.row.quota,
    }))
}

/// `POST /v1/tokens/verify`: token introspection for scripts and services,
/// 200 with `valid` either way (as RFC 7662 answers); a token of another
/// tenant answers as an unknown one. Front proxies, which read only the
/// status, use forward auth instead ([`crate::forward_auth`]).
async fn verify(g: &Gateway, caller: &Caller, f: Fields<'_>) -> Result<Response<Body>, ApiError> {
    let token = f
        .str("token")?
        .ok_or_else(|| ApiError::Invalid("token is required".into()))?;
    let needed = f.str("ability")?.map(ability).transpose()?;
    let invalid = |d: Denial| ok(json!({"valid": false, "code": d.code()}));
    let entry = match g.lookup(token).await {
        Ok(e) => e,
        Err(Denial::StoreUnavailable) => return Err(ApiError::Unavailable),
        Err(d) => return invalid(d),
    };
    let r = &entry.record;
    let reachable = match r.tenant_id {
        Some(t) => caller.reaches_tenant(t),
        None => caller.kind == TokenKind::Root,
    };
    if !reachable {
        return invalid(Denial::UnknownToken);
    }
    // Only tokens the proxy would accept are valid here: a control-plane
    // token must not be reported as one that can call an API.
    let verdict = decide(r, g.clock().now(), needed.as_ref().map(Ability::as_str)).and_then(|()| {
        if crate::auth::kind_may_proxy(r.kind) {
            Ok(())
        } else {
            Err(Denial::TokenKindNotAllowed)
        }
    });
    let mut body = json!({
        "valid": verdict.is_ok(),
        "token_id": r.token_id, "kind": r.kind, "tenant_id": r.tenant_id,
        "account_id": r.account_id, "workspace_id": r.workspace_id,
        "abilities": r.abilities, "expires_at": r.expires_at.map(rfc3339),
    });
    if let Err(d) = verdict {
        body["code"] = json!(d.code());
    }
    ok(body)
}
