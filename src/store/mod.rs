//! The token store: one trait, [`TokenStore`], and its implementations.
//!
//! The store holds tenants, accounts, workspaces, tokens (by SHA-256 only,
//! never the secret) and the append-only audit log. The request path only
//! ever calls [`TokenLookup::lookup`], through the cache; everything else is
//! the control plane. Timestamps are Unix seconds.

pub mod postgres;
mod rows;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::ratelimit::{Quota, TokenLimits, TokenRateLimit};
use crate::token::{TokenHash, TokenKind};

/// Store failures. The request path turns [`StoreError::Unavailable`] into a
/// fail-closed 503; the control plane maps the rest.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was broken (e.g. an email already used in the tenant).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A referenced row does not exist (e.g. the account of a new token).
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else; the message is for logs only.
    #[error("store error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_string())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::NotFound(db.message().to_string())
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Other(format!("migration failed: {e}"))
    }
}

/// Active or blocked, for tenants, accounts and workspaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Usable.
    Active,
    /// Refused everywhere.
    Blocked,
}

impl Status {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Blocked => "blocked",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Status::Active),
            "blocked" => Some(Status::Blocked),
            _ => None,
        }
    }
}

/// A platform / company / white-label reseller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Active or blocked.
    pub status: Status,
    /// Creation time.
    pub created_at: i64,
}

/// A user of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    /// Id.
    pub id: i64,
    /// Owning tenant.
    pub tenant_id: i64,
    /// Unique within the tenant.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Random 12-digit id, unique across the store.
    pub customer_id: String,
    /// The customer's own id for this account.
    pub external_id: Option<String>,
    /// Parent, for sub-accounts.
    pub parent_account_id: Option<i64>,
    /// Active or blocked.
    pub status: Status,
    /// Creation time.
    pub created_at: i64,
    /// Its default workspace: the first active one, which tokens minted
    /// without a workspace are bound to (the one made with the account,
    /// unless that was blocked); none if it has no active workspace.
    pub workspace_id: Option<i64>,
}

/// What is needed to create an account.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Owning tenant.
    pub tenant_id: i64,
    /// Unique within the tenant.
    pub email: String,
    /// Display name.
    pub name: String,
    /// The customer's own id.
    pub external_id: Option<String>,
    /// Parent, for sub-accounts (must be in the same tenant).
    pub parent_account_id: Option<i64>,
    /// Name of a workspace created with the account, if any.
    pub workspace: Option<String>,
}

/// A working area of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workspace {
    /// Id.
    pub id: i64,
    /// Owning account.
    pub account_id: i64,
    /// Display name.
    pub name: String,
    /// Active or blocked.
    pub status: Status,
    /// Creation time.
    pub created_at: i64,
}

/// A token as listed: never the secret, never the hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// Public id (UUIDv7).
    pub id: String,
    /// Kind.
    pub kind: TokenKind,
    /// Tenant (none for root tokens).
    pub tenant_id: Option<i64>,
    /// Account (none for root and tenant-admin tokens).
    pub account_id: Option<i64>,
    /// Bound workspace, if any.
    pub workspace_id: Option<i64>,
    /// Display name.
    pub name: String,
    /// Granted abilities.
    pub abilities: Vec<String>,
    /// Masked form, e.g. `tgk_4Fz2`.
    pub display_prefix: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry, none = never.
    pub expires_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// Last time it was seen on the request path (batched, so approximate).
    pub last_used_at: Option<i64>,
    /// Id of the token that minted it.
    pub created_by: Option<String>,
    /// Its own rate limit.
    pub rate_limit: Option<TokenRateLimit>,
    /// Its quota.
    pub quota: Option<Quota>,
    /// Requests counted against the quota in the period starting at
    /// `quota_period_start`, as last written (batched).
    #[serde(skip)]
    pub quota_used: i64,
    /// The period `quota_used` belongs to.
    #[serde(skip)]
    pub quota_period_start: i64,
}

