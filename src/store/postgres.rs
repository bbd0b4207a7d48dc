//! The PostgreSQL store, for several gateway instances sharing one database.
//!
//! Same schema and semantics as the SQLite store (one test suite runs on
//! both), plus cross-instance invalidation: every change that can make a
//! cached record wrong (revocation, mint, tenant or account block) sends
//! `pg_notify` *inside its own transaction*, so the notification is delivered
//! exactly when the change commits, and never for a change that rolled back.
//! [`PgStore::subscribe`] gives each instance a feed of them over a dedicated
//! `LISTEN` connection.
//!
//! The channel is `tokengate_inv_<schema>`, after the connection's
//! `current_schema()`, so deployments (and test runs) in different schemas of
//! one database never see each other's events. Pick a schema with
//! `?options=-c%20search_path%3Dmyschema` in `store.url`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::rows::{
    account, audit_event, auth_record, changed_token, tenant, token_row, workspace, ACCOUNT_COLUMNS,
};
use super::sqlite::random_customer_id;
use super::DatabaseUrl;
use super::{
    Account, AuditEvent, AuthRecord, FeedEvent, Invalidation, InvalidationFeed, LimitsChange,
    NewAccount, NewAuditEvent, NewToken, QuotaCounts, Revoked, Status, StoreError, Tenant,
    TokenFilter, TokenLookup, TokenRow, TokenStore, Workspace,
};
use crate::token::TokenHash;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Attempts at drawing an unused random customer id before giving up.
const CUSTOMER_ID_ATTEMPTS: usize = 8;
/// First and largest pause between attempts to re-establish `LISTEN`.
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// `application_name` of the pooled connections and of the listener.
pub const APP_NAME: &str = "tokengate";
/// `application_name` of the `LISTEN` connection (distinct, so operators and
/// tests can find it in `pg_stat_activity`).
pub const LISTENER_APP_NAME: &str = "tokengate-listen";

/// PostgreSQL-backed [`TokenStore`].
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    channel: String,
    timeout: Duration,
}

impl PgStore {
    /// Connects a pool to a `postgres://` URL.
    pub async fn connect(
        url: &DatabaseUrl,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|e| StoreError::Other(format!("bad store.url {url}: {e}")))?
            .application_name(APP_NAME);
        // The pool retries a refused connection until its timeout and then
        // says only "pool timed out"; one connection first says why not.
        first_connection(&options, timeout).await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&pool)
            .await?;
        let mut channel = format!("tokengate_inv_{schema}");
        channel.retain(|c| c.is_ascii_alphanumeric() || c == '_');
        channel.truncate(63);
        Ok(Self {
            pool,
            options,
            channel,
            timeout,
        })
    }

    /// The notification channel this store's instances share.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

/// `host:port` (or the socket) and the user and database a start-up error
/// names; never the password.
fn target(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!(
        "{place} (user {:?}, database {:?})",
        options.get_username(),
        options.get_database().unwrap_or(options.get_username())
    )
}

/// Why a connection attempt failed, in an operator's words. The server's
/// own messages (`password authentication failed for user "app"`) never
/// carry the password.
fn cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is PostgreSQL running and listening there?)".into()
        }
        sqlx::Error::Io(io) => format!("network error: {io}"),
        sqlx::Error::Tls(tls) => format!("TLS failed: {tls}"),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if code.starts_with("28") {
                // 28P01 invalid_password, 28000 invalid_authorization_specification
                // (no such role, no pg_hba.conf entry).
                format!("authentication failed: {}", db.message())
            } else {
                format!("refused by the server: {} (SQLSTATE {code})", db.message())
            }
        }
        other => other.to_string(),
    }
}

