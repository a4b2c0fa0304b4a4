//! `sopm keys`: create, list and revoke API keys in the server's database directly, or
//! in a cluster's Redis (`--redis`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sopm_core::TenantId;
use sopm_server::config::ServerConfig;

/// The `sopm keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key for a tenant; prints its secret once.
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// A label for people.
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List a tenant's keys.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a key (a running server stops accepting it within 10 s).
    Revoke {
        /// The key's id (`key_…`).
        key_id: String,
        /// The key's tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// Where the server keeps its keys.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// The server's data directory [default: ./sopm-data].
    #[arg(long, env = "SOPM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The server's TOML settings (for its data directory or its cluster's Redis).
    #[arg(long, env = "SOPM_CONFIG")]
    config: Option<PathBuf>,
    /// The cluster's Redis (its nodes keep their keys there), e.g.
    /// `redis://10.0.0.5:6379/0`.
    #[arg(long = "redis", env = "SOPM_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
}

impl DataArgs {
    fn server_config(&self) -> Result<ServerConfig, String> {
        let mut c = match &self.config {
            Some(p) => ServerConfig::from_file(p)?,
            None => ServerConfig::default(),
        };
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        if let Some(url) = &self.redis_url {
            c.cluster.redis_url = Some(url.clone());
        }
        Ok(c)
    }
}

/// Runs one `sopm keys` subcommand.
pub async fn run_keys(cmd: KeysCommand) -> Result<ExitCode, String> {
    let (data, tenant) = match &cmd {
        KeysCommand::Create { data, tenant, .. }
        | KeysCommand::List { data, tenant }
        | KeysCommand::Revoke { data, tenant, .. } => (data, tenant),
    };
    let tenant = TenantId::new(tenant).map_err(|e| format!("--tenant: {e}"))?;
    let config = data.server_config()?;
    let keys = match &config.cluster.redis_url {
        Some(url) => sopm_server::cluster::open_key_store(url).await?,
        None => sopm_server::server::open_key_store(&config)?,
    };
    let place = match &config.cluster.redis_url {
        Some(url) => sopm_server::config::redacted(url),
        None => config.data_dir.display().to_string(),
    };
    match &cmd {
        KeysCommand::Create { label, .. } => {
            let (info, secret) = keys
                .create(&tenant, label)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "sopm: created {} for tenant {} in {}; the secret below is shown only once:",
                info.id, info.tenant, place
            );
            println!("{}", secret.expose());
        }
        KeysCommand::List { .. } => {
            let list = keys.list(&tenant).await.map_err(|e| e.to_string())?;
            if list.is_empty() {
                eprintln!("no keys for tenant {tenant}");
            }
            for k in list {
                println!(
                    "{}  {}  {}  created_ms={}{}",
                    k.id,
                    k.prefix,
                    if k.label.is_empty() { "-" } else { &k.label },
                    k.created_ms,
                    k.revoked_ms
                        .map(|r| format!("  revoked_ms={r}"))
                        .unwrap_or_default()
                );
            }
        }
        KeysCommand::Revoke { key_id, .. } => {
            let k = keys
                .revoke(&tenant, key_id)
                .await
                .map_err(|e| e.to_string())?;
            println!("revoked {} ({})", k.id, k.prefix);
        }
    }
    Ok(ExitCode::SUCCESS)
}