/// A token to insert.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// Public id (UUIDv7).
    pub id: String,
    /// Kind.
    pub kind: TokenKind,
    /// Tenant.
    pub tenant_id: Option<i64>,
    /// Account.
    pub account_id: Option<i64>,
    /// Workspace.
    pub workspace_id: Option<i64>,
    /// Display name.
    pub name: String,
    /// Abilities, validated.
    pub abilities: Vec<String>,
    /// Masked form.
    pub display_prefix: String,
    /// SHA-256 of the token.
    pub hash: TokenHash,
    /// Creation time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: Option<i64>,
    /// Minting token's id.
    pub created_by: Option<String>,
    /// Its own rate limit.
    pub rate_limit: Option<TokenRateLimit>,
    /// Its quota.
    pub quota: Option<Quota>,
}

impl NewToken {
    /// This token, of tenant `id`: for a token made before its tenant had
    /// an id.
    pub fn in_tenant(&self, id: i64) -> Self {
        Self {
            tenant_id: Some(id),
            ..self.clone()
        }
    }
}

/// A change to a token's limits: `None` leaves one as it is,
/// `Some(None)` removes it. Counts are never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitsChange {
    /// The new `rate_limit`.
    pub rate_limit: Option<Option<TokenRateLimit>>,
    /// The new `quota`.
    pub quota: Option<Option<Quota>>,
}

/// Quota counts to add: `(token id, period start, requests)`.
pub type QuotaCounts = [(String, i64, i64)];

/// What the request path needs to decide about a token: the token row
/// joined with its account's and tenant's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRecord {
    /// Token id.
    pub token_id: String,
    /// Kind.
    pub kind: TokenKind,
    /// Tenant.
    pub tenant_id: Option<i64>,
    /// Account.
    pub account_id: Option<i64>,
    /// Workspace.
    pub workspace_id: Option<i64>,
    /// Token name.
    pub name: String,
    /// Abilities.
    pub abilities: Vec<String>,
    /// Expiry.
    pub expires_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// The account's status (none when there is no account).
    pub account_status: Option<Status>,
    /// The tenant's status (none when there is no tenant).
    pub tenant_status: Option<Status>,
    /// Its own rate limit and quota, and the stored quota count.
    pub limits: TokenLimits,
}

/// An audit event to append.
#[derive(Clone, Debug, Default)]
pub struct NewAuditEvent {
    /// When.
    pub at: i64,
    /// What: `token.issued`, `token.revoked`, `tenant.created`, ...
    pub action: String,
    /// Token that did it (none for the CLI acting as operator).
    pub actor_token_id: Option<String>,
    /// Tenant it happened in.
    pub tenant_id: Option<i64>,
    /// Token it happened to.
    pub target_token_id: Option<String>,
    /// `ok` or `denied`.
    pub outcome: String,
    /// Free text for people; never a secret.
    pub detail: Option<String>,
}

impl NewAuditEvent {
    /// This event, about tenant `id`: for an event made before the tenant
    /// it is about had an id.
    pub fn in_tenant(&self, id: i64) -> Self {
        Self {
            tenant_id: Some(id),
            ..self.clone()
        }
    }

    /// This event, naming account `id` in its detail (`account 7`).
    pub fn naming_account(&self, id: i64) -> Self {
        Self {
            detail: Some(format!("account {id}")),
            ..self.clone()
        }
    }
}

/// A stored audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// Monotonic id.
    pub id: i64,
    /// When.
    pub at: i64,
    /// What.
    pub action: String,
    /// Token that did it.
    pub actor_token_id: Option<String>,
    /// Tenant.
    pub tenant_id: Option<i64>,
    /// Target token.
    pub target_token_id: Option<String>,
    /// `ok` or `denied`.
    pub outcome: String,
    /// Free text.
    pub detail: Option<String>,
}