/// Opens (and closes) one connection, retrying a refused one until
/// `timeout` as the pool would (the server may be starting); fails with the
/// host and the cause.
async fn first_connection(options: &PgConnectOptions, timeout: Duration) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions, Connection};
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(10);
    let failed = |why: String| {
        StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: {why}",
            target(options)
        ))
    };
    loop {
        match tokio::time::timeout_at(deadline, options.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(e)) => {
                let retry = match &e {
                    sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
                    sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
                    _ => false,
                };
                if !retry || tokio::time::Instant::now() + backoff >= deadline {
                    return Err(failed(cause(&e)));
                }
            }
            Err(_) => {
                return Err(failed(format!(
                    "no answer within {} s (store.timeout_seconds)",
                    timeout.as_secs_f32()
                )))
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn notify<'c, E>(exec: E, channel: &str, inv: Invalidation) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(inv.encode())
        .execute(exec)
        .await?;
    Ok(())
}

const TOKEN_COLUMNS: &str = "id, kind, tenant_id, account_id, workspace_id, name, abilities, \
     display_prefix, created_at, expires_at, revoked_at, last_used_at, created_by, \
     rate_limit_requests, rate_limit_window_seconds, quota_requests, quota_period, quota_used, quota_period_start";

/// Inserts a token's row (its event and notification are the caller's to
/// write, in the same transaction).
async fn insert_token_row<'c, E>(exec: E, t: &NewToken) -> Result<TokenRow, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let abilities = serde_json::to_string(&t.abilities)
        .map_err(|e| StoreError::Other(format!("abilities: {e}")))?;
    let r = sqlx::query(&format!(
        "INSERT INTO tokens (id, kind, tenant_id, account_id, workspace_id, name, abilities, \
                             display_prefix, hash, created_at, expires_at, created_by, \
                             rate_limit_requests, rate_limit_window_seconds, quota_requests, \
                             quota_period) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(&t.id)
    .bind(t.kind.as_str())
    .bind(t.tenant_id)
    .bind(t.account_id)
    .bind(t.workspace_id)
    .bind(&t.name)
    .bind(&abilities)
    .bind(&t.display_prefix)
    .bind(&t.hash.0[..])
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(&t.created_by)
    .bind(t.rate_limit.map(|l| i64::from(l.requests)))
    .bind(t.rate_limit.map(|l| i64::from(l.window_seconds)))
    .bind(t.quota.map(|q| i64::from(q.requests)))
    .bind(t.quota.map(|q| q.period.as_str()))
    .fetch_one(exec)
    .await?;
    token_row(&r)
}

async fn insert_audit<'c, E>(exec: E, e: &NewAuditEvent) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query(
        "INSERT INTO audit_events (at, action, actor_token_id, tenant_id, target_token_id, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(e.at)
    .bind(&e.action)
    .bind(&e.actor_token_id)
    .bind(e.tenant_id)
    .bind(&e.target_token_id)
    .bind(&e.outcome)
    .bind(&e.detail)
    .execute(exec)
    .await?;
    Ok(())
}

#[async_trait]
impl TokenLookup for PgStore {
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<AuthRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id, t.kind, t.tenant_id, t.account_id, t.workspace_id, t.name, t.abilities, \
                    t.expires_at, t.revoked_at, a.status AS account_status, n.status AS tenant_status, \
                    t.rate_limit_requests, t.rate_limit_window_seconds, t.quota_requests, \
                    t.quota_period, t.quota_used, t.quota_period_start \
             FROM tokens t \
             LEFT JOIN accounts a ON a.id = t.account_id \
             LEFT JOIN tenants n ON n.id = t.tenant_id \
             WHERE t.hash = $1",
        )
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(auth_record).transpose()
    }
}

