//! `wtq tenant` and `wtq token`: manage the service's tenants, their quotas and API tokens,
//! either straight in Redis (`--url redis://…`, for the operator) or through the service
//! (`--url http://…` with an admin token).

use std::time::Duration;

use clap::{Args, Subcommand};
use wtq_client::broker::Tenancy;
use wtq_client::message::now_ms;
use wtq_client::tenancy::{Quotas, Rate, Tenant, TokenRecord, valid_tenant_name};

use super::queue::{Connection, broker_failure};
use super::{Failure, exit, say};
use crate::units;

#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(subcommand)]
    action: TenantAction,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Subcommand)]
enum TenantAction {
    /// Create a tenant with its quotas.
    Create {
        /// 1 to 40 lowercase letters, digits or `-`.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Replace a tenant's quotas (flags not given become unlimited).
    Update {
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List tenants and their quotas.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// A tenant's quotas; each is unlimited unless given.
#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// Most of its tasks running at once, across all workers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// Most enqueues per period, e.g. 100/s, 6000/m.
    #[arg(long, value_name = "N/s|N/m|N/h", value_parser = Rate::parse)]
    rate: Option<Rate>,
    /// Cap (and default) of a task's time limit, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    max_time: Option<Duration>,
    /// Cap (and default) of a task's fuel, e.g. 1e10.
    #[arg(long, value_name = "N", value_parser = units::parse_count)]
    max_fuel: Option<u64>,
    /// Cap (and default) of a task's memory, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    max_memory: Option<u64>,
    /// Most bytes of stored components (every version kept counts).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    storage: Option<u64>,
    /// Largest component upload.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_bytes)]
    max_upload: Option<u64>,
}

impl QuotaArgs {
    fn quotas(&self) -> Quotas {
        Quotas {
            concurrency: self.concurrency,
            rate: self.rate,
            max_time_ms: self.max_time.map(|time| time.as_millis() as u64),
            max_fuel: self.max_fuel,
            max_memory: self.max_memory,
            storage: self.storage,
            max_upload: self.max_upload,
        }
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a token for a tenant (or an admin token); it is printed once and stored hashed.
    Create {
        #[arg(required_unless_present = "admin", conflicts_with = "admin")]
        tenant: Option<String>,
        /// An admin token: manages tenants and tokens, nothing else.
        #[arg(long)]
        admin: bool,
    },
    /// List tokens (ids and tenants, never the tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; requests with it are refused at once.
    Revoke { id: String },
}

/// Where tenants are managed: Redis itself, or the service's admin API.
enum Admin {
    Broker(wtq_client::AnyBroker),
    Http(wtq_client::http::HttpApi),
}

impl Admin {
    async fn connect(connection: &Connection) -> Result<Admin, Failure> {
        match connection.endpoint().await? {
            wtq_client::Endpoint::Broker(broker) => Ok(Admin::Broker(broker)),
            wtq_client::Endpoint::Http(api) => Ok(Admin::Http(api)),
        }
    }

    async fn create_tenant(&self, name: &str, quotas: Quotas) -> Result<Tenant, Failure> {
        match self {
            Admin::Broker(broker) => {
                if !valid_tenant_name(name) {
                    return Err(Failure::new(
                        exit::USAGE,
                        format!(
                            "tenant name `{name}`: use 1 to 40 lowercase letters, digits or `-`"
                        ),
                    ));
                }
                if broker.tenant(name).await.map_err(broker_failure)?.is_some() {
                    return Err(Failure::new(
                        exit::USAGE,
                        format!("tenant `{name}` exists already; use `wtq tenant update`"),
                    ));
                }
                let tenant = Tenant {
                    name: name.to_string(),
                    created_ms: now_ms(),
                    quotas,
                };
                broker.put_tenant(&tenant).await.map_err(broker_failure)?;
                Ok(tenant)
            }
            Admin::Http(api) => api
                .create_tenant(&wtq_client::api::TenantRequest {
                    name: name.to_string(),
                    quotas,
                })
                .await
                .map_err(broker_failure),
        }
    }

    async fn update_tenant(&self, name: &str, quotas: Quotas) -> Result<Tenant, Failure> {
        match self {
            Admin::Broker(broker) => {
                let Some(mut tenant) = broker.tenant(name).await.map_err(broker_failure)? else {
                    return Err(unknown_tenant(name));
                };
                tenant.quotas = quotas;
                broker.put_tenant(&tenant).await.map_err(broker_failure)?;
                Ok(tenant)
            }
            Admin::Http(api) => api
                .update_tenant(name, &quotas)
                .await
                .map_err(broker_failure)?
                .ok_or_else(|| unknown_tenant(name)),
        }
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, Failure> {
        match self {
            Admin::Broker(broker) => broker.tenants().await.map_err(broker_failure),
            Admin::Http(api) => api.tenants().await.map_err(broker_failure),
        }
    }

    async fn create_token(&self, tenant: Option<&str>) -> Result<(String, TokenRecord), Failure> {
        match self {
            Admin::Broker(broker) => {
                if let Some(name) = tenant
                    && broker.tenant(name).await.map_err(broker_failure)?.is_none()
                {
                    return Err(unknown_tenant(name));
                }
                let (token, hash, record) =
                    crate::service::token::mint(tenant).map_err(|error| {
                        Failure::new(exit::INTERNAL, format!("no randomness: {error}"))
                    })?;
                broker
                    .put_token(&hash, &record)
                    .await
                    .map_err(broker_failure)?;
                Ok((token, record))
            }
            Admin::Http(api) => {
                let created = api
                    .create_token(&wtq_client::api::TokenRequest {
                        tenant: tenant.map(str::to_string),
                    })
                    .await
                    .map_err(broker_failure)?;
                let record = TokenRecord {
                    id: created.id,
                    tenant: created.tenant,
                    created_ms: now_ms(),
                };
                Ok((created.token, record))
            }
        }
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, Failure> {
        match self {
            Admin::Broker(broker) => broker.tokens().await.map_err(broker_failure),
            Admin::Http(api) => api.tokens().await.map_err(broker_failure),
        }
    }

    async fn revoke_token(&self, id: &str) -> Result<bool, Failure> {
        match self {
            Admin::Broker(broker) => broker.revoke_token(id).await.map_err(broker_failure),
            Admin::Http(api) => api.revoke_token(id).await.map_err(broker_failure),
        }
    }
}

fn unknown_tenant(name: &str) -> Failure {
    Failure::new(
        exit::USAGE,
        format!("no tenant `{name}` (see `wtq tenant list`)"),
    )
}

pub async fn tenant(args: TenantArgs) -> Result<u8, Failure> {
    let admin = Admin::connect(&args.connection).await?;
    match args.action {
        TenantAction::Create { name, quotas } => {
            let tenant = admin.create_tenant(&name, quotas.quotas()).await?;
            say(format!(
                "created tenant {}{}",
                tenant.name,
                describe(&tenant.quotas)
            ));
        }
        TenantAction::Update { name, quotas } => {
            let tenant = admin.update_tenant(&name, quotas.quotas()).await?;
            say(format!(
                "updated tenant {}{}",
                tenant.name,
                describe(&tenant.quotas)
            ));
        }
        TenantAction::List { json } => {
            let tenants = admin.tenants().await?;
            if json {
                say(serde_json::to_string(&tenants).unwrap_or_default());
            } else if tenants.is_empty() {
                say("no tenants (use `wtq tenant create NAME`)");
            }
            for tenant in tenants.iter().filter(|_| !json) {
                say(format!(
                    "{}  created {}{}",
                    tenant.name,
                    units::format_rfc3339(tenant.created_ms),
                    describe(&tenant.quotas)
                ));
            }
        }
    }
    Ok(exit::SUCCESS)
}

pub async fn token(args: TokenArgs) -> Result<u8, Failure> {
    let admin = Admin::connect(&args.connection).await?;
    match args.action {
        TokenAction::Create { tenant, .. } => {
            let (token, record) = admin.create_token(tenant.as_deref()).await?;
            // The token alone on stdout, so `$(wtq token create …)` captures it.
            say(&token);
            eprintln!(
                "token {} for {} (shown once; stored only as a hash)",
                record.id,
                record.tenant.as_deref().unwrap_or("admin")
            );
        }
        TokenAction::List { json } => {
            let tokens = admin.tokens().await?;
            if json {
                say(serde_json::to_string(&tokens).unwrap_or_default());
            }
            for token in tokens.iter().filter(|_| !json) {
                say(format!(
                    "{}  {}  created {}",
                    token.id,
                    token.tenant.as_deref().unwrap_or("(admin)"),
                    units::format_rfc3339(token.created_ms)
                ));
            }
        }
        TokenAction::Revoke { id } => {
            if !admin.revoke_token(&id).await? {
                return Err(Failure::new(
                    exit::USAGE,
                    format!("no token {id} (see `wtq token list`)"),
                ));
            }
            say(format!("revoked {id}"));
        }
    }
    Ok(exit::SUCCESS)
}

/// `  concurrency 2, rate 100/s, …` for the quotas that are set.
fn describe(quotas: &Quotas) -> String {
    let mut parts = Vec::new();
    if let Some(n) = quotas.concurrency {
        parts.push(format!("concurrency {n}"));
    }
    if let Some(rate) = quotas.rate {
        parts.push(format!("rate {rate}"));
    }
    if let Some(ms) = quotas.max_time_ms {
        parts.push(format!(
            "max time {}",
            units::format_duration(Duration::from_millis(ms))
        ));
    }
    if let Some(fuel) = quotas.max_fuel {
        parts.push(format!("max fuel {fuel}"));
    }
    if let Some(bytes) = quotas.max_memory {
        parts.push(format!("max memory {}", units::format_bytes(bytes)));
    }
    if let Some(bytes) = quotas.storage {
        parts.push(format!("storage {}", units::format_bytes(bytes)));
    }
    if let Some(bytes) = quotas.max_upload {
        parts.push(format!("max upload {}", units::format_bytes(bytes)));
    }
    if parts.is_empty() {
        "  (no quotas)".into()
    } else {
        format!("  {}", parts.join(", "))
    }
}