/// What a revocation (or a change of limits) touched: the row and the hash
/// to evict from caches.
#[derive(Clone, Debug)]
pub struct Revoked {
    /// The token, now revoked.
    pub row: TokenRow,
    /// Its hash.
    pub hash: TokenHash,
}

/// A change that can make cached records wrong on other instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// A token was revoked or minted (a mint clears negative entries).
    Token(TokenHash),
    /// An account was blocked or unblocked.
    Account(i64),
    /// A tenant was blocked or unblocked.
    Tenant(i64),
}

impl Invalidation {
    /// Wire form for notification payloads: `t:<hex>`, `a:<id>`, `n:<id>`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Token(h) => format!("t:{}", h.to_hex()),
            Invalidation::Account(id) => format!("a:{id}"),
            Invalidation::Tenant(id) => format!("n:{id}"),
        }
    }

    /// Parses [`Invalidation::encode`]'s output.
    pub fn decode(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "t" => TokenHash::from_hex(rest).map(Invalidation::Token),
            "a" => rest.parse().ok().map(Invalidation::Account),
            "n" => rest.parse().ok().map(Invalidation::Tenant),
            _ => None,
        }
    }
}

/// What an invalidation feed yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// Another instance (or this one) committed a change.
    Invalidate(Invalidation),
    /// The feed was down and is listening again: events may have been
    /// missed, so everything cached must be dropped.
    Resynced,
}

/// A live feed of invalidations committed by any instance sharing the store.
#[async_trait]
pub trait InvalidationFeed: Send {
    /// The next event. Reconnects (with backoff) internally; returns
    /// [`FeedEvent::Resynced`] once listening again after a drop.
    async fn next(&mut self) -> FeedEvent;
}

/// Which tokens to list.
#[derive(Clone, Copy, Debug)]
pub enum TokenFilter {
    /// Tokens of one account.
    Account(i64),
    /// Tokens of one tenant (all kinds).
    Tenant(i64),
    /// Every token.
    All,
}

/// The request path's only view of the store: the record for a hash.
/// Kept apart from [`TokenStore`] so the cache depends on nothing else.
#[async_trait]
pub trait TokenLookup: Send + Sync {
    /// The record for a hash, if any.
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<AuthRecord>, StoreError>;
}