#[async_trait]
impl TokenStore for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_tenant(
        &self,
        name: &str,
        now: i64,
        audit: &NewAuditEvent,
        first_token: Option<(&NewToken, &NewAuditEvent)>,
    ) -> Result<(Tenant, Option<TokenRow>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO tenants (name, status, created_at) VALUES ($1, 'active', $2) \
             RETURNING id, name, status, created_at",
        )
        .bind(name)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let t = tenant(&r)?;
        insert_audit(&mut *tx, &audit.in_tenant(t.id)).await?;
        let token = match first_token {
            Some((token, event)) => {
                let token = token.in_tenant(t.id);
                let row = insert_token_row(&mut *tx, &token).await?;
                insert_audit(&mut *tx, &event.in_tenant(t.id)).await?;
                // Other instances may hold a negative entry for this hash.
                notify(&mut *tx, &self.channel, Invalidation::Token(token.hash)).await?;
                Some(row)
            }
            None => None,
        };
        tx.commit().await?;
        Ok((t, token))
    }

    async fn get_tenant(&self, id: i64) -> Result<Option<Tenant>, StoreError> {
        sqlx::query("SELECT id, name, status, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(tenant)
            .transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        sqlx::query("SELECT id, name, status, created_at FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(tenant)
            .collect()
    }

    async fn set_tenant_status(
        &self,
        id: i64,
        new: Status,
        audit: &NewAuditEvent,
    ) -> Result<Option<Tenant>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE tenants SET status = $1 WHERE id = $2 RETURNING id, name, status, created_at",
        )
        .bind(new.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else { return Ok(None) };
        insert_audit(&mut *tx, audit).await?;
        notify(&mut *tx, &self.channel, Invalidation::Tenant(id)).await?;
        tx.commit().await?;
        tenant(&r).map(Some)
    }

    async fn create_account(
        &self,
        new: &NewAccount,
        now: i64,
        audit: &NewAuditEvent,
    ) -> Result<(Account, Option<Workspace>), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(parent) = new.parent_account_id {
            let same_tenant: Option<i64> =
                sqlx::query_scalar("SELECT id FROM accounts WHERE id = $1 AND tenant_id = $2")
                    .bind(parent)
                    .bind(new.tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if same_tenant.is_none() {
                return Err(StoreError::NotFound(format!("parent account {parent}")));
            }
        }
        let mut created = None;
        for _ in 0..CUSTOMER_ID_ATTEMPTS {
            let customer_id = random_customer_id();
            let taken: Option<i64> =
                sqlx::query_scalar("SELECT id FROM accounts WHERE customer_id = $1")
                    .bind(&customer_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                continue;
            }
            let r = sqlx::query(&format!(
                "INSERT INTO accounts (tenant_id, email, name, customer_id, external_id, parent_account_id, status, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'active', $7) RETURNING {ACCOUNT_COLUMNS}"
            ))
            .bind(new.tenant_id)
            .bind(&new.email)
            .bind(&new.name)
            .bind(&customer_id)
            .bind(&new.external_id)
            .bind(new.parent_account_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            created = Some(account(&r)?);
            break;
        }
        let mut acc = created.ok_or_else(|| StoreError::Other("no free customer id".into()))?;
        let ws = match &new.workspace {
            Some(name) => {
                let r = sqlx::query(
                    "INSERT INTO workspaces (account_id, name, status, created_at) VALUES ($1, $2, 'active', $3) \
                     RETURNING id, account_id, name, status, created_at",
                )
                .bind(acc.id)
                .bind(name)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                Some(workspace(&r)?)
            }
            None => None,
        };
        acc.workspace_id = ws.as_ref().map(|w| w.id);
        insert_audit(&mut *tx, &audit.naming_account(acc.id)).await?;
        tx.commit().await?;
        Ok((acc, ws))
    }

    async fn get_account(&self, id: i64) -> Result<Option<Account>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(account)
        .transpose()
    }

    async fn list_accounts(
        &self,
        tenant_id: i64,
        email: Option<&str>,
    ) -> Result<Vec<Account>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts \
             WHERE tenant_id = $1 AND ($2::text IS NULL OR email = $2) ORDER BY id"
        ))
        .bind(tenant_id)
        .bind(email)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(account)
        .collect()
    }

    async fn find_account_by_customer_id(
        &self,
        customer_id: &str,
    ) -> Result<Option<Account>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE customer_id = $1"
        ))
        .bind(customer_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(account)
        .transpose()
    }

    async fn set_account_status(
        &self,
        id: i64,
        new: Status,
        audit: &NewAuditEvent,
    ) -> Result<Option<Account>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(&format!(
            "UPDATE accounts SET status = $1 WHERE id = $2 RETURNING {ACCOUNT_COLUMNS}"
        ))
        .bind(new.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else { return Ok(None) };
        insert_audit(&mut *tx, audit).await?;
        notify(&mut *tx, &self.channel, Invalidation::Account(id)).await?;
        tx.commit().await?;
        account(&r).map(Some)
    }

    async fn create_workspace(
        &self,
        account_id: i64,
        name: &str,
        now: i64,
    ) -> Result<Workspace, StoreError> {
        let r = sqlx::query(
            "INSERT INTO workspaces (account_id, name, status, created_at) VALUES ($1, $2, 'active', $3) \
             RETURNING id, account_id, name, status, created_at",
        )
        .bind(account_id)
        .bind(name)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        workspace(&r)
    }

    async fn list_workspaces(&self, account_id: i64) -> Result<Vec<Workspace>, StoreError> {
        sqlx::query(
            "SELECT id, account_id, name, status, created_at FROM workspaces WHERE account_id = $1 ORDER BY id",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(workspace)
        .collect()
    }

    async fn insert_token(
        &self,
        t: &NewToken,
        audit: &NewAuditEvent,
    ) -> Result<TokenRow, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = insert_token_row(&mut *tx, t).await?;
        insert_audit(&mut *tx, audit).await?;
        // Other instances may hold a negative entry for this hash.
        notify(&mut *tx, &self.channel, Invalidation::Token(t.hash)).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(token_row)
            .transpose()
    }

    async fn list_tokens(&self, filter: TokenFilter) -> Result<Vec<TokenRow>, StoreError> {
        let (clause, id) = match filter {
            TokenFilter::Account(id) => ("WHERE account_id = $1", Some(id)),
            TokenFilter::Tenant(id) => ("WHERE tenant_id = $1", Some(id)),
            TokenFilter::All => ("", None),
        };
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens {clause} ORDER BY created_at DESC, id DESC"
        );
        let mut q = sqlx::query(&sql);
        if let Some(id) = id {
            q = q.bind(id);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(token_row)
            .collect()
    }

    async fn revoke_token(
        &self,
        id: &str,
        now: i64,
        audit: &NewAuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(&format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 \
             RETURNING {TOKEN_COLUMNS}, hash"
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else { return Ok(None) };
        let changed = changed_token(&r)?;
        insert_audit(&mut *tx, audit).await?;
        notify(&mut *tx, &self.channel, Invalidation::Token(changed.hash)).await?;
        tx.commit().await?;
        Ok(Some(changed))
    }

    async fn touch_last_used(&self, batch: &[(String, i64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (ids, ats): (Vec<&str>, Vec<i64>) = batch.iter().map(|(i, t)| (i.as_str(), *t)).unzip();
        // One statement for the whole batch.
        sqlx::query(
            "UPDATE tokens t SET last_used_at = GREATEST(COALESCE(t.last_used_at, 0), v.at) \
             FROM UNNEST($1::text[], $2::bigint[]) AS v(id, at) WHERE t.id = v.id",
        )
        .bind(&ids)
        .bind(&ats)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_token_limits(
        &self,
        id: &str,
        change: &LimitsChange,
        audit: &NewAuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        let rate = change.rate_limit;
        let quota = change.quota;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(&format!(
            "UPDATE tokens SET \
               rate_limit_requests = CASE WHEN $1 THEN $2 ELSE rate_limit_requests END, \
               rate_limit_window_seconds = CASE WHEN $3 THEN $4 ELSE rate_limit_window_seconds END, \
               quota_requests = CASE WHEN $5 THEN $6 ELSE quota_requests END, \
               quota_period = CASE WHEN $7 THEN $8 ELSE quota_period END \
             WHERE id = $9 RETURNING {TOKEN_COLUMNS}, hash"
        ))
        .bind(rate.is_some())
        .bind(rate.flatten().map(|l| i64::from(l.requests)))
        .bind(rate.is_some())
        .bind(rate.flatten().map(|l| i64::from(l.window_seconds)))
        .bind(quota.is_some())
        .bind(quota.flatten().map(|q| i64::from(q.requests)))
        .bind(quota.is_some())
        .bind(quota.flatten().map(|q| q.period.as_str()))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else { return Ok(None) };
        let changed = changed_token(&r)?;
        insert_audit(&mut *tx, audit).await?;
        notify(&mut *tx, &self.channel, Invalidation::Token(changed.hash)).await?;
        tx.commit().await?;
        Ok(Some(changed))
    }

    async fn add_quota_counts(
        &self,
        batch: &QuotaCounts,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let mut out = Vec::with_capacity(batch.len());
        if batch.is_empty() {
            return Ok(out);
        }
        // One transaction for the batch; a statement per token (a batch
        // holds the tokens with a quota used since the last one).
        let mut tx = self.pool.begin().await?;
        for (id, start, n) in batch {
            let used: Option<i64> = sqlx::query_scalar(
                "UPDATE tokens SET \
               quota_used = CASE WHEN quota_period_start = $1 THEN quota_used + $2 ELSE $3 END, \
               quota_period_start = $4 \
             WHERE id = $5 AND quota_period_start <= $6 RETURNING quota_used",
            )
            .bind(start)
            .bind(n)
            .bind(n)
            .bind(start)
            .bind(id)
            .bind(start)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(used) = used {
                out.push((id.clone(), *start, used));
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn append_audit(&self, event: &NewAuditEvent) -> Result<(), StoreError> {
        insert_audit(&self.pool, event).await
    }

    async fn list_audit(
        &self,
        tenant_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        sqlx::query(
            "SELECT id, at, action, actor_token_id, tenant_id, target_token_id, outcome, detail \
             FROM audit_events WHERE ($1::bigint IS NULL OR tenant_id = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(tenant_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(audit_event)
        .collect()
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn InvalidationFeed>>, StoreError> {
        let mut feed = PgFeed {
            options: self.options.clone().application_name(LISTENER_APP_NAME),
            channel: self.channel.clone(),
            timeout: self.timeout,
            listener: None,
            backoff: LISTEN_BACKOFF_MIN,
            resync_due: false,
        };
        // Listen before the gateway serves, so nothing cached can predate it.
        feed.listener = Some(feed.listen().await?);
        Ok(Some(Box::new(feed)))
    }
}

/// The `LISTEN` side: one dedicated connection, re-established with
/// exponential backoff when it drops.
struct PgFeed {
    options: PgConnectOptions,
    channel: String,
    timeout: Duration,
    listener: Option<PgListener>,
    backoff: Duration,
    /// Set when the connection dropped: once listening again, the consumer
    /// must drop its cache, since events may have been missed meanwhile.
    resync_due: bool,
}

impl PgFeed {
    async fn listen(&self) -> Result<PgListener, StoreError> {
        // A pool of one, so the listener's connection has its own name and
        // is not taken from the query pool.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.timeout)
            .connect_with(self.options.clone())
            .await?;
        let mut l = PgListener::connect_with(&pool).await?;
        l.listen(&self.channel).await?;
        Ok(l)
    }
}

#[async_trait]
impl InvalidationFeed for PgFeed {
    async fn next(&mut self) -> FeedEvent {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                match self.listen().await {
                    Ok(l) => {
                        tracing::info!(channel = %self.channel, "invalidation feed listening again");
                        self.listener = Some(l);
                        self.backoff = LISTEN_BACKOFF_MIN;
                        if std::mem::take(&mut self.resync_due) {
                            return FeedEvent::Resynced;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "invalidation feed cannot reconnect");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(LISTEN_BACKOFF_MAX);
                    }
                }
                continue;
            };
            match listener.try_recv().await {
                Ok(Some(n)) => match Invalidation::decode(n.payload()) {
                    Some(inv) => return FeedEvent::Invalidate(inv),
                    None => tracing::warn!(payload = n.payload(), "ignoring unknown invalidation"),
                },
                Ok(None) => {
                    tracing::warn!("invalidation feed connection lost; reconnecting");
                    self.listener = None;
                    self.resync_due = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "invalidation feed failed; reconnecting");
                    self.listener = None;
                    self.resync_due = true;
                }
            }
        }
    }
}
