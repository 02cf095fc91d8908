//! The one binary: `serve`, `config check`, `vendor …`, `admin …`.

pub mod admin;
pub mod backup;
pub mod client;
pub mod client_config;
pub mod serve;
pub mod vendor;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, Layers};

#[derive(Parser, Debug)]
#[command(
    name = "floatlm",
    version,
    about = "Active-active floating-license manager"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a license server instance.
    Serve(ServeArgs),
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Vendor tools: signing keys and license files.
    Vendor {
        #[command(subcommand)]
        command: vendor::VendorCommand,
    },
    /// Operate a running server through its admin API.
    Admin(admin::AdminArgs),
    /// Backup files (made with `floatlm admin backup create`).
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Restore a backup file into an empty database (or, with --replace
    /// and confirmation, over a used one); no lease is restored.
    Restore(backup::RestoreArgs),
    /// Check that a server answers (no identity needed).
    Ping(client::PingArgs),
    /// Exit 0 when a server's healthz says it can serve (container health checks).
    Health(client::HealthArgs),
    /// Show total, used and free seats.
    Query(client::QueryArgs),
    /// Hold a seat while a command runs (or for --hold SECS).
    #[command(after_help = client::CHECKOUT_HELP)]
    Checkout(client::CheckoutArgs),
    /// The client side's own configuration (the client file).
    Client {
        #[command(subcommand)]
        command: client_config::ClientCommand,
    },
    /// List the seats this identity holds now, from any session.
    Seats(client::SeatsArgs),
    /// Release a seat of this identity (one a crashed workstation held).
    Release(client::ReleaseArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) and where each value came from.
    Check(ServerFlags),
}

/// Flags that override the INI file and FLOATLM_* variables.
#[derive(Args, Debug, Clone, Default)]
pub struct ServerFlags {
    /// INI file (also FLOATLM_CONFIG).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Licensing listener, IP:PORT [default: 127.0.0.1:8990].
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Admin API listener, IP:PORT [default: 127.0.0.1:8991].
    #[arg(long, value_name = "IP:PORT")]
    pub admin_listen: Option<String>,
    /// HOST:PORT clients use to reach this server (written into identity strings).
    #[arg(long, value_name = "HOST:PORT")]
    pub public_address: Option<String>,
    /// This instance's id [default: random].
    #[arg(long)]
    pub instance_id: Option<String>,
    /// Data directory [default: ./floatlm-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DB [default: SQLite in the data dir].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// File holding the database URL.
    #[arg(long, value_name = "FILE")]
    pub database_url_file: Option<String>,
    /// Database connection pool size [default: 16].
    #[arg(long)]
    pub max_connections: Option<String>,
    /// File holding master keys, ID:BASE64 per line; the last one seals.
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<String>,
    /// Trusted vendor public key (.pub file); repeat for several.
    #[arg(long = "vendor-key", value_name = "FILE")]
    pub vendor_keys: Vec<String>,
    /// File holding a static admin token (role admin).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<String>,
    /// Executable run on every login with JSON on stdin; exit 0 allows.
    #[arg(long = "auth", value_name = "PATH")]
    pub auth_script: Option<String>,
    /// Lease time-to-live [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub lease_ttl: Option<String>,
    /// How long the database keeps a seat after its last recorded renewal
    /// [default: 2 × lease-ttl].
    #[arg(long, value_name = "DURATION")]
    pub lease_hold: Option<String>,
    /// How long to keep serving after SIGTERM while healthz says 503 [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub drain_delay: Option<String>,
    /// text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// error, warn, info, debug, trace [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub flags: ServerFlags,
    /// Also create (once) a demo vendor key, a signed demo license (feature
    /// `demo`, 5 seats) and an identity in DATA_DIR/demo-identity.txt.
    #[arg(long)]
    pub demo: bool,
}

impl ServerFlags {
    /// File < environment < flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_with_env(|k| std::env::var(k).ok())
    }

    pub fn load_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut layers = Layers::default();
        let file = self
            .config
            .clone()
            .or_else(|| env("FLOATLM_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            layers.file(&path)?;
        }
        layers.env(env);
        layers.flag("listen", self.listen.as_ref());
        layers.flag("admin_listen", self.admin_listen.as_ref());
        layers.flag("public_address", self.public_address.as_ref());
        layers.flag("instance_id", self.instance_id.as_ref());
        layers.flag("data_dir", self.data_dir.as_ref());
        layers.flag("database_url", self.database_url.as_ref());
        layers.flag("database_url_file", self.database_url_file.as_ref());
        layers.flag("max_connections", self.max_connections.as_ref());
        layers.flag("master_key_file", self.master_key_file.as_ref());
        if !self.vendor_keys.is_empty() {
            layers.flag("vendor_keys", Some(self.vendor_keys.join(",")));
        }
        layers.flag("admin_token_file", self.admin_token_file.as_ref());
        layers.flag_named("auth_script", "--auth", self.auth_script.as_ref());
        layers.flag("lease_ttl", self.lease_ttl.as_ref());
        layers.flag("lease_hold", self.lease_hold.as_ref());
        layers.flag("drain_delay", self.drain_delay.as_ref());
        layers.flag("log_format", self.log_format.as_ref());
        layers.flag("log_level", self.log_level.as_ref());
        layers.build()
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Checkout(_)) {
        // Short-lived commands die quietly when their output pipe closes
        // (`floatlm admin features | head`); the server keeps ignoring SIGPIPE,
        // and so does checkout: dying of a closed stderr would leave CMD
        // running without a seat (CMD itself starts with SIGPIPE at its default).
        // SAFETY: called before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floatlm: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Config {
                command: ConfigCommand::Check(flags),
            } => match flags.load() {
                Ok(cfg) => {
                    print!("{}", cfg.describe());
                    println!("configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("floatlm: configuration error: {e}");
                    ExitCode::from(2)
                }
            },
            Command::Vendor { command } => report(vendor::run(command)),
            Command::Admin(args) => match admin::run(args).await {
                Ok(code) => code,
                Err(e) => report(Err(e)),
            },
            Command::Backup {
                command: backup::BackupCommand::Verify(args),
            } => report(backup::verify(args).await),
            Command::Restore(args) => report(backup::restore(args).await),
            Command::Ping(args) => client::ping(args).await,
            Command::Health(args) => client::health(args).await,
            Command::Query(args) => client::query(args).await,
            Command::Checkout(args) => client::checkout(args).await,
            Command::Client {
                command:
                    client_config::ClientCommand::Config {
                        command: client_config::ClientConfigCommand::Check(args),
                    },
            } => client_config::check(&args),
            Command::Seats(args) => client::seats(args).await,
            Command::Release(args) => client::release_seat(args).await,
        }
    });
    // Tasks still waiting on a database that is gone (or a blocking call)
    // must not hold the process past the shutdown grace.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floatlm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
