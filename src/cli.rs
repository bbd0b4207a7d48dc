//! The command line: `serve`, `migrate`, `init`, `check-config`, `echo`,
//! and `tenant` / `account` / `token` for operators who prefer a shell.
//!
//! Commands that print a token print it alone on stdout (one line), so
//! `TOKEN=$(tokengate init)` works; everything else about it goes to stderr.
//! Other commands print JSON on stdout, in the native API's shapes
//! ([`crate::api`]): timestamps in RFC 3339 UTC, tokens masked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::{account_json, masked_token_json, tenant_json};
use crate::auth::Ability;
use crate::clock::Clock;
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::gateway::Gateway;
use crate::issuer::{Actor, Issuer, MintRequest};
use crate::store::{self, NewAccount, Status, TokenFilter, TokenStore};
use crate::token::{TokenHash, TokenKind};

/// tokengate: an authenticating reverse-proxy gateway.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, about)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "TOKENGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (public and admin listeners) until SIGTERM / ctrl-c.
    Serve,
    /// Create the store if needed and run its migrations.
    Migrate,
    /// Create the store if needed and mint a root token, printed alone on stdout.
    Init {
        /// Mint another root token even if one exists.
        #[arg(long)]
        force: bool,
        /// Name of the root token.
        #[arg(long, default_value = "root")]
        name: String,
    },
    /// Validate the config file and exit.
    CheckConfig,
    /// Run a small upstream that answers every request with JSON of what it
    /// received (method, path, headers, body length), for trying the
    /// gateway. Needs no config file.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = crate::echo::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `tenant ...`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and its first admin token (printed in the JSON, once).
    Create {
        /// Tenant name.
        #[arg(long)]
        name: String,
    },
    /// List tenants.
    List,
    /// Block a tenant: every token of it stops working.
    Block {
        /// Tenant id.
        id: i64,
    },
    /// Unblock a tenant.
    Unblock {
        /// Tenant id.
        id: i64,
    },
}

/// `account ...`
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account (with a workspace named `default` unless --no-workspace).
    Create(AccountCreate),
    /// List a tenant's accounts.
    List {
        /// Tenant id.
        #[arg(long)]
        tenant: i64,
    },
    /// Block an account: every token of it stops working.
    Block {
        /// Account id.
        id: i64,
    },
    /// Unblock an account.
    Unblock {
        /// Account id.
        id: i64,
    },
}

/// `account create` arguments.
#[derive(Debug, Args)]
pub struct AccountCreate {
    /// Tenant id.
    #[arg(long)]
    pub tenant: i64,
    /// Email, unique within the tenant.
    #[arg(long)]
    pub email: String,
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// Parent account id (makes this a sub-account).
    #[arg(long)]
    pub parent: Option<i64>,
    /// The customer's own id for the account.
    #[arg(long)]
    pub external_id: Option<String>,
    /// Name of the workspace made with the account.
    #[arg(long, default_value = "default", conflicts_with = "no_workspace")]
    pub workspace: String,
    /// Make no workspace.
    #[arg(long)]
    pub no_workspace: bool,
}

/// Token kinds as the CLI spells them.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    /// Root.
    Root,
    /// Tenant admin.
    TenantAdmin,
    /// Session.
    Session,
    /// API.
    Api,
}

impl From<KindArg> for TokenKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Root => TokenKind::Root,
            KindArg::TenantAdmin => TokenKind::TenantAdmin,
            KindArg::Session => TokenKind::Session,
            KindArg::Api => TokenKind::Api,
        }
    }
}

/// `token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token; the token is printed alone on stdout.
    Issue(TokenIssue),
    /// List tokens, masked.
    List {
        /// Only this account's.
        #[arg(long, conflicts_with = "tenant")]
        account: Option<i64>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<i64>,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id.
        id: String,
    },
    /// Register a legacy token by its SHA-256 (needs `tokens.accept_legacy`).
    Import {
        /// SHA-256 of the legacy token, hex.
        #[arg(long)]
        sha256: String,
        /// Owning account.
        #[arg(long)]
        account: i64,
        /// Display name.
        #[arg(long, default_value = "legacy")]
        name: String,
        /// Abilities (repeat); default `*`.
        #[arg(long = "ability")]
        abilities: Vec<String>,
    },
}

/// `token issue` arguments.
#[derive(Debug, Args)]
pub struct TokenIssue {
    /// Kind of token.
    #[arg(long, value_enum, default_value = "api")]
    pub kind: KindArg,
    /// Tenant (tenant-admin; inferred from the account for session / api).
    #[arg(long)]
    pub tenant: Option<i64>,
    /// Account (session / api).
    #[arg(long)]
    pub account: Option<i64>,
    /// Workspace of the account (default: its first active one).
    #[arg(long)]
    pub workspace: Option<i64>,
    /// Display name.
    #[arg(long, default_value = "cli")]
    pub name: String,
    /// Abilities (repeat); default `*`.
    #[arg(long = "ability")]
    pub abilities: Vec<String>,
    /// Expires after this many days; default never.
    #[arg(long)]
    pub expires_in_days: Option<u32>,
}

