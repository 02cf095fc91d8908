//! `floatlm admin …`: a thin client of the admin API.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(
        long,
        env = "FLOATLM_ADMIN_URL",
        default_value = "http://127.0.0.1:8991"
    )]
    pub url: String,
    /// Bearer token [default: the contents of DATA_DIR/admin.token].
    #[arg(long, env = "FLOATLM_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (the server's admin_token_file works).
    #[arg(long, env = "FLOATLM_ADMIN_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Where to look for admin.token when no token is given.
    #[arg(long, env = "FLOATLM_DATA_DIR", default_value = "./floatlm-data")]
    pub data_dir: PathBuf,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Apply a signed license file (same as `license apply`).
    Apply { file: PathBuf },
    /// Licenses.
    License {
        #[command(subcommand)]
        command: LicenseCmd,
    },
    /// Seat counts per feature.
    Features,
    /// Live leases.
    Lease {
        #[command(subcommand)]
        command: LeaseCmd,
    },
    /// Client identities.
    Identity {
        #[command(subcommand)]
        command: IdentityCmd,
    },
    /// Admin API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// The instances sharing this database.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Re-seal every secret and license under the newest master key.
    RotateKey,
    /// Run the integrity check now; exits 1 when it refuses a feature.
    Verify,
    /// After restoring the database from a backup made outside floatlm (or a
    /// failover that lost transactions): hold every seat until the promises
    /// given before the restore have run out, so none is granted twice.
    Quarantine {
        /// How long (e.g. 90s); default: the longest lease_ttl any instance
        /// recorded, plus 2 s.
        #[arg(long, value_name = "DURATION")]
        hold: Option<String>,
    },
    /// This instance's status.
    Status,
    /// Backups of the whole cluster's licensing state.
    Backup {
        #[command(subcommand)]
        command: BackupCmd,
    },
    /// Usage records (docs/operations.md, "Usage records").
    Usage {
        #[command(subcommand)]
        command: UsageCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsageCmd {
    /// Checkouts, seat-hours, peak concurrency and denials over [--from,
    /// --to), per group (monitor role).
    Report {
        /// Start, inclusive: a date (2026-01-01, midnight UTC) or RFC 3339.
        #[arg(long)]
        from: String,
        /// End, exclusive: a date or RFC 3339.
        #[arg(long)]
        to: String,
        /// Group by feature, identity, user or host.
        #[arg(long, default_value = "feature")]
        by: String,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Make a backup now (operator role) and save it here, 0600.
    Create {
        /// Where to write it [default: ./floatlm-backup-TIME.fbk].
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The cluster's scheduled backups (the claim table: which instance took
    /// which, into its own backup_dir) and the files in the backup_dir of
    /// the instance asked.
    List,
}

#[derive(Subcommand, Debug)]
pub enum LicenseCmd {
    List,
    Apply {
        file: PathBuf,
    },
    /// Remove a license (admin role): its features stop granting; leases it
    /// granted stay valid until released or expired, as after a shrink.
    Remove {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    List,
    /// Force-release a lease (operator role).
    Release {
        lease: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum IdentityCmd {
    /// Create an identity; prints its identity string once.
    Create {
        #[arg(long)]
        name: String,
        /// Expiry, RFC 3339 (2027-01-01T00:00:00Z) or a duration from now (30d, 12h).
        #[arg(long)]
        expires: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
    /// Let identity ID use FEATUREs (with `assignment = manual`; admin role).
    Assign {
        id: String,
        #[arg(required = true)]
        features: Vec<String>,
    },
    /// Take FEATUREs from identity ID (admin role). Leases it holds run on
    /// until released or expired; new logins are refused.
    Unassign {
        id: String,
        #[arg(required = true)]
        features: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every instance with its state (up, draining, down) and live leases.
    Status,
    /// Make an instance's healthz answer 503 so the proxy moves clients away.
    Drain { id: String },
    /// Forget an instance that is down.
    Remove { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    Create {
        #[arg(long)]
        name: String,
        /// monitor, operator or admin.
        #[arg(long)]
        role: String,
    },
    List,
    Revoke {
        id: String,
    },
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Body>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
            .bearer_auth(&self.token);
        req = match body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Text(t)) => req.header("content-type", "text/plain").body(t),
            None => req,
        };
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the admin API at {} (is `floatlm serve` running? set --url)",
                self.url
            )
        })?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or_else(|_| json!({}));
        if !status.is_success() {
            let msg = v["message"].as_str().unwrap_or("no message");
            bail!(
                "{msg} (HTTP {status}, {})",
                v["error"].as_str().unwrap_or("error")
            );
        }
        Ok(v)
    }
}

impl Api {
    /// A POST whose answer is a file: (suggested name, bytes).
    async fn download(&self, path: &str) -> anyhow::Result<(Option<String>, Vec<u8>)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.url.trim_end_matches('/')))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the admin API at {} (is `floatlm serve` running? set --url)",
                    self.url
                )
            })?;
        let status = resp.status();
        if !status.is_success() {
            let v: Value = resp.json().await.unwrap_or_else(|_| json!({}));
            bail!(
                "{} (HTTP {status}, {})",
                v["message"].as_str().unwrap_or("no message"),
                v["error"].as_str().unwrap_or("error")
            );
        }
        let name = resp
            .headers()
            .get(reqwest::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("filename=\"").nth(1))
            .and_then(|v| v.split('"').next())
            .filter(|n| crate::backup::files::is_backup_name(n))
            .map(str::to_string);
        Ok((name, resp.bytes().await?.to_vec()))
    }
}

