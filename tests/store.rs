//! The store test suite, generic over `TokenStore`: every implementation
//! must pass it unchanged. Runs on SQLite in a temp directory, and on
//! PostgreSQL (`pg_*`, ignored by plain `cargo test`; `.ci/run` runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokengate::config::DatabaseUrl;
use tokengate::ratelimit::{Period, Quota, TokenRateLimit};
use tokengate::store::sqlite::SqliteStore;
use tokengate::store::{
    LimitsChange, NewAccount, NewAuditEvent, NewToken, Status, StoreError, TokenFilter, TokenStore,
};
use tokengate::token::{TokenFormat, TokenHash, TokenKind};

async fn sqlite() -> (Arc<dyn TokenStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("s.db").display()));
    let s = SqliteStore::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s.migrate().await.unwrap(); // idempotent
    (Arc::new(s), dir)
}

fn audit(action: &str, tenant: Option<i64>) -> NewAuditEvent {
    NewAuditEvent {
        at: 100,
        action: action.into(),
        tenant_id: tenant,
        outcome: "ok".into(),
        ..Default::default()
    }
}

fn new_token(kind: TokenKind, tenant: Option<i64>, account: Option<i64>) -> (NewToken, TokenHash) {
    let secret = TokenFormat::default().generate(kind);
    let hash = secret.hash();
    (
        NewToken {
            id: uuid_like(),
            kind,
            tenant_id: tenant,
            account_id: account,
            workspace_id: None,
            name: "t".into(),
            abilities: vec!["calls:read".into(), "reports:*".into()],
            display_prefix: secret.display_prefix().into(),
            hash,
            created_at: 100,
            expires_at: Some(1_000),
            created_by: None,
            rate_limit: None,
            quota: None,
        },
        hash,
    )
}

fn uuid_like() -> String {
    TokenFormat::default().generate(TokenKind::Api).expose()[4..40].to_string()
}

fn account(tenant: i64, email: &str) -> NewAccount {
    NewAccount {
        tenant_id: tenant,
        email: email.into(),
        name: "N".into(),
        external_id: Some("ext-1".into()),
        parent_account_id: None,
        workspace: Some("default".into()),
    }
}