/// A failed command: the message for stderr.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// The `[log] format` the command's config asks for, read before anything
/// is logged: text when there is no config to read (`echo`) or it does not
/// load (its error is reported when the command loads it).
pub fn log_format(cli: &Cli) -> crate::signals::LogFormat {
    if matches!(cli.command, Command::Echo { .. }) {
        return crate::signals::LogFormat::Text;
    }
    Config::from_file(&cli.config).map_or_else(|_| Default::default(), |c| c.log.format)
}

fn load(cli: &Cli) -> Result<Config, CliError> {
    Config::from_file(&cli.config).map_err(|e| e.to_string().into())
}

async fn open_store(cfg: &Config) -> Result<Arc<dyn TokenStore>, CliError> {
    Ok(store::open(&cfg.store.url, cfg.store.max_connections, cfg.store.timeout).await?)
}

fn abilities(list: &[String]) -> Result<Vec<Ability>, CliError> {
    if list.is_empty() {
        return Ok(vec![Ability::parse("*")?]);
    }
    list.iter()
        .map(|a| Ability::parse(a).map_err(|e| format!("ability {a:?}: {e}").into()))
        .collect()
}

/// A listing as a JSON array of the API's shape for each item.
fn list<T>(items: &[T], shape: fn(&T) -> serde_json::Value) -> serde_json::Value {
    serde_json::Value::Array(items.iter().map(shape).collect())
}

fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Echo { listen } = cli.command {
        return echo(listen).await;
    }
    let cfg = load(&cli)?;
    match cli.command {
        Command::CheckConfig => {
            // What each listener will speak, its certificates and keys
            // read and checked by `load`.
            let speaks = |t: &Option<crate::tls::TlsSettings>| match t {
                None => "plain HTTP".to_string(),
                Some(t) if t.client_auth => {
                    format!("TLS, {} files, client certificates required", t.files.len())
                }
                Some(t) => format!("TLS, {} files", t.files.len()),
            };
            eprintln!(
                "{}: ok ({} upstreams, {} routes, store {}; public listener {}, admin listener {})",
                cli.config.display(),
                cfg.upstreams.len(),
                cfg.routes.len(),
                cfg.store.url,
                speaks(&cfg.tls),
                speaks(&cfg.admin_tls),
            );
            Ok(())
        }
        Command::Migrate => {
            open_store(&cfg).await?;
            eprintln!("store {} is migrated", cfg.store.url);
            Ok(())
        }
        Command::Serve => serve(cfg, &cli.config).await,
        // Served above, before any config is read.
        Command::Echo { .. } => Ok(()),
        Command::Init { force, name } => {
            let store = open_store(&cfg).await?;
            let roots = store
                .list_tokens(TokenFilter::All)
                .await?
                .into_iter()
                .filter(|t| t.kind == TokenKind::Root && t.revoked_at.is_none())
                .count();
            if roots > 0 && !force {
                return Err(format!(
                    "the store already has {roots} root token(s); pass --force to mint another"
                )
                .into());
            }
            let issuer = Issuer::new(store, cfg.tokens.clone(), Clock::system(), None);
            let m = issuer
                .mint(
                    MintRequest {
                        kind: TokenKind::Root,
                        tenant_id: None,
                        account_id: None,
                        workspace_id: None,
                        name,
                        abilities: vec![Ability::parse("*")?],
                        expires_at: None,
                    },
                    &Actor::default(),
                )
                .await?;
            eprintln!("root token {} created; it is shown once:", m.row.id);
            println!("{}", m.secret.expose());
            Ok(())
        }
        Command::Tenant(cmd) => tenant(cfg, cmd).await,
        Command::Account(cmd) => account(cfg, cmd).await,
        Command::Token(cmd) => token(cfg, cmd).await,
    }
}

/// Serves until SIGTERM / ctrl-c; SIGHUP reloads `path` ([`crate::reload`]).
async fn serve(cfg: Config, path: &std::path::Path) -> Result<(), CliError> {
    let store = open_store(&cfg).await?;
    let gateway = Gateway::new(cfg, store, Clock::system());
    // Before the listeners: from "listening" on, SIGHUP reloads and
    // SIGTERM shuts down (neither kills the process).
    let reloads = crate::reload::on_sighup(Arc::clone(&gateway), path.to_path_buf())?;
    let stop = crate::server::shutdown_signal();
    let running = crate::server::start(gateway).await?;
    stop.await;
    tracing::info!("shutting down");
    reloads.abort();
    running.shutdown().await;
    Ok(())
}

async fn echo(listen: SocketAddr) -> Result<(), CliError> {
    let listener = crate::echo::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "echo listening");
    crate::echo::serve(listener, crate::server::shutdown_signal()).await;
    Ok(())
}

