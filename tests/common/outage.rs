//! A store a test can take down: every call fails with
//! [`StoreError::Unavailable`] while the outage lasts, as a database that
//! cannot be reached would. For store-outage behaviour (503
//! `STORE_UNAVAILABLE`, `/readyz`) without PostgreSQL; pass an
//! [`Outage`] in `Opts::outage`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokengate::store::{
    Account, AuditEvent, AuthRecord, InvalidationFeed, NewAccount, NewAuditEvent, NewToken,
    Revoked, Status, StoreError, Tenant, TokenFilter, TokenLookup, TokenRow, TokenStore, Workspace,
};
use tokengate::token::TokenHash;

/// The switch: cheap to clone, shared with the store it wraps.
#[derive(Clone, Debug, Default)]
pub struct Outage(Arc<AtomicBool>);

impl Outage {
    /// Every store call fails from now on.
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The store answers again.
    pub fn end(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.0.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test outage".into()))
        } else {
            Ok(())
        }
    }

    /// `inner`, failing whenever this outage lasts.
    pub fn wrap(&self, inner: Arc<dyn TokenStore>) -> Arc<dyn TokenStore> {
        Arc::new(Switched {
            inner,
            outage: self.clone(),
        })
    }
}

struct Switched {
    inner: Arc<dyn TokenStore>,
    outage: Outage,
}

#[async_trait]
impl TokenLookup for Switched {
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<AuthRecord>, StoreError> {
        self.outage.check()?;
        self.inner.lookup(hash).await
    }
}

#[async_trait]
impl TokenStore for Switched {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.outage.check()?;
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.outage.check()?;
        self.inner.ping().await
    }
    async fn create_tenant(
        &self,
        name: &str,
        now: i64,
        audit: &NewAuditEvent,
        first_token: Option<(&NewToken, &NewAuditEvent)>,
    ) -> Result<(Tenant, Option<TokenRow>), StoreError> {
        self.outage.check()?;
        self.inner
            .create_tenant(name, now, audit, first_token)
            .await
    }
    async fn get_tenant(&self, id: i64) -> Result<Option<Tenant>, StoreError> {
        self.outage.check()?;
        self.inner.get_tenant(id).await
    }
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.outage.check()?;
        self.inner.list_tenants().await
    }
    async fn set_tenant_status(
        &self,
        id: i64,
        status: Status,
        audit: &NewAuditEvent,
    ) -> Result<Option<Tenant>, StoreError> {
        self.outage.check()?;
        self.inner.set_tenant_status(id, status, audit).await
    }
    async fn create_account(
        &self,
        new: &NewAccount,
        now: i64,
        audit: &NewAuditEvent,
    ) -> Result<(Account, Option<Workspace>), StoreError> {
        self.outage.check()?;
        self.inner.create_account(new, now, audit).await
    }
    async fn get_account(&self, id: i64) -> Result<Option<Account>, StoreError> {
        self.outage.check()?;
        self.inner.get_account(id).await
    }
    async fn list_accounts(
        &self,
        tenant_id: i64,
        email: Option<&str>,
    ) -> Result<Vec<Account>, StoreError> {
        self.outage.check()?;
        self.inner.list_accounts(tenant_id, email).await
    }
    async fn find_account_by_customer_id(
        &self,
        customer_id: &str,
    ) -> Result<Option<Account>, StoreError> {
        self.outage.check()?;
        self.inner.find_account_by_customer_id(customer_id).await
    }
    async fn set_account_status(
        &self,
        id: i64,
        status: Status,
        audit: &NewAuditEvent,
    ) -> Result<Option<Account>, StoreError> {
        self.outage.check()?;
        self.inner.set_account_status(id, status, audit).await
    }
    async fn create_workspace(
        &self,
        account_id: i64,
        name: &str,
        now: i64,
    ) -> Result<Workspace, StoreError> {
        self.outage.check()?;
        self.inner.create_workspace(account_id, name, now).await
    }
    async fn list_workspaces(&self, account_id: i64) -> Result<Vec<Workspace>, StoreError> {
        self.outage.check()?;
        self.inner.list_workspaces(account_id).await
    }
    async fn insert_token(
        &self,
        token: &NewToken,
        audit: &NewAuditEvent,
    ) -> Result<TokenRow, StoreError> {
        self.outage.check()?;
        self.inner.insert_token(token, audit).await
    }
    async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        self.outage.check()?;
        self.inner.get_token(id).await
    }
    async fn list_tokens(&self, filter: TokenFilter) -> Result<Vec<TokenRow>, StoreError> {
        self.outage.check()?;
        self.inner.list_tokens(filter).await
    }
    async fn revoke_token(
        &self,
        id: &str,
        now: i64,
        audit: &NewAuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        self.outage.check()?;
        self.inner.revoke_token(id, now, audit).await
    }
    async fn touch_last_used(&self, batch: &[(String, i64)]) -> Result<(), StoreError> {
        self.outage.check()?;
        self.inner.touch_last_used(batch).await
    }
    async fn set_token_limits(
        &self,
        id: &str,
        change: &tokengate::store::LimitsChange,
        audit: &NewAuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        self.outage.check()?;
        self.inner.set_token_limits(id, change, audit).await
    }
    async fn add_quota_counts(
        &self,
        batch: &tokengate::store::QuotaCounts,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.outage.check()?;
        self.inner.add_quota_counts(batch).await
    }
    async fn append_audit(&self, event: &NewAuditEvent) -> Result<(), StoreError> {
        self.outage.check()?;
        self.inner.append_audit(event).await
    }
    async fn list_audit(
        &self,
        tenant_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.outage.check()?;
        self.inner.list_audit(tenant_id, limit).await
    }
    async fn subscribe(&self) -> Result<Option<Box<dyn InvalidationFeed>>, StoreError> {
        self.inner.subscribe().await
    }
}
