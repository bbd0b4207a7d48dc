//! The issuing service: the one place tokens are minted and revoked, and
//! tenants and accounts blocked.
//!
//! The CLI, the native API and the seed flows are thin adapters over this.
//! It keeps three promises for all of them: a token's row (and its audit
//! event) is committed before its secret is handed back; the secret is
//! returned once, here, and never stored; and every change that can make a
//! cached record wrong evicts it from this instance's cache before the call
//! returns.

use std::sync::Arc;

use uuid::Uuid;

use crate::ability::Ability;
use crate::cache::TokenCache;
use crate::clock::Clock;
use crate::store::{
    Account, LimitsChange, NewAccount, NewAuditEvent, NewToken, Revoked, Status, StoreError,
    Tenant, TokenRow, TokenStore, Workspace,
};
use crate::token::{Secret, TokenFormat, TokenHash, TokenKind};

/// Longest token, tenant, account or workspace name.
pub const MAX_NAME_LEN: usize = 255;

/// Why an issuing operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request is not valid; the message is safe to show.
    #[error("{0}")]
    Invalid(String),
    /// A referenced object does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule would be broken; the message is safe to show.
    #[error("{0}")]
    Conflict(String),
    /// The caller asked for more than it holds; the message is safe to show.
    #[error("{0}")]
    Escalation(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asks: the token id recorded as `created_by` and audit actor (none
/// for the operator's CLI).
#[derive(Clone, Debug, Default)]
pub struct Actor {
    /// Acting token's id.
    pub token_id: Option<String>,
}

/// An authenticated caller of the control plane: the token it presented.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token id.
    pub token_id: String,
    /// Token kind.
    pub kind: TokenKind,
    /// Its tenant (none for root).
    pub tenant_id: Option<i64>,
    /// Its account (session and api tokens).
    pub account_id: Option<i64>,
    /// Its workspace, if bound.
    pub workspace_id: Option<i64>,
    /// Its abilities.
    pub abilities: Vec<String>,
    /// Its expiry.
    pub expires_at: Option<i64>,
}

impl Caller {
    /// The caller of a valid token's record.
    pub fn from_record(r: &crate::store::AuthRecord) -> Self {
        Self {
            token_id: r.token_id.clone(),
            kind: r.kind,
            tenant_id: r.tenant_id,
            account_id: r.account_id,
            workspace_id: r.workspace_id,
            abilities: r.abilities.clone(),
            expires_at: r.expires_at,
        }
    }

    /// The audit actor.
    pub fn actor(&self) -> Actor {
        Actor {
            token_id: Some(self.token_id.clone()),
        }
    }

    /// Whether this caller may act in `tenant_id` at all.
    pub fn reaches_tenant(&self, tenant_id: i64) -> bool {
        self.kind == TokenKind::Root || self.tenant_id == Some(tenant_id)
    }

    /// Refuses abilities the caller does not hold itself (root holds all).
    pub fn check_grant(&self, requested: &[Ability]) -> Result<(), IssueError> {
        if self.kind == TokenKind::Root {
            return Ok(());
        }
        match requested
            .iter()
            .find(|a| !crate::ability::grants_all(&self.abilities, [a.as_str()]))
        {
            Some(a) => Err(IssueError::Escalation(format!(
                "the caller does not hold the ability {:?}",
                a.as_str()
            ))),
            None => Ok(()),
        }
    }

    /// The longest life this caller may give a token it mints for
    /// `account_id`: an api token minting for another account (a
    /// sub-account) cannot outlive itself; admins and sessions are not
    /// bounded (a session is the account's own login).
    pub fn cap_expiry(&self, account_id: i64, wanted: Option<i64>) -> Option<i64> {
        match (self.kind, self.expires_at) {
            (TokenKind::Api, Some(own)) if self.account_id != Some(account_id) => {
                Some(wanted.map_or(own, |w| w.min(own)))
            }
            _ => wanted,
        }
    }
}

/// A token to mint.
#[derive(Clone, Debug)]
pub struct MintRequest {
    /// Kind.
    pub kind: TokenKind,
    /// Tenant (required for all but root).
    pub tenant_id: Option<i64>,
    /// Account (required for session and api).
    pub account_id: Option<i64>,
    /// Workspace of that account, if bound.
    pub workspace_id: Option<i64>,
    /// Display name.
    pub name: String,
    /// Abilities.
    pub abilities: Vec<Ability>,
    /// Expiry (Unix seconds), none = never.
    pub expires_at: Option<i64>,
}

/// A minted token: its row, and the secret to hand out exactly once.
#[derive(Debug)]
pub struct Minted {
    /// The committed row.
    pub row: TokenRow,
    /// The token itself.
    pub secret: Secret,
}

/// The issuing service.
#[derive(Clone)]
pub struct Issuer {
    store: Arc<dyn TokenStore>,
    format: TokenFormat,
    clock: Clock,
    cache: Option<Arc<TokenCache>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("format", &self.format)
            .finish()
    }
}

