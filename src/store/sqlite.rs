//! The embedded default store: one SQLite file in WAL mode.
//!
//! WAL lets the request path's lookups read while the control plane
//! writes. SQLite allows one writer at a time; `busy_timeout` makes a second
//! writer wait instead of failing. Migrations are embedded in the binary and
//! run on open.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::rows::{
    account, audit_event, auth_record, changed_token, tenant, token_row, workspace, ACCOUNT_COLUMNS,
};
use super::DatabaseUrl;
use super::{
    Account, AuditEvent, AuthRecord, LimitsChange, NewAccount, NewAuditEvent, NewToken,
    QuotaCounts, Revoked, Status, StoreError, Tenant, TokenFilter, TokenLookup, TokenRow,
    TokenStore, Workspace,
};
use crate::token::TokenHash;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per last-used statement (two parameters each; SQLite's historical
/// limit is 999 parameters per statement).
const LAST_USED_CHUNK: usize = 400;

/// Attempts at drawing an unused random customer id before giving up.
const CUSTOMER_ID_ATTEMPTS: usize = 8;

/// SQLite-backed [`TokenStore`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// A write transaction that takes SQLite's write lock at `BEGIN`.
    ///
    /// A deferred transaction that reads first and writes later fails at
    /// once with `SQLITE_BUSY` (no `busy_timeout` wait) when another
    /// connection holds the write lock: WAL cannot upgrade a stale read
    /// snapshot. `BEGIN IMMEDIATE` waits for the lock instead, so concurrent
    /// control-plane writes queue rather than fail.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Opens (creating if needed) the database file a `sqlite:` URL names.
    pub async fn connect(
        url: &DatabaseUrl,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url.expose())
            .map_err(|e| StoreError::Other(format!("bad store.url {url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(timeout);
        if let Some(dir) = opts.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Other(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let file = opts.get_filename().to_path_buf();
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(opts)
            .await
            .map_err(|e| {
                StoreError::Other(format!(
                    "cannot open the SQLite database {}: {e}",
                    file.display()
                ))
            })?;
        Ok(Self { pool })
    }
}

const TOKEN_COLUMNS: &str = "id, kind, tenant_id, account_id, workspace_id, name, abilities, \
     display_prefix, created_at, expires_at, revoked_at, last_used_at, created_by, \
     rate_limit_requests, rate_limit_window_seconds, quota_requests, quota_period, quota_used, quota_period_start";

async fn insert_audit<'c, E>(exec: E, e: &NewAuditEvent) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO audit_events (at, action, actor_token_id, tenant_id, target_token_id, outcome, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
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

/// Inserts a token's row (its event is the caller's to write, in the same
/// transaction).
async fn insert_token_row<'c, E>(exec: E, t: &NewToken) -> Result<TokenRow, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let abilities = serde_json::to_string(&t.abilities)
        .map_err(|e| StoreError::Other(format!("abilities: {e}")))?;
    let r = sqlx::query(&format!(
        "INSERT INTO tokens (id, kind, tenant_id, account_id, workspace_id, name, abilities, \
                             display_prefix, hash, created_at, expires_at, created_by, \
                             rate_limit_requests, rate_limit_window_seconds, quota_requests, \
                             quota_period) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {TOKEN_COLUMNS}"
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

/// A random 12-digit customer id (leading zeros allowed, as documented).
pub(crate) fn random_customer_id() -> String {
    format!(
        "{:012}",
        rand::rngs::OsRng.gen_range(0..1_000_000_000_000u64)
    )
}

#[async_trait]
impl TokenLookup for SqliteStore {
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<AuthRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id, t.kind, t.tenant_id, t.account_id, t.workspace_id, t.name, t.abilities, \
                    t.expires_at, t.revoked_at, a.status AS account_status, n.status AS tenant_status, \
                    t.rate_limit_requests, t.rate_limit_window_seconds, t.quota_requests, \
                    t.quota_period, t.quota_used, t.quota_period_start \
             FROM tokens t \
             LEFT JOIN accounts a ON a.id = t.account_id \
             LEFT JOIN tenants n ON n.id = t.tenant_id \
             WHERE t.hash = ?",
        )
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(auth_record).transpose()
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
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
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "INSERT INTO tenants (name, status, created_at) VALUES (?, 'active', ?) \
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
                Some(row)
            }
            None => None,
        };
        tx.commit().await?;
        Ok((t, token))
    }

    async fn get_tenant(&self, id: i64) -> Result<Option<Tenant>, StoreError> {
        sqlx::query("SELECT id, name, status, created_at FROM tenants WHERE id = ?")
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
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "UPDATE tenants SET status = ? WHERE id = ? RETURNING id, name, status, created_at",
        )
        .bind(new.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else { return Ok(None) };
        insert_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        tenant(&r).map(Some)
    }

    async fn create_account(
        &self,
        new: &NewAccount,
        now: i64,
        audit: &NewAuditEvent,
    ) -> Result<(Account, Option<Workspace>), StoreError> {
        let mut tx = self.write_tx().await?;
        if let Some(parent) = new.parent_account_id {
            let same_tenant: Option<i64> =
                sqlx::query_scalar("SELECT id FROM accounts WHERE id = ? AND tenant_id = ?")
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
                sqlx::query_scalar("SELECT id FROM accounts WHERE customer_id = ?")
                    .bind(&customer_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                continue;
            }
            let r = sqlx::query(&format!(
                "INSERT INTO accounts (tenant_id, email, name, customer_id, external_id, parent_account_id, status, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, 'active', ?) RETURNING {ACCOUNT_COLUMNS}"
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
                    "INSERT INTO workspaces (account_id, name, status, created_at) VALUES (?, ?, 'active', ?) \
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
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?"
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
        sqlx::query(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE tenant_id = ? AND (? IS NULL OR email = ?) ORDER BY id"),
        )
        .bind(tenant_id)
        .bind(email)
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
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE customer_id = ?"
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
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(&format!(
            "UPDATE accounts SET status = ? WHERE id = ? RETURNING {ACCOUNT_COLUMNS}"
        ))
        .bind(new.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else { return Ok(None) };
        insert_audit(&mut *tx, audit).await?;
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
            "INSERT INTO workspaces (account_id, name, status, created_at) VALUES (?, ?, 'active', ?) \
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
            "SELECT id, account_id, name, status, created_at FROM workspaces WHERE account_id = ? ORDER BY id",
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
        let mut tx = self.write_tx().await?;
        let row = insert_token_row(&mut *tx, t).await?;
        insert_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(token_row)
            .transpose()
    }

    async fn list_tokens(&self, filter: TokenFilter) -> Result<Vec<TokenRow>, StoreError> {
        let (clause, id) = match filter {
            TokenFilter::Account(id) => ("WHERE account_id = ?", Some(id)),
            TokenFilter::Tenant(id) => ("WHERE tenant_id = ?", Some(id)),
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
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(&format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? \
             RETURNING {TOKEN_COLUMNS}, hash"
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else { return Ok(None) };
        insert_audit(&mut *tx, audit).await?;
        tx.commit().await?;
        changed_token(&r).map(Some)
    }

    async fn touch_last_used(&self, batch: &[(String, i64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One transaction (one fsync) for the whole batch, and one statement
        // per chunk of rows: a statement per token costs a round trip to
        // sqlx's SQLite worker each, which dominated flushes of 100k tokens.
        let mut tx = self.write_tx().await?;
        for chunk in batch.chunks(LAST_USED_CHUNK) {
            let mut sql = String::with_capacity(64 + chunk.len() * 7);
            sql.push_str("WITH v(id, at) AS (VALUES ");
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "(?, ?)" } else { ", (?, ?)" });
            }
            sql.push_str(
                ") UPDATE tokens SET last_used_at = MAX(COALESCE(tokens.last_used_at, 0), v.at) \
                 FROM v WHERE tokens.id = v.id",
            );
            let mut q = sqlx::query(&sql);
            for (id, at) in chunk {
                q = q.bind(id).bind(at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
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
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(&format!(
            "UPDATE tokens SET \
               rate_limit_requests = CASE WHEN ? THEN ? ELSE rate_limit_requests END, \
               rate_limit_window_seconds = CASE WHEN ? THEN ? ELSE rate_limit_window_seconds END, \
               quota_requests = CASE WHEN ? THEN ? ELSE quota_requests END, \
               quota_period = CASE WHEN ? THEN ? ELSE quota_period END \
             WHERE id = ? RETURNING {TOKEN_COLUMNS}, hash"
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
        let mut tx = self.write_tx().await?;
        for (id, start, n) in batch {
            let used: Option<i64> = sqlx::query_scalar(
                "UPDATE tokens SET \
               quota_used = CASE WHEN quota_period_start = ? THEN quota_used + ? ELSE ? END, \
               quota_period_start = ? \
             WHERE id = ? AND quota_period_start <= ? RETURNING quota_used",
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
            "SELECT * FROM audit_events WHERE (? IS NULL OR tenant_id = ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(tenant_id)
        .bind(tenant_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(audit_event)
        .collect()
    }
}
