//! `floatlm backup verify FILE` and `floatlm restore FILE`: backup files
//! opened with the master keys of the configuration, without a running
//! instance. (Backups are made through a running instance: `floatlm admin
//! backup create`.)

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ServerFlags;
use crate::backup::{check_sealed, configured_keyring, open, Opened};
use crate::config::{Config, DatabaseConfig, Source};
use crate::domain::seats::CLOCK_MARGIN;
use crate::storage::backup::known_schema;

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Open and check a backup file with the configured master key(s):
    /// authentication, manifest, digest, every sealed row. Changes nothing.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The backup file.
    pub file: PathBuf,
    #[command(flatten)]
    pub flags: ServerFlags,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    #[command(flatten)]
    pub flags: ServerFlags,
    /// Restore into a database that already holds licensing state,
    /// replacing all of it (every instance on it must be stopped).
    #[arg(long)]
    pub replace: bool,
    /// Confirms --replace without asking for the database name.
    #[arg(long, requires = "replace")]
    pub yes_replace_everything: bool,
    /// How long every seat stays held by nobody after the restore, so that
    /// the promises given before it run out first [default: the longest
    /// lease_ttl recorded, plus 2 s].
    #[arg(long, value_name = "DURATION")]
    pub hold: Option<String>,
}

/// Loads the configuration, the keys and the file, and opens and checks it.
fn load(flags: &ServerFlags, file: &Path) -> anyhow::Result<(Config, Opened)> {
    let cfg = flags
        .load()
        .map_err(|e| anyhow::anyhow!("configuration error: {e}"))?;
    let ring = configured_keyring(&cfg).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let refused = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "backup {} refused: {e}; nothing was changed",
            file.display()
        )
    };
    let opened = open(&bytes, &ring, known_schema()).map_err(|e| refused(&e))?;
    check_sealed(&opened, &ring).map_err(|e| refused(&e))?;
    Ok((cfg, opened))
}

fn counts(opened: &Opened) -> String {
    opened
        .manifest
        .counts
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let (_, opened) = load(&args.flags, &args.file)?;
    let m = &opened.manifest;
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    println!(
        "backup {} is good: made {} by instance {} (floatlm {}, {}, schema {}), \
         encrypted under master key '{}', digest {}",
        args.file.display(),
        m.created_at,
        m.instance,
        m.floatlm_version,
        m.backend,
        m.schema_version,
        m.key_id,
        m.digest
    );
    println!("rows: {}", counts(&opened));
    Ok(())
}

/// The database a configuration names, for messages (no password).
fn describe(cfg: &Config) -> String {
    match &cfg.database {
        DatabaseConfig::Sqlite(p) => format!("sqlite://{}", p.display()),
        DatabaseConfig::Mysql(u) => crate::config::redact_url(u.expose()),
    }
}

/// The database's name as an operator types it to confirm a replace.
fn database_name(cfg: &Config) -> String {
    match &cfg.database {
        DatabaseConfig::Sqlite(p) => p.display().to_string(),
        DatabaseConfig::Mysql(u) => u
            .expose()
            .rsplit_once('/')
            .map(|(_, d)| d.split('?').next().unwrap_or(d).to_string())
            .unwrap_or_default(),
    }
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let (cfg, opened) = load(&args.flags, &args.file)?;
    if matches!(
        cfg.sources.get("database_url"),
        None | Some(Source::Default)
    ) {
        bail!("name the database to restore into: --database-url sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DATABASE");
    }
    let hold = args
        .hold
        .as_deref()
        .map(|h| {
            crate::config::parse_duration(h)
                .filter(|d| d.as_secs() <= 86_400)
                .ok_or_else(|| {
                    anyhow::anyhow!("--hold {h}: not a duration up to 24h (e.g. 90s, 2m)")
                })
        })
        .transpose()?;
    let target = describe(&cfg);
    let storage = crate::app::open_storage(&cfg)
        .await
        .with_context(|| format!("cannot open {target}"))?;
    let present: Vec<String> = storage
        .restorable_rows()
        .await?
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    let mut longest_ttl = Duration::from_millis(opened.manifest.longest_lease_ttl_ms.max(0) as u64);
    if !present.is_empty() {
        if !args.replace {
            bail!(
                "{target} is not empty ({}): restore into an empty database, or replace its whole licensing \
                 state with --replace (every instance on it stopped); nothing was changed",
                present.join(", ")
            );
        }
        if !args.yes_replace_everything {
            let name = database_name(&cfg);
            if !std::io::stdin().is_terminal() {
                bail!("--replace replaces the whole licensing state of {target}: add --yes-replace-everything to confirm; nothing was changed");
            }
            eprint!("This replaces every license, identity, token and seat of {target}. Type the database name ({name}) to confirm: ");
            let mut typed = String::new();
            std::io::stdin().read_line(&mut typed)?;
            if typed.trim() != name {
                bail!("not confirmed; nothing was changed");
            }
        }
        // Read with the columns every schema has (not migrated yet).
        let live_within = cfg.cluster_heartbeat * 3;
        let live: Vec<String> = storage
            .live_versions(live_within)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if !live.is_empty() {
            bail!(
                "instance(s) {} still serve {target}: stop every instance before a restore --replace \
                 (an instance counts as live for {:.0} s after its last heartbeat); nothing was changed",
                live.join(", "),
                live_within.as_secs_f64()
            );
        }
    }
    storage.migrate().await?;
    if !present.is_empty() {
        // Instances that served the replaced state gave promises this long.
        for i in storage.instances().await? {
            longest_ttl = longest_ttl.max(Duration::from_millis(i.lease_ttl_ms.max(0) as u64));
        }
    }
    let hold = hold
        .unwrap_or_else(|| longest_ttl.max(cfg.lease_ttl) + CLOCK_MARGIN + Duration::from_secs(1));
    let until = storage.restore(&opened.tables, hold).await?;
    let m = &opened.manifest;
    println!(
        "restored backup {} (made {} by instance {}, digest {}) into {target}",
        args.file.display(),
        m.created_at,
        m.instance,
        m.digest
    );
    println!("rows: {}", counts(&opened));
    println!(
        "no lease was restored: every seat is held by nobody until {until} (the promises given before the \
         restore run out first); clients that held a seat are told they lost it at their next heartbeat \
         and check out again. Start the instances now."
    );
    Ok(())
}