enum Body {
    Json(Value),
    Text(String),
}

fn parse_expiry(s: &str) -> anyhow::Result<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc).to_rfc3339());
    }
    let (n, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: i64 = n
        .parse()
        .with_context(|| format!("--expires '{s}' is neither RFC 3339 nor a duration like 30d"))?;
    let d = match unit {
        "d" => chrono::Duration::days(n),
        "h" => chrono::Duration::hours(n),
        "m" => chrono::Duration::minutes(n),
        "s" | "" => chrono::Duration::seconds(n),
        other => bail!("--expires unit '{other}' is not one of d, h, m, s"),
    };
    Ok((chrono::Utc::now() + d).to_rfc3339())
}

/// Runs one admin command; the exit code is 1 when the command worked but
/// found a problem (`verify` refusing a feature).
pub async fn run(args: AdminArgs) -> anyhow::Result<std::process::ExitCode> {
    let token = match (args.token.clone(), &args.token_file) {
        (Some(t), _) => t,
        (None, Some(p)) => std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .with_context(|| format!("cannot read the admin token file {}", p.display()))?,
        (None, None) => {
            let p = args.data_dir.join("admin.token");
            std::fs::read_to_string(&p)
                .map(|t| t.trim().to_string())
                .with_context(|| format!("no admin token: pass --token or FLOATLM_ADMIN_TOKEN, or run where {} exists", p.display()))?
        }
    };
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?,
        url: args.url.clone(),
        token,
    };
    use reqwest::Method as M;
    let v = match &args.command {
        AdminCommand::Apply { file }
        | AdminCommand::License {
            command: LicenseCmd::Apply { file },
        } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            api.call(M::POST, "/admin/v1/licenses", Some(Body::Text(text)))
                .await?
        }
        AdminCommand::License {
            command: LicenseCmd::List,
        } => api.call(M::GET, "/admin/v1/licenses", None).await?,
        AdminCommand::License {
            command: LicenseCmd::Remove { id },
        } => {
            api.call(M::DELETE, &format!("/admin/v1/licenses/{id}"), None)
                .await?
        }
        AdminCommand::Features => api.call(M::GET, "/admin/v1/features", None).await?,
        AdminCommand::Lease {
            command: LeaseCmd::List,
        } => api.call(M::GET, "/admin/v1/leases", None).await?,
        AdminCommand::Lease {
            command: LeaseCmd::Release { lease },
        } => {
            api.call(M::DELETE, &format!("/admin/v1/leases/{lease}"), None)
                .await?
        }
        AdminCommand::Identity {
            command: IdentityCmd::Create { name, expires },
        } => {
            let expires_at = expires.as_deref().map(parse_expiry).transpose()?;
            api.call(
                M::POST,
                "/admin/v1/identities",
                Some(Body::Json(json!({"name": name, "expires_at": expires_at}))),
            )
            .await?
        }
        AdminCommand::Identity {
            command: IdentityCmd::List,
        } => api.call(M::GET, "/admin/v1/identities", None).await?,
        AdminCommand::Identity {
            command: IdentityCmd::Revoke { id },
        } => {
            api.call(M::DELETE, &format!("/admin/v1/identities/{id}"), None)
                .await?
        }
        AdminCommand::Identity {
            command: IdentityCmd::Assign { id, features },
        } => {
            api.call(
                M::POST,
                &format!("/admin/v1/identities/{id}/features"),
                Some(Body::Json(json!({ "features": features }))),
            )
            .await?
        }
        AdminCommand::Identity {
            command: IdentityCmd::Unassign { id, features },
        } => {
            api.call(
                M::DELETE,
                &format!("/admin/v1/identities/{id}/features"),
                Some(Body::Json(json!({ "features": features }))),
            )
            .await?
        }
        AdminCommand::Token {
            command: TokenCmd::Create { name, role },
        } => {
            api.call(
                M::POST,
                "/admin/v1/tokens",
                Some(Body::Json(json!({"name": name, "role": role}))),
            )
            .await?
        }
        AdminCommand::Token {
            command: TokenCmd::List,
        } => api.call(M::GET, "/admin/v1/tokens", None).await?,
        AdminCommand::Token {
            command: TokenCmd::Revoke { id },
        } => {
            api.call(M::DELETE, &format!("/admin/v1/tokens/{id}"), None)
                .await?
        }
        AdminCommand::Cluster {
            command: ClusterCmd::Status,
        } => api.call(M::GET, "/admin/v1/cluster", None).await?,
        AdminCommand::Cluster {
            command: ClusterCmd::Drain { id },
        } => {
            api.call(M::POST, &format!("/admin/v1/cluster/{id}/drain"), None)
                .await?
        }
        AdminCommand::Cluster {
            command: ClusterCmd::Remove { id },
        } => {
            api.call(M::DELETE, &format!("/admin/v1/cluster/{id}"), None)
                .await?
        }
        AdminCommand::RotateKey => api.call(M::POST, "/admin/v1/rotate-key", None).await?,
        AdminCommand::Verify => api.call(M::POST, "/admin/v1/verify", None).await?,
        AdminCommand::Quarantine { hold } => {
            let hold_s = hold
                .as_deref()
                .map(|h| {
                    crate::config::parse_duration(h)
                        .map(|d| d.as_secs_f64())
                        .ok_or_else(|| anyhow::anyhow!("--hold {h}: not a duration (e.g. 90s, 2m)"))
                })
                .transpose()?;
            api.call(
                M::POST,
                "/admin/v1/quarantine",
                Some(Body::Json(json!({ "hold_s": hold_s }))),
            )
            .await?
        }
        AdminCommand::Status => api.call(M::GET, "/admin/v1/status", None).await?,
        AdminCommand::Backup {
            command: BackupCmd::Create { output },
        } => {
            let (name, bytes) = api.download("/admin/v1/backups").await?;
            let path = output.clone().unwrap_or_else(|| {
                PathBuf::from(
                    name.unwrap_or_else(|| crate::backup::files::file_name(chrono::Utc::now())),
                )
            });
            crate::backup::files::write_atomic(&path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            json!({"file": path.display().to_string(), "bytes": bytes.len()})
        }
        AdminCommand::Backup {
            command: BackupCmd::List,
        } => api.call(M::GET, "/admin/v1/backups", None).await?,
        AdminCommand::Usage {
            command:
                UsageCmd::Report {
                    from,
                    to,
                    by,
                    format,
                },
        } => {
            let format: crate::domain::usage::UsageFormat =
                format.parse().map_err(anyhow::Error::msg)?;
            let mut url = reqwest::Url::parse("http://x/admin/v1/usage/report")?;
            url.query_pairs_mut()
                .append_pair("from", from)
                .append_pair("to", to)
                .append_pair("by", by)
                .append_pair("format", "json");
            let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
            let v = api.call(M::GET, &path, None).await?;
            if !args.json {
                let lines: Vec<crate::domain::usage::UsageLine> =
                    serde_json::from_value(v["lines"].clone())
                        .context("the server's usage report is not of the expected form")?;
                print!("{}", crate::domain::usage::render(&lines, by, format));
                return Ok(std::process::ExitCode::SUCCESS);
            }
            v
        }
    };
    let problem = matches!(args.command, AdminCommand::Verify)
        && v["refused"].as_object().is_some_and(|r| !r.is_empty());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_human(&args.command, &v);
    }
    if problem {
        eprintln!("floatlm: the integrity check refuses some features (see above): re-apply their license files to repair the seat rows");
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

mod print;
use print::print_human;