/// The store. Implementations must be safe to share across tasks.
#[async_trait]
pub trait TokenStore: TokenLookup + 'static {
    /// Runs pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates a tenant, its `audit` event and, when given, its first
    /// token with that token's event, in one transaction: all of them or
    /// none. The new tenant's id is written into the events and the token.
    async fn create_tenant(
        &self,
        name: &str,
        now: i64,
        audit: &NewAuditEvent,
        first_token: Option<(&NewToken, &NewAuditEvent)>,
    ) -> Result<(Tenant, Option<TokenRow>), StoreError>;
    /// A tenant by id.
    async fn get_tenant(&self, id: i64) -> Result<Option<Tenant>, StoreError>;
    /// Every tenant, by id.
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Blocks or unblocks a tenant; the audit event is written in the same
    /// transaction.
    async fn set_tenant_status(
        &self,
        id: i64,
        status: Status,
        audit: &NewAuditEvent,
    ) -> Result<Option<Tenant>, StoreError>;

    /// Creates an account with a fresh 12-digit customer id (and a
    /// workspace, when asked) and writes its `audit` event, the new
    /// account's id as the event's detail (`account 7`), in one
    /// transaction.
    async fn create_account(
        &self,
        new: &NewAccount,
        now: i64,
        audit: &NewAuditEvent,
    ) -> Result<(Account, Option<Workspace>), StoreError>;
    /// An account by id.
    async fn get_account(&self, id: i64) -> Result<Option<Account>, StoreError>;
    /// Accounts of a tenant, by id, optionally only the one with `email`.
    async fn list_accounts(
        &self,
        tenant_id: i64,
        email: Option<&str>,
    ) -> Result<Vec<Account>, StoreError>;
    /// An account by its customer id.
    async fn find_account_by_customer_id(
        &self,
        customer_id: &str,
    ) -> Result<Option<Account>, StoreError>;
    /// Blocks or unblocks an account; audited in the same transaction.
    async fn set_account_status(
        &self,
        id: i64,
        status: Status,
        audit: &NewAuditEvent,
    ) -> Result<Option<Account>, StoreError>;

    /// Creates a workspace.
    async fn create_workspace(
        &self,
        account_id: i64,
        name: &str,
        now: i64,
    ) -> Result<Workspace, StoreError>;
    /// Workspaces of an account, by id.
    async fn list_workspaces(&self, account_id: i64) -> Result<Vec<Workspace>, StoreError>;

    /// Inserts a token and its audit event in one transaction; returns only
    /// after the commit.
    async fn insert_token(
        &self,
        token: &NewToken,
        audit: &NewAuditEvent,
    ) -> Result<TokenRow, StoreError>;
    /// A token by id.
    async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError>;
    /// Tokens, newest first.
    async fn list_tokens(&self, filter: TokenFilter) -> Result<Vec<TokenRow>, StoreError>;
    /// Revokes a token (idempotent: an already revoked token keeps its first
    /// revocation time) with its audit event, in one transaction.
    async fn revoke_token(
        &self,
        id: &str,
        now: i64,
        audit: &NewAuditEvent,
    ) -> Result<Option<Revoked>, StoreError>;
    /// Writes a batch of last-used times (a later time never goes backwards).
    async fn touch_last_used(&self, batch: &[(String, i64)]) -> Result<(), StoreError>;
    /// Sets or removes a token's own rate limit and quota (its counts are
    /// kept), audited in the same transaction. Answers the row and the
    /// hash to evict from caches.
    async fn set_token_limits(
        &self,
        id: &str,
        change: &LimitsChange,
        audit: &NewAuditEvent,
    ) -> Result<Option<Revoked>, StoreError>;
    /// Adds a batch of quota counts, in one transaction. A count of a
    /// period later than the stored one starts it afresh; one of an
    /// earlier period is dropped. Answers each token's stored count after
    /// the write, `(token id, period start, count)`, for the counts kept.
    async fn add_quota_counts(
        &self,
        batch: &QuotaCounts,
    ) -> Result<Vec<(String, i64, i64)>, StoreError>;

    /// Appends an audit event.
    async fn append_audit(&self, event: &NewAuditEvent) -> Result<(), StoreError>;
    /// Audit events, newest first, optionally of one tenant.
    async fn list_audit(
        &self,
        tenant_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// A feed of invalidations from every instance sharing this store, for
    /// stores that several gateways can share. `None` (the default): only
    /// this process writes, and its issuer evicts directly.
    async fn subscribe(&self) -> Result<Option<Box<dyn InvalidationFeed>>, StoreError> {
        Ok(None)
    }
}

/// Opens (creating and migrating) the store a URL names.
pub async fn open(
    url: &DatabaseUrl,
    max_connections: u32,
    timeout: std::time::Duration,
) -> Result<Arc<dyn TokenStore>, StoreError> {
    let u = url.expose();
    if u.starts_with("sqlite:") {
        let s = sqlite::SqliteStore::connect(url, max_connections, timeout).await?;
        s.migrate().await?;
        Ok(Arc::new(s))
    } else {
        let s = postgres::PgStore::connect(url, max_connections, timeout).await?;
        s.migrate().await?;
        Ok(Arc::new(s))
    }
}

/// A database URL. `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}{}", strip_query(tail))
                } else {
                    format!("{scheme}://{user}@{host}{}", strip_query(tail))
                }
            }
            None => format!("{scheme}://{authority}{}", strip_query(tail)),
        }
    }
}

/// Query strings can carry `password=`; logs never show them.
fn strip_query(tail: &str) -> &str {
    tail.split('?').next().unwrap_or(tail)
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