/// Runs a store write together with the cache eviction that must follow it,
/// to completion, in a task of its own. The caller's future may be dropped
/// at any await (a client that hangs up mid-request): without this, a
/// committed revocation could miss its eviction and stay usable for a TTL.
async fn detached<T, F>(work: F) -> Result<T, IssueError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, IssueError>> + Send + 'static,
{
    tokio::spawn(work)
        .await
        .map_err(|e| IssueError::Store(StoreError::Other(format!("write task failed: {e}"))))?
}

/// Drops whatever this instance's cache holds for `hash` (a negative
/// entry for a token just minted, a stale one for a token just changed).
async fn invalidate(cache: Option<Arc<TokenCache>>, hash: TokenHash) {
    if let Some(cache) = cache {
        cache.invalidate_token(hash).await;
    }
}

/// Checks a display name: 1 to 255 characters, no control characters.
pub fn validate_name(what: &str, name: &str) -> Result<(), IssueError> {
    let n = name.chars().count();
    if n == 0 || name.trim().is_empty() {
        return Err(IssueError::Invalid(format!("{what} is required")));
    }
    if n > MAX_NAME_LEN {
        return Err(IssueError::Invalid(format!(
            "{what} must be at most {MAX_NAME_LEN} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(IssueError::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

impl Issuer {
    /// An issuer over a store; `cache` is this instance's request-path cache,
    /// if there is one running in this process.
    pub fn new(
        store: Arc<dyn TokenStore>,
        format: TokenFormat,
        clock: Clock,
        cache: Option<Arc<TokenCache>>,
    ) -> Self {
        Self {
            store,
            format,
            clock,
            cache,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Creates a tenant (and its `tenant.created` event, in the same
    /// transaction).
    pub async fn create_tenant(&self, name: &str, actor: &Actor) -> Result<Tenant, IssueError> {
        validate_name("name", name)?;
        let event = self.event(actor, "tenant.created", None, None);
        let (store, name) = (Arc::clone(&self.store), name.to_string());
        let now = self.clock.now();
        detached(async move { Ok(store.create_tenant(&name, now, &event, None).await?.0) }).await
    }

    /// Creates a tenant with its first tenant-admin token (named `admin`,
    /// every ability): the tenant, the token and both their events are
    /// committed together or not at all, so a failure (or a caller gone
    /// midway) never leaves a tenant nobody holds a token for.
    pub async fn create_tenant_with_admin(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<(Tenant, Minted), IssueError> {
        validate_name("name", name)?;
        let now = self.clock.now();
        let event = self.event(actor, "tenant.created", None, None);
        let req = MintRequest {
            kind: TokenKind::TenantAdmin,
            tenant_id: None,
            account_id: None,
            workspace_id: None,
            name: "admin".into(),
            abilities: vec![Ability::parse("*").map_err(|e| IssueError::Invalid(e.to_string()))?],
            expires_at: None,
        };
        let (token, token_event, secret) =
            self.new_token(&req, LimitsChange::default(), actor, now)?;
        let (store, cache) = (Arc::clone(&self.store), self.cache.clone());
        let name = name.to_string();
        let (t, row) = detached(async move {
            let made = store
                .create_tenant(&name, now, &event, Some((&token, &token_event)))
                .await?;
            // As for any mint: no negative entry may outlive it.
            invalidate(cache, token.hash).await;
            Ok(made)
        })
        .await?;
        let row = row.ok_or_else(|| {
            IssueError::Store(StoreError::Other(
                "the tenant's token was not written".into(),
            ))
        })?;
        Ok((t, Minted { row, secret }))
    }

    /// Creates an account (and its workspace, if named).
    pub async fn create_account(
        &self,
        new: &NewAccount,
        actor: &Actor,
    ) -> Result<(Account, Option<Workspace>), IssueError> {
        validate_name("name", &new.name)?;
        validate_email(&new.email)?;
        if let Some(ws) = &new.workspace {
            validate_name("workspace", ws)?;
        }
        if let Some(ext) = &new.external_id {
            validate_name("external_id", ext)?;
        }
        self.store
            .get_tenant(new.tenant_id)
            .await?
            .ok_or(IssueError::NotFound("tenant"))?;
        // The account and its event are written together, and to the end
        // even if the caller goes away.
        let event = self.event(actor, "account.created", Some(new.tenant_id), None);
        let (store, account, now) = (Arc::clone(&self.store), new.clone(), self.clock.now());
        let created =
            match detached(async move { Ok(store.create_account(&account, now, &event).await?) })
                .await
            {
                Err(IssueError::Store(StoreError::Conflict(_))) => {
                    return Err(IssueError::Conflict(format!(
                        "an account with email {:?} already exists in this tenant",
                        new.email
                    )))
                }
                Err(IssueError::Store(StoreError::NotFound(_))) => {
                    return Err(IssueError::NotFound("parent account"))
                }
                other => other?,
            };
        Ok(created)
    }

    /// Mints a token. The row and its audit event are committed before this
    /// returns; the secret exists only in the returned value.
    pub async fn mint(&self, req: MintRequest, actor: &Actor) -> Result<Minted, IssueError> {
        self.mint_with_limits(req, LimitsChange::default(), actor)
            .await
    }

    /// [`Issuer::mint`], the token carrying its own rate limit and quota
    /// (`None` or `Some(None)`: none).
    pub async fn mint_with_limits(
        &self,
        req: MintRequest,
        limits: LimitsChange,
        actor: &Actor,
    ) -> Result<Minted, IssueError> {
        let now = self.clock.now();
        let (token, audit, secret) = self.new_token(&req, limits, actor, now)?;
        self.check_owner(&req).await?;
        let hash = token.hash;
        let (store, cache) = (Arc::clone(&self.store), self.cache.clone());
        let row = detached(async move {
            let row = store.insert_token(&token, &audit).await?;
            // A negative entry for this hash (someone guessed it?) must not
            // outlive the mint.
            invalidate(cache, hash).await;
            Ok(row)
        })
        .await?;
        Ok(Minted { row, secret })
    }

    /// A token to mint and its `token.issued` event, checked (name,
    /// expiry), with its secret: nothing is written.
    fn new_token(
        &self,
        req: &MintRequest,
        limits: LimitsChange,
        actor: &Actor,
        now: i64,
    ) -> Result<(NewToken, NewAuditEvent, Secret), IssueError> {
        validate_name("name", &req.name)?;
        if let Some(exp) = req.expires_at {
            if exp <= now {
                return Err(IssueError::Invalid("expiry must be in the future".into()));
            }
        }
        let secret = self.format.generate(req.kind);
        let id = Uuid::now_v7().to_string();
        let token = NewToken {
            id: id.clone(),
            kind: req.kind,
            tenant_id: req.tenant_id,
            account_id: req.account_id,
            workspace_id: req.workspace_id,
            name: req.name.clone(),
            abilities: req
                .abilities
                .iter()
                .map(|a| a.as_str().to_string())
                .collect(),
            display_prefix: secret.display_prefix().to_string(),
            hash: secret.hash(),
            created_at: now,
            expires_at: req.expires_at,
            created_by: actor.token_id.clone(),
            rate_limit: limits.rate_limit.flatten(),
            quota: limits.quota.flatten(),
        };
        let audit = NewAuditEvent {
            at: now,
            action: "token.issued".into(),
            actor_token_id: actor.token_id.clone(),
            tenant_id: req.tenant_id,
            target_token_id: Some(id),
            outcome: "ok".into(),
            detail: Some(format!("kind {}", req.kind)),
        };
        Ok((token, audit, secret))
    }

    /// Registers a token from a legacy system by its SHA-256. The token
    /// works only while `tokens.accept_legacy` is on.
    pub async fn import_legacy(
        &self,
        hash: TokenHash,
        mut req: MintRequest,
        actor: &Actor,
    ) -> Result<TokenRow, IssueError> {
        validate_name("name", &req.name)?;
        req.kind = TokenKind::Api;
        self.check_owner(&req).await?;
        let now = self.clock.now();
        let id = Uuid::now_v7().to_string();
        let token = NewToken {
            id: id.clone(),
            kind: req.kind,
            tenant_id: req.tenant_id,
            account_id: req.account_id,
            workspace_id: req.workspace_id,
            name: req.name,
            abilities: req
                .abilities
                .iter()
                .map(|a| a.as_str().to_string())
                .collect(),
            display_prefix: "legacy".into(),
            hash,
            created_at: now,
            expires_at: req.expires_at,
            created_by: actor.token_id.clone(),
            rate_limit: None,
            quota: None,
        };
        let audit = NewAuditEvent {
            at: now,
            action: "token.imported".into(),
            actor_token_id: actor.token_id.clone(),
            tenant_id: req.tenant_id,
            target_token_id: Some(id),
            outcome: "ok".into(),
            detail: None,
        };
        let (store, cache) = (Arc::clone(&self.store), self.cache.clone());
        detached(async move {
            let row = match store.insert_token(&token, &audit).await {
                Err(StoreError::Conflict(_)) => {
                    return Err(IssueError::Conflict("a token with this hash exists".into()))
                }
                other => other?,
            };
            invalidate(cache, hash).await;
            Ok(row)
        })
        .await
    }

    /// Checks that the owner fields fit the kind and exist together.
    async fn check_owner(&self, req: &MintRequest) -> Result<(), IssueError> {
        match req.kind {
            TokenKind::Root => {
                if req.tenant_id.is_some() || req.account_id.is_some() || req.workspace_id.is_some()
                {
                    return Err(IssueError::Invalid(
                        "a root token belongs to no tenant or account".into(),
                    ));
                }
            }
            TokenKind::TenantAdmin => {
                let t = req
                    .tenant_id
                    .ok_or_else(|| IssueError::Invalid("a tenant is required".into()))?;
                if req.account_id.is_some() || req.workspace_id.is_some() {
                    return Err(IssueError::Invalid(
                        "a tenant-admin token belongs to no account".into(),
                    ));
                }
                self.store
                    .get_tenant(t)
                    .await?
                    .ok_or(IssueError::NotFound("tenant"))?;
            }
            TokenKind::Session | TokenKind::Api => {
                let a = req
                    .account_id
                    .ok_or_else(|| IssueError::Invalid("an account is required".into()))?;
                let acc = self
                    .store
                    .get_account(a)
                    .await?
                    .filter(|acc| req.tenant_id.is_none_or(|t| t == acc.tenant_id))
                    .ok_or(IssueError::NotFound("account"))?;
                if req.tenant_id.is_none() {
                    return Err(IssueError::Invalid("a tenant is required".into()));
                }
                if let Some(w) = req.workspace_id {
                    let found = self
                        .store
                        .list_workspaces(acc.id)
                        .await?
                        .into_iter()
                        .any(|ws| ws.id == w);
                    if !found {
                        return Err(IssueError::NotFound("workspace"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Revokes a token; from the moment this returns, this instance refuses it.
    pub async fn revoke(&self, token_id: &str, actor: &Actor) -> Result<TokenRow, IssueError> {
        let now = self.clock.now();
        self.change_token(
            token_id,
            "token.revoked",
            now,
            actor,
            move |store, id, audit| async move { store.revoke_token(&id, now, &audit).await },
        )
        .await
    }

    /// Sets or removes a token's own rate limit and quota (its counts are
    /// kept), effective at once on this instance (the cached record is
    /// evicted) and, through the store's feed, on the others.
    pub async fn set_limits(
        &self,
        token_id: &str,
        change: LimitsChange,
        actor: &Actor,
    ) -> Result<TokenRow, IssueError> {
        let now = self.clock.now();
        self.change_token(token_id, "token.limits_changed", now, actor, move |store, id, audit| async move {
            store.set_token_limits(&id, &change, &audit).await
        })
        .await
    }

    /// One change to a token: `write` makes it in the store with its audit
    /// event (`action`, at `at`) in one transaction, off the caller's task
    /// so that a client going away cannot cut it short; then this
    /// instance's cached record is evicted. The others hear of it through
    /// the store's feed.
    async fn change_token<F, Fut>(
        &self,
        token_id: &str,
        action: &str,
        at: i64,
        actor: &Actor,
        write: F,
    ) -> Result<TokenRow, IssueError>
    where
        F: FnOnce(Arc<dyn TokenStore>, String, NewAuditEvent) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Option<Revoked>, StoreError>> + Send + 'static,
    {
        let existing = self
            .store
            .get_token(token_id)
            .await?
            .ok_or(IssueError::NotFound("token"))?;
        let audit = NewAuditEvent {
            at,
            action: action.into(),
            actor_token_id: actor.token_id.clone(),
            tenant_id: existing.tenant_id,
            target_token_id: Some(token_id.to_string()),
            outcome: "ok".into(),
            detail: None,
        };
        let (store, cache, id) = (
            Arc::clone(&self.store),
            self.cache.clone(),
            token_id.to_string(),
        );
        detached(async move {
            let changed = write(store, id, audit)
                .await?
                .ok_or(IssueError::NotFound("token"))?;
            invalidate(cache, changed.hash).await;
            Ok(changed.row)
        })
        .await
    }

    /// Blocks or unblocks a tenant, effective at once on this instance.
    pub async fn set_tenant_status(
        &self,
        id: i64,
        status: Status,
        actor: &Actor,
    ) -> Result<Tenant, IssueError> {
        let audit = self.event(
            actor,
            &format!("tenant.{}", status_verb(status)),
            Some(id),
            None,
        );
        let (store, cache) = (Arc::clone(&self.store), self.cache.clone());
        detached(async move {
            let t = store
                .set_tenant_status(id, status, &audit)
                .await?
                .ok_or(IssueError::NotFound("tenant"))?;
            if let Some(cache) = cache {
                cache.invalidate_tenant(id);
            }
            Ok(t)
        })
        .await
    }

    /// Blocks or unblocks an account, effective at once on this instance.
    pub async fn set_account_status(
        &self,
        id: i64,
        status: Status,
        actor: &Actor,
    ) -> Result<Account, IssueError> {
        let tenant = self
            .store
            .get_account(id)
            .await?
            .ok_or(IssueError::NotFound("account"))?
            .tenant_id;
        let mut audit = self.event(
            actor,
            &format!("account.{}", status_verb(status)),
            Some(tenant),
            None,
        );
        audit.detail = Some(format!("account {id}"));
        let (store, cache) = (Arc::clone(&self.store), self.cache.clone());
        detached(async move {
            let a = store
                .set_account_status(id, status, &audit)
                .await?
                .ok_or(IssueError::NotFound("account"))?;
            if let Some(cache) = cache {
                cache.invalidate_account(id);
            }
            Ok(a)
        })
        .await
    }

    fn event(
        &self,
        actor: &Actor,
        action: &str,
        tenant_id: Option<i64>,
        target: Option<String>,
    ) -> NewAuditEvent {
        NewAuditEvent {
            at: self.clock.now(),
            action: action.into(),
            actor_token_id: actor.token_id.clone(),
            tenant_id,
            target_token_id: target,
            outcome: "ok".into(),
            detail: None,
        }
    }
}

fn status_verb(s: Status) -> &'static str {
    match s {
        Status::Active => "unblocked",
        Status::Blocked => "blocked",
    }
}

/// A plausible email: one `@`, something on both sides, no spaces, at most
/// 254 characters. Deliverability is the login system's business.
pub fn validate_email(email: &str) -> Result<(), IssueError> {
    // Characters, not bytes: what the doc above and the OpenAPI
    // document's `maxLength` say.
    let ok = email.chars().count() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((l, d)) if !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(IssueError::Invalid(format!(
            "{email:?} is not an email address"
        )))
    }
}