async fn tenant(cfg: Config, cmd: TenantCommand) -> Result<(), CliError> {
    let store = open_store(&cfg).await?;
    let issuer = Issuer::new(store.clone(), cfg.tokens.clone(), Clock::system(), None);
    let actor = Actor::default();
    match cmd {
        TenantCommand::Create { name } => {
            let (t, m) = issuer.create_tenant_with_admin(&name, &actor).await?;
            let mut v = tenant_json(&t);
            v["admin_token"] = serde_json::json!(m.secret.expose());
            v["admin_token_id"] = serde_json::json!(m.row.id);
            print_json(&v)
        }
        TenantCommand::List => print_json(&list(&store.list_tenants().await?, tenant_json)),
        TenantCommand::Block { id } => print_json(&tenant_json(
            &issuer
                .set_tenant_status(id, Status::Blocked, &actor)
                .await?,
        )),
        TenantCommand::Unblock { id } => print_json(&tenant_json(
            &issuer.set_tenant_status(id, Status::Active, &actor).await?,
        )),
    }
}

async fn account(cfg: Config, cmd: AccountCommand) -> Result<(), CliError> {
    let store = open_store(&cfg).await?;
    let issuer = Issuer::new(store.clone(), cfg.tokens.clone(), Clock::system(), None);
    let actor = Actor::default();
    match cmd {
        AccountCommand::Create(a) => {
            let (acc, _) = issuer
                .create_account(
                    &NewAccount {
                        tenant_id: a.tenant,
                        email: a.email,
                        name: a.name,
                        external_id: a.external_id,
                        parent_account_id: a.parent,
                        workspace: (!a.no_workspace).then_some(a.workspace),
                    },
                    &actor,
                )
                .await?;
            print_json(&account_json(&acc))
        }
        AccountCommand::List { tenant } => print_json(&list(
            &store.list_accounts(tenant, None).await?,
            account_json,
        )),
        AccountCommand::Block { id } => print_json(&account_json(
            &issuer
                .set_account_status(id, Status::Blocked, &actor)
                .await?,
        )),
        AccountCommand::Unblock { id } => print_json(&account_json(
            &issuer
                .set_account_status(id, Status::Active, &actor)
                .await?,
        )),
    }
}

async fn token(cfg: Config, cmd: TokenCommand) -> Result<(), CliError> {
    let store = open_store(&cfg).await?;
    let issuer = Issuer::new(store.clone(), cfg.tokens.clone(), Clock::system(), None);
    let actor = Actor::default();
    match cmd {
        TokenCommand::Issue(t) => {
            let kind = TokenKind::from(t.kind);
            let mut tenant_id = t.tenant;
            if let (None, Some(a)) = (tenant_id, t.account) {
                tenant_id = store.get_account(a).await?.map(|a| a.tenant_id);
            }
            // Like the native API: bind the account's first active
            // workspace unless one is named.
            let mut workspace_id = t.workspace;
            if let (None, Some(a)) = (workspace_id, t.account) {
                workspace_id = store
                    .list_workspaces(a)
                    .await?
                    .into_iter()
                    .find(|w| w.status == Status::Active)
                    .map(|w| w.id);
            }
            let expires_at = t
                .expires_in_days
                .map(|d| issuer.clock().now() + i64::from(d) * 86_400);
            let m = issuer
                .mint(
                    MintRequest {
                        kind,
                        tenant_id,
                        account_id: t.account,
                        workspace_id,
                        name: t.name,
                        abilities: abilities(&t.abilities)?,
                        expires_at,
                    },
                    &actor,
                )
                .await?;
            eprintln!("{} token {} created; it is shown once:", kind, m.row.id);
            println!("{}", m.secret.expose());
            Ok(())
        }
        TokenCommand::List { account, tenant } => {
            let filter = match (account, tenant) {
                (Some(a), _) => TokenFilter::Account(a),
                (None, Some(t)) => TokenFilter::Tenant(t),
                (None, None) => TokenFilter::All,
            };
            print_json(&list(&store.list_tokens(filter).await?, masked_token_json))
        }
        TokenCommand::Revoke { id } => {
            print_json(&masked_token_json(&issuer.revoke(&id, &actor).await?))
        }
        TokenCommand::Import {
            sha256,
            account,
            name,
            abilities: abs,
        } => {
            let hash = TokenHash::from_hex(&sha256).ok_or("--sha256 must be 64 hex digits")?;
            let tenant_id = store.get_account(account).await?.map(|a| a.tenant_id);
            let row = issuer
                .import_legacy(
                    hash,
                    MintRequest {
                        kind: TokenKind::Api,
                        tenant_id,
                        account_id: Some(account),
                        workspace_id: None,
                        name,
                        abilities: abilities(&abs)?,
                        expires_at: None,
                    },
                    &actor,
                )
                .await?;
            if !cfg.tokens.accepts_legacy() {
                eprintln!("note: tokens.accept_legacy is off, so this token is refused until it is turned on");
            }
            print_json(&masked_token_json(&row))
        }
    }
}
