//! The client side's configuration in the CLI: the flags `ping`, `query`
//! and `checkout` share (servers, identity, group, TLS), laid over the
//! client file and FLOATLM_* variables ([`ClientConfig`], the same file the
//! library reads); `floatlm client config check`; and the server status
//! lines `checkout` prints (each server's group, the group in use).

use clap::{Args, Subcommand};
use floatlm_client::{Client, ClientConfig, Options, ServerSpec, ServerState};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// Identity string ID:SECRET@ADDRESS, or an ADDRESS with --identity (or
    /// identity in the client file); repeat for several servers. ADDRESS is
    /// [GROUP:]HOST:PORT or [GROUP:]https://HOST[:PORT]; port 443 is TLS.
    /// Replaces `servers` of the client file.
    #[arg(short = 's', long = "server")]
    pub servers: Vec<String>,
    /// Identity string(s), comma separated; replaces `identity` of the
    /// client file and FLOATLM_IDENTITY.
    #[arg(long)]
    pub identity: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// This client's affinity group (servers tagged GROUP:ADDRESS).
    #[arg(long)]
    pub group: Option<String>,
}

/// TLS flags, for every command that talks to a server.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM file of the CA that signs the https servers' certificates
    /// (instead of the system roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<String>,
    /// Do not verify TLS certificates (insecure; prints a warning).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// The client configuration file.
    Config {
        #[command(subcommand)]
        command: ClientConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientConfigCommand {
    /// Show each value a client would use and where it came from (file and
    /// line, environment variable, flag, default); secrets masked.
    Check(ServerArgs),
}

impl TlsArgs {
    fn apply(&self, cfg: &mut ClientConfig) -> Result<(), floatlm_client::ClientError> {
        cfg.flag("ca_file", "--ca-file", self.ca_file.as_deref())?;
        if self.insecure_skip_tls_verify {
            cfg.flag(
                "insecure_skip_tls_verify",
                "--insecure-skip-tls-verify",
                Some("true"),
            )?;
        }
        Ok(())
    }
}

impl ServerArgs {
    /// The client file and environment with these flags on top.
    pub fn config(&self) -> Result<ClientConfig, floatlm_client::ClientError> {
        let mut cfg = ClientConfig::load()?;
        let servers = self.servers.join(",");
        cfg.flag(
            "servers",
            "-s",
            (!servers.is_empty()).then_some(servers.as_str()),
        )?;
        cfg.flag("identity", "--identity", self.identity.as_deref())?;
        cfg.flag("group", "--group", self.group.as_deref())?;
        self.tls.apply(&mut cfg)?;
        Ok(cfg)
    }

    /// The servers and options to connect with; a configuration error is
    /// printed and becomes exit 2.
    pub fn resolve(&self) -> Result<(Vec<ServerSpec>, Options), ExitCode> {
        let usage = |e: floatlm_client::ClientError| {
            eprintln!("floatlm: {e}");
            ExitCode::from(2)
        };
        let cfg = self.config().map_err(usage)?;
        let servers = cfg.servers().map_err(usage)?;
        Ok((servers, cfg.options(Options::from_env())))
    }
}

/// The addresses `floatlm ping` asks: its -s values, else the servers of
/// the client configuration; and the options carrying its TLS settings.
pub fn ping_targets(
    servers: &[String],
    tls: &TlsArgs,
) -> Result<(Vec<String>, Options), floatlm_client::ClientError> {
    let mut cfg = ClientConfig::load()?;
    tls.apply(&mut cfg)?;
    let options = cfg.options(Options::default());
    if !servers.is_empty() {
        let addrs = servers
            .iter()
            .map(|s| {
                s.rsplit_once('@')
                    .map_or(s.as_str(), |(_, a)| a)
                    .to_string()
            })
            .collect();
        return Ok((addrs, options));
    }
    let addrs = cfg
        .servers()?
        .iter()
        .map(ServerSpec::display_address)
        .collect();
    Ok((addrs, options))
}

/// `floatlm client config check`.
pub fn check(args: &ServerArgs) -> ExitCode {
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floatlm: {e}");
            return ExitCode::from(2);
        }
    };
    match cfg.file() {
        Some((path, why)) => println!("client file: {} ({why})", path.display()),
        None => println!(
            "client file: none (FLOATLM_CLIENT_CONFIG is not set; looked for {})",
            floatlm_client::client_config_search_path()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    for (key, value, source) in cfg.report() {
        println!("{key:<25} = {value:<40} ; {source}");
    }
    let servers = match cfg.servers() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floatlm: {e}");
            return ExitCode::from(2);
        }
    };
    let group = cfg.options(Options::default()).group;
    println!("servers a client would use:");
    for s in &servers {
        let home = match (&group, &s.group) {
            (None, _) => "",
            (Some(g), Some(sg)) if g == sg => "  (own group)",
            (Some(_), _) => "  (other group: used when the own group is failing)",
        };
        println!(
            "  {:<8} {}  identity {}{home}",
            s.group.as_deref().unwrap_or("-"),
            s.display_address(),
            s.identity_id
        );
    }
    println!("client configuration is valid");
    ExitCode::SUCCESS
}

/// Each server's status, one line each: group, address, state, whether the
/// client uses it; and the group in use.
pub fn status_lines(client: &Client) -> Vec<String> {
    let mut lines: Vec<String> = client
        .server_status()
        .iter()
        .map(|s| {
            let state = match &s.state {
                ServerState::Unknown => "not tried".to_string(),
                ServerState::Ok => "ok".to_string(),
                ServerState::Failing { last_error, .. } => format!("failing: {last_error}"),
            };
            format!(
                "server {}{} group {}: {state}{}",
                if s.tls { "https://" } else { "" },
                s.address,
                s.group.as_deref().unwrap_or("-"),
                if s.active { " (in use)" } else { "" }
            )
        })
        .collect();
    if let Some(own) = client.group() {
        lines.push(format!(
            "affinity group {own}; group in use: {}",
            client.group_in_use().as_deref().unwrap_or("none")
        ));
    }
    lines
}

/// While it runs, says on stderr whenever the client's requests move to
/// another server or group (failover, return to the own group). Only for
/// clients with several servers; aborted on drop.
pub struct StatusWatch(Option<tokio::task::JoinHandle<()>>);

impl StatusWatch {
    pub fn start(client: &Client) -> StatusWatch {
        let status = client.server_status();
        if status.len() < 2 && client.group().is_none() {
            return StatusWatch(None);
        }
        for l in status_lines(client) {
            eprintln!("floatlm: {l}");
        }
        let client = client.clone();
        StatusWatch(Some(tokio::spawn(async move {
            let in_use = |c: &Client| {
                c.server_status()
                    .into_iter()
                    .find(|s| s.active)
                    .map(|s| s.address)
            };
            let mut last = in_use(&client);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = in_use(&client);
                if now.is_some() && now != last {
                    for l in status_lines(&client) {
                        eprintln!("floatlm: {l}");
                    }
                    last = now;
                }
            }
        })))
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}
