//! The five seed token flows: each document's examples answered with the
//! documented shape, each documented error, and the rules that hold for all
//! (no escalation, no cross-tenant reach, tokens usable on the proxy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{call, send_bytes, TestGateway};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokengate::issuer::Actor;
use tokengate::store::{NewAccount, Status, TokenFilter};
use tokengate::token::{Checked, TokenFormat, TokenKind};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

fn api_token(v: &Value) -> String {
    let t = v.as_str().unwrap().to_string();
    assert_eq!(
        TokenFormat::default().check(&t),
        Ok(Checked::Native(TokenKind::Api))
    );
    t
}

/// A second tenant with one account, for cross-tenant attempts.
async fn other_tenant(g: &TestGateway) -> (i64, tokengate::store::Account) {
    let t = g
        .gateway
        .issuer
        .create_tenant("other", &Actor::default())
        .await
        .unwrap();
    let (a, _) = g
        .gateway
        .issuer
        .create_account(
            &NewAccount {
                tenant_id: t.id,
                email: "eve@other.io".into(),
                name: "Eve".into(),
                external_id: None,
                parent_account_id: None,
                workspace: Some("default".into()),
            },
            &Actor::default(),
        )
        .await
        .unwrap();
    (t.id, a)
}

async fn denied_audits(g: &TestGateway) -> usize {
    g.gateway
        .store
        .list_audit(None, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.outcome == "denied")
        .count()
}

// ---------------------------------------------------------------- white-label

