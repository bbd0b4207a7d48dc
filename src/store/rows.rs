//! Row mappers shared by both stores: the schemas have the same column names
//! and types (`i64` and text), so one generic mapper per model serves SQLite
//! and PostgreSQL alike.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    Account, AuditEvent, AuthRecord, Revoked, Status, StoreError, Tenant, TokenRow, Workspace,
};
use crate::ratelimit::{Period, Quota, TokenLimits, TokenRateLimit};
use crate::token::{TokenHash, TokenKind};

/// Columns every mapper reads: integers and text.
pub(crate) trait StoreRow<'r>: Row {
    /// A column by name.
    fn col<T>(&'r self, name: &str) -> Result<T, StoreError>
    where
        T: Decode<'r, Self::Database> + Type<Self::Database>;
}

impl<'r, R> StoreRow<'r> for R
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
{
    fn col<T>(&'r self, name: &str) -> Result<T, StoreError>
    where
        T: Decode<'r, Self::Database> + Type<Self::Database>,
    {
        Ok(self.try_get(name)?)
    }
}

/// Status from its stored name.
pub(crate) fn status(s: &str) -> Result<Status, StoreError> {
    Status::parse(s).ok_or_else(|| StoreError::Other(format!("bad status {s:?} in store")))
}

/// Token kind from its stored name.
pub(crate) fn kind(s: &str) -> Result<TokenKind, StoreError> {
    TokenKind::parse(s).ok_or_else(|| StoreError::Other(format!("bad token kind {s:?} in store")))
}

/// Abilities from their stored JSON.
pub(crate) fn abilities(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Other(format!("bad abilities in store: {e}")))
}

/// A token's own limit and quota from their columns (`rate_limit_*`,
/// `quota_*`).
pub(crate) fn limits<'r, R>(r: &'r R) -> Result<TokenLimits, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let bad = |what: &str| StoreError::Other(format!("bad {what} in store"));
    let requests: Option<i64> = r.col("rate_limit_requests")?;
    let window: Option<i64> = r.col("rate_limit_window_seconds")?;
    let rate_limit = match (requests, window) {
        (Some(n), Some(w)) => Some(
            TokenRateLimit::new(
                u64::try_from(n).map_err(|_| bad("rate limit"))?,
                u64::try_from(w).map_err(|_| bad("rate limit"))?,
            )
            .map_err(|_| bad("rate limit"))?,
        ),
        _ => None,
    };
    let q: Option<i64> = r.col("quota_requests")?;
    let period: Option<String> = r.col("quota_period")?;
    let quota = match (q, period) {
        (Some(n), Some(p)) => {
            let period = Period::parse(&p).ok_or_else(|| bad("quota period"))?;
            let n = u64::try_from(n).map_err(|_| bad("quota"))?;
            Some(Quota::new(n, period).map_err(|_| bad("quota"))?)
        }
        _ => None,
    };
    Ok(TokenLimits {
        rate_limit,
        quota,
        quota_used: u64::try_from(r.col::<i64>("quota_used")?).unwrap_or(0),
        quota_period_start: r.col("quota_period_start")?,
    })
}

/// A `tenants` row.
pub(crate) fn tenant<'r, R>(r: &'r R) -> Result<Tenant, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Tenant {
        id: r.col("id")?,
        name: r.col("name")?,
        status: status(&r.col::<String>("status")?)?,
        created_at: r.col("created_at")?,
    })
}

/// The columns [`account`] reads, for `SELECT … FROM accounts` and
/// `RETURNING` alike. `workspace_id` is the account's default workspace:
/// its first active one, which tokens minted without one are bound to.
pub(crate) const ACCOUNT_COLUMNS: &str = "id, tenant_id, email, name, customer_id, external_id, \
     parent_account_id, status, created_at, \
     (SELECT w.id FROM workspaces w WHERE w.account_id = accounts.id AND w.status = 'active' \
      ORDER BY w.id LIMIT 1) AS workspace_id";