/// The suite.
async fn suite(s: Arc<dyn TokenStore>) {
    s.ping().await.unwrap();

    // Tenants.
    let t1 = s
        .create_tenant("one", 100, &NewAuditEvent::default(), None)
        .await
        .unwrap()
        .0;
    let t2 = s
        .create_tenant("two", 101, &NewAuditEvent::default(), None)
        .await
        .unwrap()
        .0;
    assert_eq!(t1.status, Status::Active);
    assert_eq!(
        s.list_tenants().await.unwrap(),
        vec![t1.clone(), t2.clone()]
    );
    assert_eq!(s.get_tenant(t1.id).await.unwrap(), Some(t1.clone()));
    assert_eq!(s.get_tenant(9_999).await.unwrap(), None);

    // Accounts: unique email per tenant, 12-digit unique customer ids.
    let (a1, ws1) = s
        .create_account(
            &account(t1.id, "a@x.io"),
            100,
            &audit("account.created", Some(t1.id)),
        )
        .await
        .unwrap();
    let ws1 = ws1.unwrap();
    assert_eq!(ws1.account_id, a1.id);
    assert_eq!(a1.workspace_id, Some(ws1.id), "the workspace made with it");
    assert_eq!(a1.customer_id.len(), 12);
    assert!(a1.customer_id.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(a1.external_id.as_deref(), Some("ext-1"));
    assert!(matches!(
        s.create_account(
            &account(t1.id, "a@x.io"),
            100,
            &audit("account.created", Some(t1.id))
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    // Its event went in with it; the refused one wrote none.
    let created: Vec<_> = s
        .list_audit(Some(t1.id), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "account.created")
        .map(|e| e.detail)
        .collect();
    assert_eq!(created, [Some(format!("account {}", a1.id))]);
    let (a2, _) = s
        .create_account(
            &account(t2.id, "a@x.io"),
            100,
            &audit("account.created", None),
        )
        .await
        .unwrap();
    assert_ne!(a1.customer_id, a2.customer_id);
    let mut sub = account(t1.id, "sub@x.io");
    sub.parent_account_id = Some(a1.id);
    sub.workspace = None;
    let (child, none) = s
        .create_account(&sub, 100, &audit("account.created", None))
        .await
        .unwrap();
    assert_eq!(child.parent_account_id, Some(a1.id));
    assert!(none.is_none());
    let mut foreign = account(t2.id, "f@x.io");
    foreign.parent_account_id = Some(a1.id);
    assert!(matches!(
        s.create_account(&foreign, 100, &audit("account.created", None))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.list_accounts(t1.id, None).await.unwrap().len(), 2);
    assert_eq!(
        s.list_accounts(t1.id, Some("sub@x.io")).await.unwrap(),
        vec![child.clone()]
    );
    assert_eq!(
        s.find_account_by_customer_id(&a2.customer_id)
            .await
            .unwrap(),
        Some(a2.clone())
    );
    let ws2 = s.create_workspace(a1.id, "second", 100).await.unwrap();
    assert_eq!(
        s.list_workspaces(a1.id).await.unwrap(),
        vec![ws1.clone(), ws2]
    );
    // Every way of reading an account states its default workspace: the
    // first active one (the one made with it), none for an account made
    // without one.
    assert_eq!(child.workspace_id, None);
    let listed = s.list_accounts(t1.id, None).await.unwrap();
    assert_eq!(
        listed.iter().map(|a| a.workspace_id).collect::<Vec<_>>(),
        vec![Some(ws1.id), None]
    );
    assert_eq!(
        s.get_account(a1.id).await.unwrap().unwrap().workspace_id,
        Some(ws1.id)
    );
    assert_eq!(
        s.find_account_by_customer_id(&a1.customer_id)
            .await
            .unwrap()
            .unwrap()
            .workspace_id,
        Some(ws1.id)
    );

    // Tokens: insert, lookup joins statuses, hash is unique.
    let (tok, hash) = new_token(TokenKind::Api, Some(t1.id), Some(a1.id));
    let row = s
        .insert_token(&tok, &audit("token.issued", Some(t1.id)))
        .await
        .unwrap();
    assert_eq!(row.abilities, vec!["calls:read", "reports:*"]);
    assert_eq!(row.expires_at, Some(1_000));
    let rec = s.lookup(&hash).await.unwrap().unwrap();
    assert_eq!(rec.token_id, tok.id);
    assert_eq!(rec.account_status, Some(Status::Active));
    assert_eq!(rec.tenant_status, Some(Status::Active));
    assert_eq!(s.lookup(&TokenHash::of("nope")).await.unwrap(), None);
    let mut dup = new_token(TokenKind::Api, Some(t1.id), Some(a1.id)).0;
    dup.hash = hash;
    assert!(matches!(
        s.insert_token(&dup, &audit("token.issued", None)).await,
        Err(StoreError::Conflict(_))
    ));

    // Root tokens have no tenant or account.
    let (root, root_hash) = new_token(TokenKind::Root, None, None);
    s.insert_token(&root, &audit("token.issued", None))
        .await
        .unwrap();
    let rec = s.lookup(&root_hash).await.unwrap().unwrap();
    assert_eq!(
        (rec.kind, rec.tenant_status, rec.account_status),
        (TokenKind::Root, None, None)
    );

    // Status changes show in lookups.
    let blocked = s
        .set_account_status(
            a1.id,
            Status::Blocked,
            &audit("account.blocked", Some(t1.id)),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(blocked.workspace_id, Some(ws1.id));
    s.set_tenant_status(
        t1.id,
        Status::Blocked,
        &audit("tenant.blocked", Some(t1.id)),
    )
    .await
    .unwrap()
    .unwrap();
    let rec = s.lookup(&hash).await.unwrap().unwrap();
    assert_eq!(rec.account_status, Some(Status::Blocked));
    assert_eq!(rec.tenant_status, Some(Status::Blocked));
    assert!(s
        .set_account_status(9_999, Status::Blocked, &audit("x", None))
        .await
        .unwrap()
        .is_none());

    // Listings.
    let (other, _) = new_token(TokenKind::Api, Some(t2.id), Some(a2.id));
    s.insert_token(&other, &audit("token.issued", Some(t2.id)))
        .await
        .unwrap();
    assert_eq!(
        s.list_tokens(TokenFilter::Account(a1.id))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.list_tokens(TokenFilter::Tenant(t2.id))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.list_tokens(TokenFilter::All).await.unwrap().len(), 3);

    // Revocation is idempotent: the first time stays.
    let r = s
        .revoke_token(&tok.id, 500, &audit("token.revoked", Some(t1.id)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.hash, hash);
    assert_eq!(r.row.revoked_at, Some(500));
    let r = s
        .revoke_token(&tok.id, 600, &audit("token.revoked", Some(t1.id)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.row.revoked_at, Some(500));
    assert_eq!(
        s.lookup(&hash).await.unwrap().unwrap().revoked_at,
        Some(500)
    );
    assert!(s
        .revoke_token("missing", 1, &audit("x", None))
        .await
        .unwrap()
        .is_none());

    // Last-used never goes backwards.
    s.touch_last_used(&[(tok.id.clone(), 700), (other.id.clone(), 650)])
        .await
        .unwrap();
    s.touch_last_used(&[(tok.id.clone(), 690)]).await.unwrap();
    assert_eq!(
        s.get_token(&tok.id).await.unwrap().unwrap().last_used_at,
        Some(700)
    );
    s.touch_last_used(&[]).await.unwrap();
    // A batch larger than one statement's worth of rows.
    let many: Vec<(String, i64)> = (0..1000)
        .map(|i| (format!("missing-{i}"), 1))
        .chain([(tok.id.clone(), 800)])
        .collect();
    s.touch_last_used(&many).await.unwrap();
    assert_eq!(
        s.get_token(&tok.id).await.unwrap().unwrap().last_used_at,
        Some(800)
    );

    // A token's own limit and quota, and its quota counts added in batches.
    let change = LimitsChange {
        rate_limit: Some(Some(TokenRateLimit::new(10, 60).unwrap())),
        quota: Some(Some(Quota::new(100, Period::Day).unwrap())),
    };
    let changed = s
        .set_token_limits(
            &tok.id,
            &change,
            &audit("token.limits_changed", tok.tenant_id),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.row.rate_limit, change.rate_limit.unwrap());
    assert_eq!(changed.row.quota, change.quota.unwrap());
    let listed = s.get_token(&tok.id).await.unwrap().unwrap();
    assert_eq!(listed.quota, change.quota.unwrap());
    let day = 86_400 * 20_000;
    let id = tok.id.clone();
    assert_eq!(
        s.add_quota_counts(&[(id.clone(), day, 3)]).await.unwrap(),
        vec![(id.clone(), day, 3)]
    );
    assert_eq!(
        s.add_quota_counts(&[(id.clone(), day, 2), ("no-such-token".into(), day, 1)])
            .await
            .unwrap(),
        vec![(id.clone(), day, 5)]
    );
    // A count of an earlier period is dropped; a later one starts afresh.
    assert!(s
        .add_quota_counts(&[(id.clone(), day - 86_400, 7)])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.add_quota_counts(&[(id.clone(), day + 86_400, 4)])
            .await
            .unwrap(),
        vec![(id.clone(), day + 86_400, 4)]
    );
    // Removing the quota (and leaving the limit) keeps the count.
    let removed = LimitsChange {
        rate_limit: None,
        quota: Some(None),
    };
    let changed = s
        .set_token_limits(&id, &removed, &audit("token.limits_changed", tok.tenant_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.row.quota, None);
    assert_eq!(changed.row.rate_limit, change.rate_limit.unwrap());
    let record = s.lookup(&changed.hash).await.unwrap().unwrap();
    assert_eq!(record.limits.rate_limit, change.rate_limit.unwrap());
    assert_eq!(record.limits.quota, None);
    assert_eq!(
        (record.limits.quota_used, record.limits.quota_period_start),
        (4, day + 86_400)
    );
    assert!(s
        .set_token_limits("no-such-token", &removed, &audit("x", None))
        .await
        .unwrap()
        .is_none());

    // Audit: newest first, tenant-scoped on request.
    s.append_audit(&audit("custom", Some(t2.id))).await.unwrap();
    let all = s.list_audit(None, 100).await.unwrap();
    assert!(all.len() >= 8, "{}", all.len());
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all[0].action, "custom");
    let t2_events = s.list_audit(Some(t2.id), 100).await.unwrap();
    assert!(t2_events.iter().all(|e| e.tenant_id == Some(t2.id)));
    assert_eq!(s.list_audit(None, 2).await.unwrap().len(), 2);

    // A tenant with its first token: written together, events included,
    // or not at all.
    let tenants = s.list_tenants().await.unwrap().len();
    let events = s.list_audit(None, 1_000).await.unwrap().len();
    let (first, first_hash) = new_token(TokenKind::TenantAdmin, None, None);
    let (t3, row) = s
        .create_tenant(
            "three",
            102,
            &audit("tenant.created", None),
            Some((&first, &audit("token.issued", None))),
        )
        .await
        .unwrap();
    let row = row.unwrap();
    assert_eq!(
        (row.id.as_str(), row.tenant_id),
        (first.id.as_str(), Some(t3.id))
    );
    let record = s.lookup(&first_hash).await.unwrap().unwrap();
    assert_eq!(record.tenant_id, Some(t3.id));
    let mut t3_events: Vec<_> = s
        .list_audit(Some(t3.id), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    t3_events.sort();
    assert_eq!(t3_events, ["tenant.created", "token.issued"]);
    // The same token id again: its insert fails, and with it the tenant
    // and both events.
    let (mut clash, _) = new_token(TokenKind::TenantAdmin, None, None);
    clash.id = first.id.clone();
    assert!(s
        .create_tenant(
            "four",
            103,
            &audit("tenant.created", None),
            Some((&clash, &audit("token.issued", None))),
        )
        .await
        .is_err());
    assert_eq!(s.list_tenants().await.unwrap().len(), tenants + 1);
    assert_eq!(s.list_audit(None, 1_000).await.unwrap().len(), events + 2);
}

#[tokio::test]
async fn sqlite_passes_the_store_suite() {
    let (s, _dir) = sqlite().await;
    suite(s).await;
}

#[tokio::test]
async fn sqlite_store_survives_reopen() {
    let (s, dir) = sqlite().await;
    let t = s
        .create_tenant("kept", 1, &NewAuditEvent::default(), None)
        .await
        .unwrap()
        .0;
    drop(s);
    let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("s.db").display()));
    let s = SqliteStore::connect(&url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    s.migrate().await.unwrap();
    assert_eq!(s.get_tenant(t.id).await.unwrap(), Some(t));
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TOKENGATE_TEST_DATABASE_URL; run by .ci/run"]
async fn pg_postgres_passes_the_store_suite() {
    let (_, url) = common::pg::fresh_url().await;
    let url = DatabaseUrl::new(url);
    let s = tokengate::store::open(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    s.migrate().await.unwrap(); // idempotent
    suite(s).await;
}

#[tokio::test]
async fn sqlite_concurrent_writes_queue_instead_of_failing() {
    let (s, _dir) = sqlite().await;
    let t = s
        .create_tenant("busy", 1, &NewAuditEvent::default(), None)
        .await
        .unwrap()
        .0;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = Arc::clone(&s);
        // Every email twice: half the calls conflict and roll back while
        // the others write.
        let email = format!("u{}@x.io", i / 2);
        tasks.push(tokio::spawn(async move {
            s.create_account(&account(t.id, &email), 2, &audit("account.created", None))
                .await
        }));
    }
    let (mut ok, mut conflict) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict(_)) => conflict += 1,
            Err(e) => panic!("a concurrent write failed instead of waiting: {e}"),
        }
    }
    assert_eq!((ok, conflict), (20, 20));
}

// ------------------------------------------------- start-up errors

/// A store that cannot be opened says where and why, never with the
/// password, and never just "pool timed out".
fn assert_names_host_and_cause(err: &str, host: &str, cause: &str) {
    assert!(err.contains(host), "no host in: {err}");
    assert!(err.contains(cause), "no cause {cause:?} in: {err}");
    assert!(!err.contains("s3cret-pw"), "password in: {err}");
    assert!(!err.contains("timed out"), "{err}");
}

#[tokio::test]
async fn postgres_refused_names_host_and_cause() {
    let port = common::dead_port().await;
    let url = DatabaseUrl::new(format!("postgres://app:s3cret-pw@127.0.0.1:{port}/tg"));
    let started = std::time::Instant::now();
    let err = tokengate::store::open(&url, 2, Duration::from_millis(800))
        .await
        .err()
        .unwrap()
        .to_string();
    assert_names_host_and_cause(&err, &format!("127.0.0.1:{port}"), "connection refused");
    assert!(err.contains("user \"app\""), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retried within the timeout only"
    );
}

/// A PostgreSQL server that refuses every login the way a wrong password
/// is refused: `SSLRequest` -> `N`, `StartupMessage` -> `ErrorResponse`
/// with SQLSTATE 28P01 (the wire protocol, spoken by hand).
async fn refusing_postgres() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    if s.read_exact(&mut rest).await.is_err() {
                        return;
                    }
                    if rest[..4] == 80_877_103u32.to_be_bytes() {
                        s.write_all(b"N").await.unwrap(); // no TLS
                        continue;
                    }
                    let mut fields = Vec::new();
                    for (k, v) in [
                        (b'S', "FATAL"),
                        (b'V', "FATAL"),
                        (b'C', "28P01"),
                        (b'M', "password authentication failed for user \"app\""),
                    ] {
                        fields.push(k);
                        fields.extend_from_slice(v.as_bytes());
                        fields.push(0);
                    }
                    fields.push(0);
                    let mut msg = vec![b'E'];
                    msg.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                    msg.extend_from_slice(&fields);
                    let _ = s.write_all(&msg).await;
                    return;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn postgres_authentication_failure_names_host_and_cause() {
    let addr = refusing_postgres().await;
    let url = DatabaseUrl::new(format!("postgres://app:s3cret-pw@{addr}/tg"));
    let err = tokengate::store::open(&url, 2, Duration::from_secs(5))
        .await
        .err()
        .unwrap()
        .to_string();
    assert_names_host_and_cause(&err, &addr.to_string(), "authentication failed");
    assert!(
        err.contains("password authentication failed for user \"app\""),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_unknown_role_names_host_and_cause() {
    let Some(base) = common::pg::base_url("postgres_unknown_role_names_host_and_cause") else {
        return;
    };
    // The test server's host and port, with a role that does not exist.
    let rest = base.split_once("://").unwrap().1;
    let host_and_db = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host_and_db.split(['/', '?']).next().unwrap();
    let url = DatabaseUrl::new(format!(
        "postgres://tg_no_such_role:s3cret-pw@{host_and_db}"
    ));
    let err = tokengate::store::open(&url, 2, Duration::from_secs(5))
        .await
        .err()
        .unwrap()
        .to_string();
    assert_names_host_and_cause(&err, host, "authentication failed");
    assert!(err.contains("tg_no_such_role"), "{err}");
}

#[tokio::test]
async fn sqlite_that_cannot_be_opened_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file should be.
    let file = dir.path().join("db");
    std::fs::create_dir(&file).unwrap();
    let url = DatabaseUrl::new(format!("sqlite://{}", file.display()));
    let err = tokengate::store::open(&url, 1, Duration::from_secs(1))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
}