#[tokio::test]
async fn white_label_documented_examples_and_errors() {
    let g = TestGateway::spawn().await;
    let (admin, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    let post = |body: Value| {
        call(
            g.addr,
            Method::POST,
            "/api/white-label/token",
            Some(&admin),
            Some(body),
        )
    };

    // Example 1: by user_id; token_name defaults to api-token.
    let r = post(json!({"user_id": g.account_id})).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(
        keys(&v),
        sorted(&["message", "user", "token", "token_name"])
    );
    assert_eq!(v["message"], "Token created successfully.");
    assert_eq!(
        v["user"],
        json!({"id": g.account_id, "name": "Ann", "email": "ann@example.com"})
    );
    assert_eq!(v["token_name"], "api-token");
    let token = api_token(&v["token"]);
    // Example 2: by email with a token name.
    let r = post(json!({"email": "ann@example.com", "token_name": "kpi-dashboard"})).await;
    assert_eq!(r.json()["token_name"], "kpi-dashboard");
    // The token belongs to the user, never expires, and works on the proxy.
    assert_eq!(
        g.get("/api/user/calls", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        g.upstream.last().headers["x-account-id"],
        g.account_id.to_string().as_str()
    );
    let rows = g
        .gateway
        .store
        .list_tokens(TokenFilter::Account(g.account_id))
        .await
        .unwrap();
    assert!(rows.iter().all(|t| t.expires_at.is_none()));

    // Errors.
    let r = post(json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["errors"]["user_id"].is_array() && r.json()["errors"]["email"].is_array());
    let r = post(json!({"user_id": "seven"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = post(json!({"user_id": 987654})).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::NOT_FOUND, json!({"message": "User not found."}))
    );
    let (_, eve) = other_tenant(&g).await;
    let before = denied_audits(&g).await;
    let foreign_by_id = post(json!({"user_id": eve.id})).await;
    let foreign_by_email = post(json!({"email": "eve@other.io"})).await;
    assert_eq!(
        (foreign_by_id.status, foreign_by_id.body.clone()),
        (r.status, r.body.clone())
    );
    assert_eq!(foreign_by_email.body, r.body);
    assert_eq!(
        denied_audits(&g).await,
        before + 1,
        "the id attempt on another tenant is audited"
    );
    let r = call(
        g.addr,
        Method::POST,
        "/api/white-label/token",
        None,
        Some(json!({"user_id": 1})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthenticated."})
        )
    );
    let user = g.token(&["*"]).await;
    let r = call(
        g.addr,
        Method::POST,
        "/api/white-label/token",
        Some(&user),
        Some(json!({"user_id": 1})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (
            StatusCode::FORBIDDEN,
            json!({"message": "This action is unauthorized: a white-label admin token is required."})
        )
    );
    let r = send_bytes(
        g.addr,
        Method::POST,
        "/api/white-label/token",
        &[("authorization", &format!("Bearer {admin}"))],
        b"{oops".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"].is_string());

    // The users list, for the dashboard workflow.
    let r = call(
        g.addr,
        Method::GET,
        "/api/white-label/users",
        Some(&admin),
        None,
    )
    .await;
    let users = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(users.len(), 1, "only this platform's users");
    assert_eq!(users[0]["email"], "ann@example.com");
}

// ---------------------------------------------------------------- customer id

#[tokio::test]
async fn customer_id_documented_example_aliases_and_errors() {
    let g = TestGateway::spawn().await;
    let (admin, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    let acc = g
        .gateway
        .store
        .get_account(g.account_id)
        .await
        .unwrap()
        .unwrap();
    let cid = acc.customer_id.clone();
    let path = "/api/v1/global/users/gettokenbycustomerid";
    let post = |body: Value| {
        let admin = admin.clone();
        async move {
            send_bytes(
                g.addr,
                Method::POST,
                path,
                &[("token", &admin), ("content-type", "application/json")],
                body.to_string().into_bytes(),
            )
            .await
        }
    };

    // The documented example.
    let r = post(json!({"customer_id": cid, "name": "My API Token", "expiration_days": 30})).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(
        keys(&v),
        sorted(&[
            "message",
            "customerid",
            "customer_api_key",
            "name",
            "expires"
        ])
    );
    assert_eq!(v["message"], "API token generated successfully");
    assert_eq!(v["customerid"], cid.as_str());
    assert_eq!(v["name"], "My API Token");
    assert_eq!(v["expires"], g.clock.now() + 30 * 86_400);
    let first = api_token(&v["customer_api_key"]);

    // Aliases; no name gives null; no expiration_days gives null.
    for alias in ["customerid", "customer_salt"] {
        let r = post(json!({alias: cid})).await;
        assert_eq!(r.status, StatusCode::OK, "{alias}");
        assert_eq!(r.json()["name"], Value::Null);
        assert_eq!(r.json()["expires"], Value::Null);
    }
    // The Authorization form of the cURL example works too.
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&admin),
        Some(json!({"customer_id": cid})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Each call a new token; earlier ones untouched.
    assert_eq!(g.get("/api/x", Some(&first)).await.status, StatusCode::OK);
    assert_eq!(
        g.gateway
            .store
            .list_tokens(TokenFilter::Account(g.account_id))
            .await
            .unwrap()
            .len(),
        4
    );

    let err = |r: &common::Reply| (r.status, r.json()["message"].as_str().unwrap().to_string());
    for bad in [
        json!(0),
        json!(-3),
        json!(1.5),
        json!("2"),
        json!(true),
        json!(100000),
    ] {
        let r = post(json!({"customer_id": cid, "expiration_days": bad})).await;
        assert_eq!(
            err(&r),
            (StatusCode::BAD_REQUEST, "INVALID_EXPIRATION_DAYS".into()),
            "{bad}"
        );
        assert_eq!(r.json()["error"], true);
    }
    let r = post(json!({"customer_id": "000000000000"})).await;
    let unknown = r.body.clone();
    assert_eq!(
        err(&r),
        (StatusCode::NOT_FOUND, "CUSTOMER_ID_NOT_FOUND".into())
    );
    let (_, eve) = other_tenant(&g).await;
    let r = post(json!({"customer_id": eve.customer_id})).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::NOT_FOUND, unknown.clone()),
        "foreign = unknown"
    );
    // Blocked account.
    let (blocked, _) = g
        .gateway
        .issuer
        .create_account(
            &NewAccount {
                tenant_id: g.tenant_id,
                email: "blocked@x.io".into(),
                name: "B".into(),
                external_id: None,
                parent_account_id: None,
                workspace: Some("default".into()),
            },
            &Actor::default(),
        )
        .await
        .unwrap();
    g.gateway
        .issuer
        .set_account_status(blocked.id, Status::Blocked, &Actor::default())
        .await
        .unwrap();
    let r = post(json!({"customer_id": blocked.customer_id})).await;
    assert_eq!(
        err(&r),
        (StatusCode::NOT_FOUND, "CUSTOMER_ID_NOT_FOUND".into())
    );
    // No workspace.
    let (bare, _) = g
        .gateway
        .issuer
        .create_account(
            &NewAccount {
                tenant_id: g.tenant_id,
                email: "bare@x.io".into(),
                name: "Bare".into(),
                external_id: None,
                parent_account_id: None,
                workspace: None,
            },
            &Actor::default(),
        )
        .await
        .unwrap();
    let r = post(json!({"customer_id": bare.customer_id})).await;
    assert_eq!(
        err(&r),
        (StatusCode::NOT_FOUND, "WORKSPACE_NOT_FOUND".into())
    );
    let r = post(json!({})).await;
    assert_eq!(
        err(&r),
        (StatusCode::BAD_REQUEST, "CUSTOMER_ID_REQUIRED".into())
    );
    let r = post(json!({"customer_id": "0000\u{0}0000"})).await;
    assert_eq!(
        err(&r),
        (StatusCode::BAD_REQUEST, "INVALID_CUSTOMER_ID".into())
    );
    let r = send_bytes(
        g.addr,
        Method::POST,
        path,
        &[("token", &admin)],
        b"[nope".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], true);
    let r = send_bytes(
        g.addr,
        Method::POST,
        path,
        &[("token", &admin)],
        vec![b' '; 100_000],
    )
    .await;
    assert_eq!(
        err(&r),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE".into())
    );
    let user = g.token(&["*"]).await;
    let r = send_bytes(
        g.addr,
        Method::POST,
        path,
        &[("token", &user)],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (
            StatusCode::FORBIDDEN,
            json!({"error": true, "message": "FORBIDDEN"})
        )
    );
}

// ---------------------------------------------------------------- sub-account

#[tokio::test]
async fn sub_account_documented_envelope_and_errors() {
    let g = TestGateway::spawn().await;
    let now = g.clock.now();
    let (sub, _) = g
        .gateway
        .issuer
        .create_account(
            &NewAccount {
                tenant_id: g.tenant_id,
                email: "sub@example.com".into(),
                name: "Sub".into(),
                external_id: None,
                parent_account_id: Some(g.account_id),
                workspace: Some("default".into()),
            },
            &Actor::default(),
        )
        .await
        .unwrap();
    // The parent's api token, expiring in a day, with limited abilities.
    let (parent, _) = g
        .mint(
            TokenKind::Api,
            &["sms:send", "sms:read"],
            Some(now + 86_400),
        )
        .await;
    let post = |token: &str, body: Value| {
        let token = token.to_string();
        async move {
            call(
                g.addr,
                Method::POST,
                "/api/v1/apiClient/token",
                Some(&token),
                Some(body),
            )
            .await
        }
    };

    let r = post(
        &parent,
        json!({"name": "Production API", "subAccountId": sub.id.to_string()}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(
        keys(&v),
        sorted(&[
            "app_type",
            "app_version",
            "maintainence",
            "new_version",
            "force_update",
            "invalid_token",
            "refresh_token",
            "show_message",
            "is_enc",
            "status",
            "message",
            "message_type",
            "data",
            "error",
        ])
    );
    assert_eq!(
        (v["status"].clone(), v["message"].clone()),
        (json!(true), json!("API token created successfully"))
    );
    assert_eq!(v["error"], json!({}));
    let d = &v["data"];
    assert_eq!(
        keys(d),
        sorted(&[
            "_id",
            "name",
            "token",
            "status",
            "subAccountId",
            "createdAt"
        ])
    );
    assert_eq!(d["name"], "Production API");
    assert_eq!(d["status"], "active");
    assert_eq!(d["subAccountId"], sub.id.to_string());
    assert!(d["createdAt"].as_str().unwrap().ends_with(".000Z"));
    let minted = api_token(&d["token"]);
    // Works as the sub-account, with the parent's abilities, never longer-lived.
    assert_eq!(g.get("/api/x", Some(&minted)).await.status, StatusCode::OK);
    assert_eq!(
        g.upstream.last().headers["x-account-id"],
        sub.id.to_string().as_str()
    );
    assert_eq!(
        g.upstream.last().headers["x-token-abilities"],
        "sms:send,sms:read"
    );
    let row = g
        .gateway
        .store
        .get_token(d["_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.expires_at,
        Some(now + 86_400),
        "cannot outlive the parent's token"
    );

    // Later listings show it masked.
    let r = call(
        g.addr,
        Method::GET,
        &format!("/api/v1/apiClient/token?subAccountId={}", sub.id),
        Some(&parent),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let listing = r.json().to_string();
    assert!(!listing.contains(&minted[4..]), "secret in listing");
    assert!(listing.contains(&format!("{}…", &minted[..8])));

    // The documented errors.
    let validation = |r: &common::Reply, msg: &str| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.json(),
            json!({"status": false, "message": "Validation error", "message_type": "toast", "data": {}, "error": {"message": msg}})
        );
    };
    validation(
        &post(&parent, json!({"subAccountId": sub.id.to_string()})).await,
        "API name is required",
    );
    validation(
        &post(&parent, json!({"name": "x"})).await,
        "Sub account ID is required",
    );
    validation(
        &post(
            &parent,
            json!({"name": "Production API", "subAccountId": sub.id.to_string()}),
        )
        .await,
        "Token name already exists for this sub-account",
    );
    let forbidden = json!({"status": false, "message": "Forbidden", "message_type": "toast", "data": {}, "error": {"message": "Sub account does not belong to you or does not exist"}});
    let (_, eve) = other_tenant(&g).await;
    for target in [
        eve.id.to_string(),
        g.account_id.to_string(),
        "999999".into(),
        "6877a383d68781beb3b14110".into(),
    ] {
        let r = post(&parent, json!({"name": "x", "subAccountId": target})).await;
        assert_eq!(
            (r.status, r.json()),
            (StatusCode::FORBIDDEN, forbidden.clone()),
            "{target}"
        );
    }
    // Control characters are validation errors, not store errors.
    let r = post(
        &parent,
        json!({"name": "nul\u{0}", "subAccountId": sub.id.to_string()}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["message"], "Validation error", "{:?}", r.body);
    // A blocked sub-account gets no new tokens.
    g.gateway
        .issuer
        .set_account_status(sub.id, Status::Blocked, &Actor::default())
        .await
        .unwrap();
    let r = post(
        &parent,
        json!({"name": "while blocked", "subAccountId": sub.id.to_string()}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::FORBIDDEN, forbidden.clone())
    );
    g.gateway
        .issuer
        .set_account_status(sub.id, Status::Active, &Actor::default())
        .await
        .unwrap();
    // A sibling's token cannot mint for someone else's sub-account.
    let (sub_token, _) = {
        let m = g
            .gateway
            .issuer
            .mint(
                tokengate::issuer::MintRequest {
                    kind: TokenKind::Api,
                    tenant_id: Some(g.tenant_id),
                    account_id: Some(sub.id),
                    workspace_id: None,
                    name: "own".into(),
                    abilities: vec![tokengate::auth::Ability::parse("*").unwrap()],
                    expires_at: None,
                },
                &Actor::default(),
            )
            .await
            .unwrap();
        (m.secret.expose().to_string(), m.row.id)
    };
    let r = post(
        &sub_token,
        json!({"name": "x", "subAccountId": sub.id.to_string()}),
    )
    .await;
    assert_eq!((r.status, r.json()), (StatusCode::FORBIDDEN, forbidden));

    // 401 for an expired caller token, without any stack trace.
    g.clock.advance(86_401);
    let r = post(
        &parent,
        json!({"name": "late", "subAccountId": sub.id.to_string()}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (
            StatusCode::UNAUTHORIZED,
            json!({"code": 401, "message": "Token expired"})
        )
    );
    let r = send_bytes(
        g.addr,
        Method::POST,
        "/api/v1/apiClient/token",
        &[("authorization", &format!("Bearer {sub_token}"))],
        b"{\"name\":".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["message"], "Validation error");
}

// ---------------------------------------------------------------- session exchange

#[tokio::test]
async fn session_exchange_documented_flow_and_errors() {
    let g = TestGateway::spawn().await;
    let now = g.clock.now();
    let (session, _) = g
        .mint(
            TokenKind::Session,
            &["calls:*", "campaigns:read"],
            Some(now + 3_600),
        )
        .await;
    let gen = |headers: Vec<(&'static str, String)>, body: &'static [u8]| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send_bytes(
            g.addr,
            Method::POST,
            "/api/v1/global/generate-token",
            &h,
            body.to_vec(),
        )
        .await
    };

    // The documented cURL: token header, body {}.
    let r = gen(
        vec![
            ("token", session.clone()),
            ("content-type", "application/json".into()),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(keys(&v), sorted(&["message", "token"]));
    assert_eq!(v["message"], "API token generated successfully");
    let api = api_token(&v["token"]);
    // Keeps the session's account, tenant, workspace and abilities; never expires.
    assert_eq!(
        g.get("/api/calls/1", Some(&api)).await.status,
        StatusCode::OK
    );
    let seen = g.upstream.last();
    assert_eq!(
        seen.headers["x-tenant-id"],
        g.tenant_id.to_string().as_str()
    );
    assert_eq!(
        seen.headers["x-account-id"],
        g.account_id.to_string().as_str()
    );
    assert_eq!(
        seen.headers["x-workspace-id"],
        g.workspace_id.to_string().as_str()
    );
    assert_eq!(seen.headers["x-token-abilities"], "calls:*,campaigns:read");
    // An empty body is fine too; each call is a new token.
    let r = gen(vec![("token", session.clone())], b"").await;
    assert_ne!(api_token(&r.json()["token"]), api);

    // Step 3 of the document: verify the new token.
    let r = send_bytes(
        g.addr,
        Method::POST,
        "/api/v1/global/verify",
        &[("token", &api)],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["data"]["account_id"], g.account_id);
    assert_eq!(r.json()["data"]["expires"], Value::Null);
    let r = send_bytes(
        g.addr,
        Method::POST,
        "/api/v1/global/verify",
        &[("token", "junk")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], true, "{:?}", r.body);

    // The documented errors, in the documented shape.
    let e = |r: &common::Reply| (r.status, r.json());
    let r = gen(vec![], b"{}").await;
    assert_eq!(
        e(&r),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": true, "message": "LOGIN_TOKEN_REQUIRED"})
        )
    );
    let r = gen(vec![("token", api.clone())], b"{}").await;
    assert_eq!(
        e(&r),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": true, "message": "INVALID_LOGIN_TOKEN"})
        )
    );
    let r = gen(vec![("token", "not-a-token".into())], b"{}").await;
    assert_eq!(
        e(&r),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": true, "message": "INVALID_LOGIN_TOKEN"})
        )
    );
    // Only the token header counts, as documented.
    let r = gen(vec![("authorization", format!("Bearer {session}"))], b"{}").await;
    assert_eq!(e(&r).1["message"], "LOGIN_TOKEN_REQUIRED");
    let r = gen(vec![("token", session.clone())], b"{broken").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], true);
    g.clock.advance(3_600);
    let r = gen(vec![("token", session.clone())], b"{}").await;
    assert_eq!(
        e(&r),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": true, "message": "SESSIONEXPIRED"})
        )
    );
    // The api token minted from it outlives the session.
    assert_eq!(
        g.get("/api/calls/1", Some(&api)).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------- personal access tokens

#[tokio::test]
async fn personal_access_token_documented_example_and_errors() {
    let g = TestGateway::spawn().await;
    let now = g.clock.now();
    let (session, _) = g.mint(TokenKind::Session, &["*"], Some(now + 3_600)).await;
    let path = "/api/v1/user/api-tokens";

    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&session),
        Some(json!({"name": "CI Pipeline", "abilities": ["*"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(keys(&v), sorted(&["data"]));
    assert_eq!(
        keys(&v["data"]),
        sorted(&["id", "name", "abilities", "token", "created_at"])
    );
    assert_eq!(v["data"]["name"], "CI Pipeline");
    assert_eq!(v["data"]["abilities"], json!(["*"]));
    assert!(v["data"]["created_at"].as_str().unwrap().ends_with('Z'));
    let pat = api_token(&v["data"]["token"]);
    assert_eq!(g.get("/api/admin", Some(&pat)).await.status, StatusCode::OK);

    // abilities default to ["*"]; a narrower one is enforced on the proxy.
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&session),
        Some(json!({"name": "Local Dev"})),
    )
    .await;
    assert_eq!(r.json()["data"]["abilities"], json!(["*"]));
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&session),
        Some(json!({"name": "ro", "abilities": ["calls:read"]})),
    )
    .await;
    let ro = api_token(&r.json()["data"]["token"]);
    assert_eq!(
        g.get("/api/calls/1", Some(&ro)).await.status,
        StatusCode::OK
    );
    let r = g.get("/api/admin", Some(&ro)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "ABILITY_MISSING")
    );

    // Validation.
    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "x".repeat(256)}), "name"),
        (json!({"name": "x", "abilities": "*"}), "abilities"),
        (json!({"name": "x", "abilities": []}), "abilities"),
        (
            json!({"name": "x", "abilities": ["bad ability"]}),
            "abilities.0",
        ),
        (json!({"name": "nul\u{0}"}), "name"),
    ] {
        let r = call(
            g.addr,
            Method::POST,
            path,
            Some(&session),
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(r.json()["errors"][field].is_array(), "{body}: {}", r.json());
    }
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&session),
        Some(json!({"name": "x".repeat(255)})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "255 characters is allowed");

    // Escalation: a narrower session cannot mint wider abilities.
    let (narrow, _) = g
        .mint(TokenKind::Session, &["calls:read"], Some(now + 3_600))
        .await;
    let escalation = json!({"message": "The requested abilities exceed those of the session."});
    for abilities in [json!(["*"]), json!(["calls:*"]), json!(["calls:write"])] {
        let r = call(
            g.addr,
            Method::POST,
            path,
            Some(&narrow),
            Some(json!({"name": "x", "abilities": abilities})),
        )
        .await;
        assert_eq!(
            (r.status, r.json()),
            (StatusCode::FORBIDDEN, escalation.clone()),
            "{abilities}"
        );
    }
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&narrow),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::FORBIDDEN, escalation),
        "the default [\"*\"] is beyond this session too"
    );
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&narrow),
        Some(json!({"name": "x", "abilities": ["calls:read"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Only a session token, as Bearer.
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&pat),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthenticated."})
        )
    );
    let r = call(g.addr, Method::POST, path, None, Some(json!({"name": "x"}))).await;
    assert_eq!(
        (r.status, r.json()),
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthenticated."})
        )
    );
    let r = send_bytes(
        g.addr,
        Method::POST,
        path,
        &[("authorization", &format!("Bearer {session}"))],
        b"nope".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"].is_string(), "{:?}", r.body);
    let r = send_bytes(
        g.addr,
        Method::POST,
        path,
        &[("authorization", &format!("Bearer {session}"))],
        vec![b'['; 70_000],
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    g.clock.advance(3_600);
    let r = call(
        g.addr,
        Method::POST,
        path,
        Some(&session),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "expired session");
}

#[tokio::test]
async fn flows_can_be_moved_or_turned_off() {
    let g = TestGateway::spawn_with(
        "[token_api]\nwhite_label_token = \"/partner/token\"\npersonal_access_token = \"\"\n",
    )
    .await;
    let (admin, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    let r = call(
        g.addr,
        Method::POST,
        "/partner/token",
        Some(&admin),
        Some(json!({"user_id": g.account_id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // The old path is no flow any more (and no route: 404 from the proxy).
    let r = call(
        g.addr,
        Method::POST,
        "/api/white-label/token",
        Some(&admin),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        r.code(),
        "TOKEN_KIND_NOT_ALLOWED",
        "proxied like any /api path"
    );
    let (session, _) = g
        .mint(TokenKind::Session, &["*"], Some(g.clock.now() + 60))
        .await;
    let r = call(
        g.addr,
        Method::POST,
        "/api/v1/user/api-tokens",
        Some(&session),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        g.upstream.last().uri,
        "/api/v1/user/api-tokens",
        "turned off: forwarded upstream"
    );
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn every_flow_405_says_what_is_allowed() {
    let g = TestGateway::spawn().await;
    let (admin, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    for (path, method, allow) in [
        ("/api/white-label/token", Method::GET, "POST"),
        ("/api/white-label/users", Method::POST, "GET"),
        (
            "/api/v1/global/users/gettokenbycustomerid",
            Method::PUT,
            "POST",
        ),
        ("/api/v1/apiClient/token", Method::DELETE, "GET, POST"),
        ("/api/v1/global/generate-token", Method::GET, "POST"),
        ("/api/v1/global/verify", Method::PATCH, "POST"),
        ("/api/v1/user/api-tokens", Method::GET, "POST"),
    ] {
        let r = call(g.addr, method.clone(), path, Some(&admin), None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }
}

/// The customer-ID document's cURL example, byte for byte as curl sends it:
/// the tenant-admin token bare in `Authorization`, no scheme. Accepted on
/// this flow only; the proxy path keeps requiring `Bearer`.
#[tokio::test]
async fn customer_id_curl_example_as_written_with_a_bare_authorization() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = TestGateway::spawn().await;
    let (admin, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    // The example's customer id, given to the seeded account.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        g.dir.path().join("tg.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE accounts SET customer_id = '048372910564' WHERE id = ?")
        .bind(g.account_id)
        .execute(&db)
        .await
        .unwrap();
    let path = "/api/v1/global/users/gettokenbycustomerid";
    let body = "{\n    \"customer_id\": \"048372910564\",\n    \"name\": \"My API Token\",\n    \"expiration_days\": 30\n  }";
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
             Content-Type: application/json\r\nAuthorization: {admin}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            g.addr,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let v: Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(v["message"], "API token generated successfully");
    assert_eq!(v["customerid"], "048372910564");
    assert_eq!(v["name"], "My API Token");
    assert_eq!(v["expires"], g.clock.now() + 30 * 86_400);
    let key = api_token(&v["customer_api_key"]);
    assert_eq!(g.get("/api/x", Some(&key)).await.status, StatusCode::OK);

    let with = |headers: Vec<(&'static str, String)>| {
        let headers = headers.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send_bytes(
                g.addr,
                Method::POST,
                path,
                &h,
                json!({"customer_id": "048372910564"})
                    .to_string()
                    .into_bytes(),
            )
            .await
        }
    };
    // The same token in `token` beside it is fine; another is a conflict.
    let r = with(vec![
        ("authorization", admin.clone()),
        ("token", admin.clone()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let (other, _) = g.mint(TokenKind::TenantAdmin, &["*"], None).await;
    let r = with(vec![("authorization", admin.clone()), ("token", other)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["message"], "CONFLICTING_CREDENTIALS");
    // Only a token of our format is taken bare: anything else, a typo
    // (checksum) included, is refused as before.
    let mut typo = admin.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    for bad in [
        "Basic dXNlcjpwYXNz".to_string(),
        "not-a-token".to_string(),
        String::from_utf8(typo).unwrap(),
    ] {
        let r = with(vec![("authorization", bad.clone())]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(r.json()["message"], "INVALID_TOKEN", "{bad}");
    }

    // Elsewhere the scheme stays required: the proxy path, and another flow.
    let r = common::send(
        g.addr,
        Method::GET,
        "/api/x",
        &[("authorization", key.as_str())],
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_MALFORMED")
    );
    let r = send_bytes(
        g.addr,
        Method::POST,
        "/api/white-label/token",
        &[("authorization", admin.as_str())],
        json!({"user_id": g.account_id}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