/// An `accounts` row.
pub(crate) fn account<'r, R>(r: &'r R) -> Result<Account, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Account {
        id: r.col("id")?,
        tenant_id: r.col("tenant_id")?,
        email: r.col("email")?,
        name: r.col("name")?,
        customer_id: r.col("customer_id")?,
        external_id: r.col("external_id")?,
        parent_account_id: r.col("parent_account_id")?,
        status: status(&r.col::<String>("status")?)?,
        created_at: r.col("created_at")?,
        workspace_id: r.col("workspace_id")?,
    })
}

/// A `workspaces` row.
pub(crate) fn workspace<'r, R>(r: &'r R) -> Result<Workspace, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Workspace {
        id: r.col("id")?,
        account_id: r.col("account_id")?,
        name: r.col("name")?,
        status: status(&r.col::<String>("status")?)?,
        created_at: r.col("created_at")?,
    })
}

/// A `tokens` row (never the hash).
pub(crate) fn token_row<'r, R>(r: &'r R) -> Result<TokenRow, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let limits = limits(r)?;
    Ok(TokenRow {
        id: r.col("id")?,
        kind: kind(&r.col::<String>("kind")?)?,
        tenant_id: r.col("tenant_id")?,
        account_id: r.col("account_id")?,
        workspace_id: r.col("workspace_id")?,
        name: r.col("name")?,
        abilities: abilities(&r.col::<String>("abilities")?)?,
        display_prefix: r.col("display_prefix")?,
        created_at: r.col("created_at")?,
        expires_at: r.col("expires_at")?,
        revoked_at: r.col("revoked_at")?,
        last_used_at: r.col("last_used_at")?,
        created_by: r.col("created_by")?,
        rate_limit: limits.rate_limit,
        quota: limits.quota,
        quota_used: r.col("quota_used")?,
        quota_period_start: r.col("quota_period_start")?,
    })
}

/// An `audit_events` row.
pub(crate) fn audit_event<'r, R>(r: &'r R) -> Result<AuditEvent, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditEvent {
        id: r.col("id")?,
        at: r.col("at")?,
        action: r.col("action")?,
        actor_token_id: r.col("actor_token_id")?,
        tenant_id: r.col("tenant_id")?,
        target_token_id: r.col("target_token_id")?,
        outcome: r.col("outcome")?,
        detail: r.col("detail")?,
    })
}

/// The request path's record: a token joined with its account's and
/// tenant's status (`account_status`, `tenant_status` columns).
pub(crate) fn auth_record<'r, R>(r: &'r R) -> Result<AuthRecord, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let account_status: Option<String> = r.col("account_status")?;
    let tenant_status: Option<String> = r.col("tenant_status")?;
    Ok(AuthRecord {
        token_id: r.col("id")?,
        kind: kind(&r.col::<String>("kind")?)?,
        tenant_id: r.col("tenant_id")?,
        account_id: r.col("account_id")?,
        workspace_id: r.col("workspace_id")?,
        name: r.col("name")?,
        abilities: abilities(&r.col::<String>("abilities")?)?,
        expires_at: r.col("expires_at")?,
        revoked_at: r.col("revoked_at")?,
        account_status: account_status.as_deref().map(status).transpose()?,
        tenant_status: tenant_status.as_deref().map(status).transpose()?,
        limits: limits(r)?,
    })
}

/// A changed token as `UPDATE … RETURNING {TOKEN_COLUMNS}, hash` gives it
/// back (a revocation, a change of limits): its row and its hash.
pub(crate) fn changed_token<'r, R>(r: &'r R) -> Result<Revoked, StoreError>
where
    R: StoreRow<'r>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let hash: Vec<u8> = r.col("hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Other("bad hash length in store".into()))?;
    Ok(Revoked {
        row: token_row(r)?,
        hash: TokenHash(hash),
    })
}
