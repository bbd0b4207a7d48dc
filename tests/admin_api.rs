//! The native admin API: every endpoint, tenant isolation, escalation,
//! bad input, and tokens minted here used through the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{call, TestGateway};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokengate::token::{TokenFormat, TokenKind};

struct Admin<'a> {
    g: &'a TestGateway,
    token: String,
}

impl Admin<'_> {
    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> common::Reply {
        call(self.g.admin_addr, method, path, Some(&self.token), body).await
    }
}

async fn root(g: &TestGateway) -> Admin<'_> {
    let (token, _) = g.mint(TokenKind::Root, &["*"], None).await;
    Admin { g, token }
}

#[tokio::test]
async fn operator_workflow_end_to_end() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;

    // Tenants (root only).
    let r = root
        .req(Method::POST, "/v1/tenants", Some(json!({"name": "Globex"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let t = r.json();
    for k in ["id", "name", "status", "admin_token"] {
        assert!(t.get(k).is_some(), "tenant lacks {k}: {t}");
    }
    assert_eq!(t["status"], "active");
    let tenant = t["id"].as_i64().unwrap();
    let admin = Admin {
        g: &g,
        token: t["admin_token"].as_str().unwrap().to_string(),
    };
    let list = root.req(Method::GET, "/v1/tenants", None).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    // A second admin token for the tenant, by its own admin.
    let r = admin
        .req(
            Method::POST,
            &format!("/v1/tenants/{tenant}/admin-tokens"),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["name"], "ci");
    assert_eq!(
        TokenFormat::default().check(v["token"].as_str().unwrap()),
        Ok(tokengate::token::Checked::Native(TokenKind::TenantAdmin))
    );

    // Accounts.
    let r = admin
        .req(
            Method::POST,
            &format!("/v1/tenants/{tenant}/accounts"),
            Some(json!({"email": "bo@globex.io", "name": "Bo", "external_id": "crm-7"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let acc = r.json();
    for k in [
        "id",
        "tenant_id",
        "email",
        "name",
        "customer_id",
        "parent_account_id",
        "external_id",
        "status",
        "workspace_id",
    ] {
        assert!(acc.get(k).is_some(), "account lacks {k}: {acc}");
    }
    assert_eq!(acc["customer_id"].as_str().unwrap().len(), 12);
    let account = acc["id"].as_i64().unwrap();
    let ws = acc["workspace_id"].as_i64().unwrap();
    let r = admin
        .req(
            Method::POST,
            &format!("/v1/tenants/{tenant}/accounts"),
            Some(json!({"email": "sub@globex.io", "name": "Sub", "parent_account_id": account, "workspace": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["workspace_id"], Value::Null);
    assert_eq!(r.json()["parent_account_id"], account);
    let dup = admin
        .req(
            Method::POST,
            &format!("/v1/tenants/{tenant}/accounts"),
            Some(json!({"email": "bo@globex.io", "name": "Again"})),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let found = admin
        .req(
            Method::GET,
            &format!("/v1/tenants/{tenant}/accounts?email=bo%40globex.io"),
            None,
        )
        .await
        .json();
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    // Listed as created: with its workspace, not `null`.
    assert_eq!(found["data"][0]["workspace_id"], ws, "{found}");
    assert_eq!(found["data"][0], acc, "listing and create answer agree");
    let all = admin
        .req(Method::GET, &format!("/v1/tenants/{tenant}/accounts"), None)
        .await
        .json();
    let sub = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == "sub@globex.io")
        .unwrap();
    assert_eq!(sub["workspace_id"], Value::Null, "made without one");

    // Workspaces, sessions, tokens.
    let r = admin
        .req(
            Method::POST,
            &format!("/v1/accounts/{account}/workspaces"),
            Some(json!({"name": "staging"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let staging = r.json()["id"].as_i64().unwrap();
    let r = admin
        .req(
            Method::POST,
            &format!("/v1/accounts/{account}/sessions"),
            Some(json!({"ttl_seconds": 600, "abilities": ["calls:*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let s = r.json();
    assert_eq!(s["abilities"], json!(["calls:*"]));
    assert_eq!(s["workspace_id"], ws, "sessions bind the default workspace");
    assert!(s["expires_at"].as_str().unwrap().ends_with('Z'));
    let session = s["token"].as_str().unwrap().to_string();
    assert!(session.starts_with("tgs_"));

    let r = admin
        .req(
            Method::POST,
            &format!("/v1/accounts/{account}/tokens"),
            Some(json!({"name": "reporting", "abilities": ["calls:read"], "expires_in_days": 7, "workspace_id": staging})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let tok = r.json();
    for k in [
        "id",
        "name",
        "abilities",
        "token",
        "created_at",
        "expires_at",
    ] {
        assert!(tok.get(k).is_some(), "token lacks {k}: {tok}");
    }
    let api = tok["token"].as_str().unwrap().to_string();
    let api_id = tok["id"].as_str().unwrap().to_string();

    // Works at once through the proxy, with exactly its context.
    let r = g.get("/api/calls/1", Some(&api)).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = g.upstream.last();
    assert_eq!(seen.headers["x-tenant-id"], tenant.to_string().as_str());
    assert_eq!(seen.headers["x-account-id"], account.to_string().as_str());
    assert_eq!(seen.headers["x-workspace-id"], staging.to_string().as_str());
    assert_eq!(seen.headers["x-token-id"], api_id.as_str());
    let r = g.get("/api/admin", Some(&api)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "ABILITY_MISSING")
    );
    assert_eq!(
        g.get("/api/calls/1", Some(&session)).await.status,
        StatusCode::OK
    );
    // The session is bound to the account's default workspace.
    let seen = g.upstream.last();
    assert_eq!(seen.headers["x-workspace-id"], ws.to_string().as_str());
    let session_id = s["id"].as_str().unwrap();
    assert_eq!(seen.headers["x-token-id"], session_id);

    // Masked listing: never a secret or hash.
    let list = admin
        .req(Method::GET, &format!("/v1/accounts/{account}/tokens"), None)
        .await;
    let text = String::from_utf8(list.body.to_vec()).unwrap();
    assert!(
        !text.contains(&api[4..]) && !text.contains(&session[4..]),
        "secret listed"
    );
    let hash = tokengate::token::TokenHash::of(&api).to_hex();
    assert!(!text.contains(&hash));
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 2);

    // Verify: introspection, 200 either way.
    let v = admin
        .req(
            Method::POST,
            "/v1/tokens/verify",
            Some(json!({"token": api, "ability": "calls:read"})),
        )
        .await
        .json();
    assert_eq!(v["valid"], true);
    assert_eq!(v["account_id"], account);
    assert_eq!(v["abilities"], json!(["calls:read"]));
    let v = admin
        .req(
            Method::POST,
            "/v1/tokens/verify",
            Some(json!({"token": api, "ability": "calls:write"})),
        )
        .await
        .json();
    assert_eq!(
        (v["valid"].clone(), v["code"].clone()),
        (json!(false), json!("ABILITY_MISSING"))
    );
    let v = admin
        .req(
            Method::POST,
            "/v1/tokens/verify",
            Some(json!({"token": "garbage"})),
        )
        .await
        .json();
    assert_eq!(v["code"], "TOKEN_MALFORMED");

    // Revoke: 204, then refused everywhere on this instance.
    let r = admin
        .req(Method::DELETE, &format!("/v1/tokens/{api_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        g.get("/api/calls/1", Some(&api)).await.code(),
        "TOKEN_REVOKED"
    );
    let v = admin
        .req(
            Method::POST,
            "/v1/tokens/verify",
            Some(json!({"token": api})),
        )
        .await
        .json();
    assert_eq!(v["code"], "TOKEN_REVOKED");

    // Blocking an account stops its session.
    let r = admin
        .req(
            Method::PATCH,
            &format!("/v1/accounts/{account}"),
            Some(json!({"status": "blocked"})),
        )
        .await;
    assert_eq!(r.json()["status"], "blocked");
    assert_eq!(
        r.json()["workspace_id"],
        ws,
        "the PATCH answer states it too"
    );
    assert_eq!(
        g.get("/api/calls/1", Some(&session)).await.code(),
        "ACCOUNT_BLOCKED"
    );
    let r = root
        .req(
            Method::PATCH,
            &format!("/v1/tenants/{tenant}"),
            Some(json!({"status": "blocked"})),
        )
        .await;
    assert_eq!(r.json()["status"], "blocked");
    // A blocked tenant's admin is refused too.
    let r = admin
        .req(Method::GET, &format!("/v1/tenants/{tenant}/accounts"), None)
        .await;
    assert_eq!(r.code(), "TENANT_BLOCKED");

    // Audit: newest first, with actor, tenant and token ids.
    let audit = root
        .req(Method::GET, "/v1/audit?limit=50", None)
        .await
        .json();
    let events = audit["data"].as_array().unwrap();
    let revoked = events
        .iter()
        .find(|e| e["action"] == "token.revoked")
        .unwrap();
    assert_eq!(revoked["target_token_id"], api_id.as_str());
    assert_eq!(revoked["tenant_id"], tenant);
    assert!(revoked["actor_token_id"].is_string());
    assert!(events
        .iter()
        .any(|e| e["action"] == "token.issued" && e["target_token_id"] == api_id.as_str()));
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let audit_text = audit.to_string();
    assert!(!audit_text.contains(&api[4..]), "secret in audit");
}

#[tokio::test]
async fn another_tenants_objects_answer_exactly_like_missing_ones_and_are_audited() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;
    // Tenant B with an account, a token; tenant A's admin tries them all.
    let b = root
        .req(Method::POST, "/v1/tenants", Some(json!({"name": "B"})))
        .await
        .json();
    let b_id = b["id"].as_i64().unwrap();
    let b_admin = Admin {
        g: &g,
        token: b["admin_token"].as_str().unwrap().into(),
    };
    let b_acc = b_admin
        .req(
            Method::POST,
            &format!("/v1/tenants/{b_id}/accounts"),
            Some(json!({"email": "x@b.io", "name": "X"})),
        )
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let b_tok = b_admin
        .req(
            Method::POST,
            &format!("/v1/accounts/{b_acc}/tokens"),
            Some(json!({"name": "t"})),
        )
        .await
        .json();
    let b_tok_id = b_tok["id"].as_str().unwrap().to_string();

    let a = root
        .req(Method::POST, "/v1/tenants", Some(json!({"name": "A"})))
        .await
        .json();
    let a_admin = Admin {
        g: &g,
        token: a["admin_token"].as_str().unwrap().into(),
    };

    let missing_acc = 999_999;
    let missing_tenant = 999_998;
    let cases: Vec<(Method, String, String, Option<Value>)> = vec![
        (
            Method::POST,
            format!("/v1/tenants/{b_id}/admin-tokens"),
            format!("/v1/tenants/{missing_tenant}/admin-tokens"),
            Some(json!({"name": "x"})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{b_id}/accounts"),
            format!("/v1/tenants/{missing_tenant}/accounts"),
            Some(json!({"email": "e@a.io", "name": "E"})),
        ),
        (
            Method::GET,
            format!("/v1/tenants/{b_id}/accounts"),
            format!("/v1/tenants/{missing_tenant}/accounts"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/accounts/{b_acc}"),
            format!("/v1/accounts/{missing_acc}"),
            Some(json!({"status": "blocked"})),
        ),
        (
            Method::POST,
            format!("/v1/accounts/{b_acc}/workspaces"),
            format!("/v1/accounts/{missing_acc}/workspaces"),
            Some(json!({"name": "w"})),
        ),
        (
            Method::POST,
            format!("/v1/accounts/{b_acc}/sessions"),
            format!("/v1/accounts/{missing_acc}/sessions"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/accounts/{b_acc}/tokens"),
            format!("/v1/accounts/{missing_acc}/tokens"),
            Some(json!({"name": "n"})),
        ),
        (
            Method::GET,
            format!("/v1/accounts/{b_acc}/tokens"),
            format!("/v1/accounts/{missing_acc}/tokens"),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/tokens/{b_tok_id}"),
            "/v1/tokens/no-such-token".to_string(),
            None,
        ),
    ];
    for (method, foreign, missing, body) in &cases {
        let f = a_admin.req(method.clone(), foreign, body.clone()).await;
        let m = a_admin.req(method.clone(), missing, body.clone()).await;
        assert_eq!(f.status, StatusCode::NOT_FOUND, "{method} {foreign}");
        assert_eq!(
            f.body, m.body,
            "{method} {foreign} differs from a missing object"
        );
    }
    // Verify answers for B's token as for an unknown one.
    let v = a_admin
        .req(
            Method::POST,
            "/v1/tokens/verify",
            Some(json!({"token": b_tok["token"]})),
        )
        .await
        .json();
    assert_eq!(v, json!({"valid": false, "code": "TOKEN_INVALID"}));
    // Nothing happened to B's objects.
    let v = b_admin
        .req(
            Method::POST,
            "/v1/tokens/verify",
            Some(json!({"token": b_tok["token"]})),
        )
        .await
        .json();
    assert_eq!(v["valid"], true);
    // Root-only endpoints.
    for (m, p) in [(Method::GET, "/v1/tenants"), (Method::POST, "/v1/tenants")] {
        let r = a_admin.req(m, p, Some(json!({"name": "z"}))).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::FORBIDDEN, "FORBIDDEN")
        );
    }
    let r = a_admin
        .req(
            Method::PATCH,
            &format!("/v1/tenants/{b_id}"),
            Some(json!({"status": "blocked"})),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    // Audited, and visible to A only.
    let audit = a_admin.req(Method::GET, "/v1/audit", None).await.json();
    let denied = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "access.denied" && e["outcome"] == "denied")
        .count();
    // Each foreign attempt is audited once; so are the three attempts on a
    // tenant id that is not the caller's own, whether or not it exists.
    assert_eq!(
        denied,
        cases.len() + 3,
        "each cross-tenant attempt audited once"
    );
    let details = audit.to_string();
    assert!(details.contains(&format!("tenant {b_id} belongs to another tenant")));
    assert!(details.contains(&format!("account {b_acc} belongs to another tenant")));
    assert!(details.contains(&format!("token {b_tok_id} belongs to another tenant")));
    let b_audit = b_admin.req(Method::GET, "/v1/audit", None).await.json();
    assert!(b_audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["tenant_id"] == b_id));
}

#[tokio::test]
async fn no_caller_mints_abilities_it_lacks() {
    let g = TestGateway::spawn().await;
    let (limited, _) = g.mint(TokenKind::TenantAdmin, &["calls:*"], None).await;
    let a = Admin {
        g: &g,
        token: limited,
    };
    let acc = g.account_id;
    for (path, body) in [
        (
            format!("/v1/accounts/{acc}/tokens"),
            json!({"name": "x", "abilities": ["*"]}),
        ),
        (format!("/v1/accounts/{acc}/tokens"), json!({"name": "x"})),
        (
            format!("/v1/accounts/{acc}/tokens"),
            json!({"name": "x", "abilities": ["reports:read"]}),
        ),
        (
            format!("/v1/accounts/{acc}/sessions"),
            json!({"abilities": ["*"]}),
        ),
        (
            format!("/v1/tenants/{}/admin-tokens", g.tenant_id),
            json!({"name": "x"}),
        ),
    ] {
        let r = a.req(Method::POST, &path, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} {body}");
        assert_eq!(r.code(), "ABILITY_ESCALATION");
    }
    let r = a
        .req(
            Method::POST,
            &format!("/v1/accounts/{acc}/tokens"),
            Some(json!({"name": "x", "abilities": ["calls:read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_never_500() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;
    let acc = g.account_id;
    let path = format!("/v1/accounts/{acc}/tokens");
    let bearer = format!("Bearer {}", root.token);
    let raw = |body: Vec<u8>| {
        let path = path.clone();
        let bearer = bearer.clone();
        async move {
            common::send_bytes(
                g.admin_addr,
                Method::POST,
                &path,
                &[("authorization", &bearer)],
                body,
            )
            .await
        }
    };
    let r = raw(b"{not json".to_vec()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    let r = raw(b"[1,2]".to_vec()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    let r = raw(vec![b' '; 70 * 1024]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    for (body, field) in [
        (json!({"name": 5}), "name"),
        (json!({"name": "x", "abilities": "all"}), "abilities"),
        (
            json!({"name": "x", "expires_in_days": "7"}),
            "expires_in_days",
        ),
        (
            json!({"name": "x", "expires_in_days": 0}),
            "expires_in_days",
        ),
        (json!({"name": "x", "abilities": ["no spaces"]}), "ability"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(256)}), "name"),
        (json!({"name": "x", "workspace_id": 99999}), "workspace"),
    ] {
        let r = root.req(Method::POST, &path, Some(body.clone())).await;
        let expected = if field == "workspace" {
            (StatusCode::NOT_FOUND, "NOT_FOUND")
        } else {
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
        };
        assert_eq!((r.status, r.code().as_str()), expected, "{body}");
        assert!(
            r.json()["message"].as_str().unwrap().contains(field),
            "{body}: {}",
            r.json()
        );
    }
    let r = call(g.admin_addr, Method::GET, "/v1/tenants", None, None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "TOKEN_MISSING")
    );
    let api = g.token(&["*"]).await;
    let r = call(g.admin_addr, Method::GET, "/v1/tenants", Some(&api), None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    let r = root.req(Method::GET, "/v1/nothing", None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND")
    );
    let r = root.req(Method::PUT, "/v1/tenants", None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
    let r = root.req(Method::GET, "/v1/audit?limit=0", None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    let r = root
        .req(
            Method::PATCH,
            &format!("/v1/accounts/{acc}"),
            Some(json!({"status": "gone"})),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    // NUL and other control characters (which PostgreSQL refuses) are a
    // 400 at the boundary, never a 500 from the store.
    let tenant = g.tenant_id;
    for body in [
        json!({"email": "n@x.io", "name": "N", "external_id": "a\u{0}b"}),
        json!({"email": "n\u{0}@x.io", "name": "N"}),
        json!({"email": "n@x.io", "name": "N\u{7}"}),
    ] {
        let r = root
            .req(
                Method::POST,
                &format!("/v1/tenants/{tenant}/accounts"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "{body}"
        );
    }
    let r = root
        .req(
            Method::GET,
            &format!("/v1/tenants/{tenant}/accounts?email=%00"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    let r = root
        .req(
            Method::POST,
            "/v1/tokens/verify",
            Some(json!({"token": "a\u{0}"})),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
}

#[tokio::test]
async fn verify_refuses_control_plane_tokens() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;
    for kind in [TokenKind::Root, TokenKind::TenantAdmin] {
        let (t, _) = g.mint(kind, &["*"], None).await;
        let v = root
            .req(Method::POST, "/v1/tokens/verify", Some(json!({"token": t})))
            .await
            .json();
        assert_eq!(v["valid"], false, "{kind}");
        assert_eq!(v["code"], "TOKEN_KIND_NOT_ALLOWED");
    }
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;
    let doc = common::send(g.admin_addr, Method::GET, "/openapi.json", &[], b"")
        .await
        .json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let item = item.as_object().unwrap();
        for method in item.keys() {
            if ["get", "post", "patch", "delete", "put"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        // HEAD is documented exactly where the admin listener answers it:
        // wherever GET is.
        if !path.starts_with("/api/") {
            assert_eq!(
                item.contains_key("head"),
                item.contains_key("get"),
                "{path}: HEAD documented iff GET"
            );
        }
    }
    documented.sort();
    // The admin router's table plus the seed flows at their default paths.
    let mut served: Vec<(String, String)> = tokengate::admin::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let paths = &g.gateway.config.token_api;
    for (m, p) in [
        ("POST", &paths.white_label_token),
        ("GET", &paths.white_label_users),
        ("POST", &paths.customer_id_token),
        ("POST", &paths.sub_account_token),
        ("GET", &paths.sub_account_token),
        ("POST", &paths.session_exchange),
        ("POST", &paths.session_verify),
        ("POST", &paths.personal_access_token),
    ] {
        served.push((m.to_string(), p.clone().unwrap()));
    }
    served.sort();
    assert_eq!(documented, served, "openapi.json and the router disagree");
    // Every native operation states the statuses every one can give, and
    // those its shape adds: 413 with a body, 404 with an id.
    let resolve = |r: &Value| -> Value {
        match r["$ref"].as_str() {
            Some(p) => doc["components"]["responses"][p.rsplit('/').next().unwrap()].clone(),
            None => r.clone(),
        }
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let statuses = op["responses"].as_object().unwrap();
            let mut needed = vec!["400", "401", "403", "503"];
            if op.get("requestBody").is_some() {
                needed.push("413");
            }
            if path.contains("{id}") {
                needed.push("404");
            }
            for s in needed {
                assert!(
                    statuses.contains_key(s),
                    "{method} {path} does not state {s}"
                );
            }
            let unauthorized = resolve(&statuses["401"]);
            assert!(
                unauthorized["headers"].get("WWW-Authenticate").is_some(),
                "{method} {path}: 401 states WWW-Authenticate"
            );
        }
    }
    // The limits the document states are the server's constants.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Ability"]["maxLength"],
        tokengate::auth::MAX_ABILITY_LEN
    );
    let tenant_name = &doc["paths"]["/v1/tenants"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["name"];
    assert_eq!(tenant_name["maxLength"], tokengate::issuer::MAX_NAME_LEN);
    let limit = &doc["paths"]["/v1/audit"]["get"]["parameters"][0]["schema"];
    assert_eq!(limit["maximum"], tokengate::admin::AUDIT_LIMIT_MAX);
    assert_eq!(limit["default"], tokengate::admin::AUDIT_LIMIT_DEFAULT);
    let session = &doc["paths"]["/v1/accounts/{id}/sessions"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["ttl_seconds"];
    assert_eq!(session["maximum"], tokengate::admin::SESSION_TTL_MAX);
    assert_eq!(session["default"], tokengate::admin::SESSION_TTL_DEFAULT);
    let days = &doc["paths"]["/v1/accounts/{id}/tokens"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["expires_in_days"];
    assert_eq!(days["maximum"], tokengate::admin::MAX_EXPIRES_DAYS);
    assert!(
        doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains(&format!("({} bytes", tokengate::api::MAX_BODY_BYTES)),
        "the body limit"
    );
    // And the server holds to them: the largest documented value passes,
    // one more is refused.
    for (limit, status) in [
        (tokengate::admin::AUDIT_LIMIT_MAX, StatusCode::OK),
        (
            tokengate::admin::AUDIT_LIMIT_MAX + 1,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = root
            .req(Method::GET, &format!("/v1/audit?limit={limit}"), None)
            .await;
        assert_eq!(r.status, status, "limit={limit}");
    }
    let sessions = format!("/v1/accounts/{}/sessions", g.account_id);
    for (ttl, status) in [
        (tokengate::admin::SESSION_TTL_MAX, StatusCode::CREATED),
        (
            tokengate::admin::SESSION_TTL_MAX + 1,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = root
            .req(Method::POST, &sessions, Some(json!({"ttl_seconds": ttl})))
            .await;
        assert_eq!(r.status, status, "ttl_seconds={ttl}");
    }
    let tokens = format!("/v1/accounts/{}/tokens", g.account_id);
    for (days, status) in [
        (tokengate::admin::MAX_EXPIRES_DAYS, StatusCode::CREATED),
        (
            tokengate::admin::MAX_EXPIRES_DAYS + 1,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let body =
            json!({"name": "n".repeat(tokengate::issuer::MAX_NAME_LEN), "expires_in_days": days});
        let r = root.req(Method::POST, &tokens, Some(body)).await;
        assert_eq!(r.status, status, "expires_in_days={days}");
    }
    let bearer = format!("Bearer {}", root.token);
    for (len, status) in [
        (tokengate::api::MAX_BODY_BYTES, StatusCode::BAD_REQUEST), // `name is required`
        (
            tokengate::api::MAX_BODY_BYTES + 1,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let r = common::send_bytes(
            g.admin_addr,
            Method::POST,
            "/v1/tenants",
            &[("authorization", &bearer)],
            vec![b' '; len],
        )
        .await;
        assert_eq!(r.status, status, "{len} bytes");
    }

    // And every admin route really is served (not 404/405 from the router).
    for (m, p) in tokengate::admin::ROUTES {
        let path = p.replace("{id}", "1");
        let r = root
            .req(
                Method::from_bytes(m.as_bytes()).unwrap(),
                &path,
                Some(json!({})),
            )
            .await;
        if r.status == StatusCode::NOT_FOUND || r.status == StatusCode::METHOD_NOT_ALLOWED {
            assert_ne!(r.json()["code"], "ENDPOINT_NOT_FOUND", "{m} {p}");
            assert_ne!(r.json()["code"], "METHOD_NOT_ALLOWED", "{m} {p}");
        }
    }
}

#[tokio::test]
async fn every_mint_is_committed_with_its_audit_event_before_the_secret_is_returned() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;
    // Another handle on the store, with connections of its own: it sees
    // only what has been committed.
    let other = g.other_process_store().await;
    let committed = |secret: String, proxied: bool| {
        let (g, other) = (&g, &other);
        async move {
            let record = other
                .lookup(&tokengate::token::TokenHash::of(&secret))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{}… not committed when returned", &secret[..8]));
            let audit = other.list_audit(None, 1000).await.unwrap();
            assert!(
                audit.iter().any(|e| e.action == "token.issued"
                    && e.target_token_id.as_deref() == Some(record.token_id.as_str())),
                "no committed audit event for {}",
                record.token_id
            );
            if proxied {
                let r = g.get("/api/x", Some(&secret)).await;
                assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            }
            record.token_id
        }
    };
    let secret = |v: &Value| v["token"].as_str().unwrap().to_string();

    let t = root
        .req(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "Initech"})),
        )
        .await;
    assert_eq!(t.status, StatusCode::CREATED);
    let tenant = t.json()["id"].as_i64().unwrap();
    let admin_token = t.json()["admin_token"].as_str().unwrap().to_string();
    committed(admin_token.clone(), false).await;

    let r = root
        .req(
            Method::POST,
            &format!("/v1/tenants/{tenant}/admin-tokens"),
            Some(json!({"name": "second"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = committed(secret(&r.json()), false).await;
    assert_eq!(r.json()["id"], id.as_str());

    let acc = root
        .req(
            Method::POST,
            &format!("/v1/tenants/{tenant}/accounts"),
            Some(json!({"email": "m@initech.io", "name": "M"})),
        )
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let r = root
        .req(
            Method::POST,
            &format!("/v1/accounts/{acc}/sessions"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let session = secret(&r.json());
    let id = committed(session.clone(), true).await;
    assert_eq!(r.json()["id"], id.as_str());

    let r = root
        .req(
            Method::POST,
            &format!("/v1/accounts/{acc}/tokens"),
            Some(json!({"name": "api"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = committed(secret(&r.json()), true).await;
    assert_eq!(r.json()["id"], id.as_str());

    // A seed flow, on the public listener.
    let r = call(
        g.addr,
        Method::POST,
        "/api/v1/user/api-tokens",
        Some(&session),
        Some(json!({"name": "pat"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = committed(secret(&r.json()["data"]), true).await;
    assert_eq!(r.json()["data"]["id"], id.as_str());
}

/// Status, headers (less `date`) and body of a request over HTTP/1.1 or h2.
async fn exchange(
    addr: std::net::SocketAddr,
    h2: bool,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(h2)
            .build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(http_body_util::Full::default()).unwrap())
        .await
        .unwrap();
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove("date");
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;
    let tenants = format!("/v1/tenants/{}/accounts", g.tenant_id);
    for h2 in [false, true] {
        for (path, token) in [
            ("/healthz", None),
            ("/readyz", None),
            ("/metrics", None),
            ("/openapi.json", None),
            ("/v1/tenants", Some(root.token.as_str())),
            (tenants.as_str(), Some(root.token.as_str())),
            // Refused: the same 401 and its headers, no body.
            ("/v1/tenants", None),
        ] {
            let (gs, gh, gb) = exchange(g.admin_addr, h2, Method::GET, path, token).await;
            let (hs, hh, hb) = exchange(g.admin_addr, h2, Method::HEAD, path, token).await;
            let what = format!("{path} h2={h2}");
            assert_eq!(hs, gs, "{what}");
            assert!(!gb.is_empty(), "{what}: GET has a body");
            assert!(hb.is_empty(), "{what}: HEAD has none");
            if path == "/metrics" {
                // Counters, durations and the process's CPU time move
                // between the two requests, and the length with them: HEAD
                // states a length of its own, which a client must not
                // read a body after.
                assert!(
                    hh.contains_key("content-length"),
                    "{what}: HEAD states a length"
                );
                assert_eq!(hh["content-type"], gh["content-type"], "{what}");
            } else {
                assert_eq!(
                    hh["content-length"],
                    gb.len().to_string().as_str(),
                    "{what}: HEAD states GET's length"
                );
                assert_eq!(hh, gh, "{what}: same headers");
            }
        }
    }
}

#[tokio::test]
async fn every_405_on_the_admin_listener_says_what_is_allowed() {
    let g = TestGateway::spawn().await;
    let root = root(&g).await;
    for (method, path, allow) in [
        (Method::POST, "/healthz", "GET, HEAD"),
        (Method::DELETE, "/readyz", "GET, HEAD"),
        (Method::PUT, "/metrics", "GET, HEAD"),
        (Method::OPTIONS, "/openapi.json", "GET, HEAD"),
        (Method::PUT, "/v1/tenants", "GET, HEAD, POST"),
        (Method::GET, "/v1/tenants/1", "PATCH"),
        (Method::DELETE, "/v1/tenants/1/accounts", "GET, HEAD, POST"),
        (Method::GET, "/v1/tenants/1/admin-tokens", "POST"),
        (Method::DELETE, "/v1/accounts/1", "PATCH"),
        (Method::GET, "/v1/accounts/1/sessions", "POST"),
        (Method::PATCH, "/v1/accounts/1/tokens", "GET, HEAD, POST"),
        (Method::GET, "/v1/tokens/abc", "DELETE, PATCH"),
        (Method::POST, "/v1/tokens/abc/usage", "GET, HEAD"),
        // A literal segment wins: `verify` is no token id.
        (Method::GET, "/v1/tokens/verify", "POST"),
        (Method::DELETE, "/v1/tokens/verify", "POST"),
        (Method::POST, "/v1/audit", "GET, HEAD"),
    ] {
        // With a token and without: the method is refused before anything.
        for token in [Some(root.token.as_str()), None] {
            let r = call(g.admin_addr, method.clone(), path, token, None).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(r.code(), "METHOD_NOT_ALLOWED");
            assert_eq!(r.headers["allow"], allow, "{method} {path}");
        }
    }
    // Every 405 the admin router can give, derived from its table: each
    // path refuses each method it does not serve, naming those it does.
    for (_, template) in tokengate::admin::ROUTES {
        let path = template.replace("{id}", "1");
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let allow = tokengate::admin::allowed_methods(&segs).unwrap();
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            if allow.split(", ").any(|a| a == m) {
                continue;
            }
            let r = call(
                g.admin_addr,
                Method::from_bytes(m.as_bytes()).unwrap(),
                &path,
                Some(&root.token),
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            assert_eq!(r.headers["allow"], allow.as_str(), "{m} {path}");
        }
    }
    // No endpoint at all: 404, and no Allow.
    let r = root.req(Method::GET, "/nothing", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.headers.get("allow").is_none());
}
