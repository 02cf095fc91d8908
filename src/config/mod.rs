//! One validated [`Config`] from, in rising strength: an INI file,
//! `FLOATLM_*` environment variables, command-line flags.
//!
//! Every value remembers where it came from, so a bad one fails start-up with
//! a message naming the key, its source and what is allowed. Secrets may be
//! given as `*_file` paths (handy for container secrets) and never print.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the validated [`Config`], its value types and [`ConfigError`] |
//! | `keys.rs` | [`KEYS`]: every setting declared once (section, default, rule, secret) |
//! | `sources.rs` | [`Layers`]: file < environment < flags, each value with its [`Source`] |
//! | `reader.rs` | reading one key by its declaration (typed, range-checked, source recorded) |
//! | `build.rs` | [`Layers::build`]: every key into a [`Config`], with the rules between keys |
//! | `values.rs` | value syntax shared with the CLI: durations, log filters, URL redaction |
//! | `check.rs` | [`Config::describe`], the output of `floatlm config check` |

mod build;
mod check;
mod keys;
mod reader;
mod sources;
mod values;

pub use keys::{env_name, flag_name, Key, Rule, KEYS};
pub use sources::{Layers, Source};
pub use values::{parse_duration, redact_url};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

use crate::crypto::keyring::{load_master_keys, KeyLoadError, KeySource, MasterKey};
use crate::crypto::Secret;
use crate::domain::license::VendorKey;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config key '{key}' (from {from}) is invalid: {reason}")]
    Invalid {
        key: &'static str,
        from: Source,
        reason: String,
    },
    #[error("cannot read config file {0}: {1}")]
    File(PathBuf, String),
    #[error("config file {path}: unknown key '{key}' in section [{section}]; known keys are listed in config/floatlm.ini")]
    UnknownKey {
        path: PathBuf,
        section: String,
        key: String,
    },
    #[error("{0}")]
    Missing(String),
}

/// `assignment`: which features an identity may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Assignment {
    /// Every identity may use every feature.
    Auto,
    /// Only the features assigned to it (`admin identity assign`).
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Which database, with any password kept secret.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    Sqlite(PathBuf),
    Mysql(Secret),
}

/// The validated configuration. `Debug` never shows secrets.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// HOST:PORT written into identity strings.
    pub public_address: String,
    pub instance_id: String,
    pub data_dir: PathBuf,
    pub drain_delay: Duration,
    pub max_body_bytes: usize,
    pub database: DatabaseConfig,
    pub max_connections: u32,
    /// Given by `master_key` or `master_key_file`; None: DATA_DIR/master.key
    /// (SQLite only), read by [`Config::load_master_keys`].
    pub master_keys: Option<Vec<MasterKey>>,
    pub vendor_keys: Vec<VendorKey>,
    pub admin_token: Option<Secret>,
    pub lease_ttl: Duration,
    /// How long the database keeps a seat after its last recorded renewal
    /// (at least `lease_ttl`). A heartbeat is answered without a database
    /// write while more than `lease_ttl` of it remains.
    pub lease_hold: Duration,
    pub integrity_interval: Duration,
    /// How long usage records are kept (purged by the maintenance loop).
    pub usage_retention: Duration,
    /// Which features an identity may see and check out.
    pub assignment: Assignment,
    /// How often this instance refreshes its row in the cluster view; it
    /// counts as down after three missed refreshes.
    pub cluster_heartbeat: Duration,
    /// Protocol sessions kept in memory per instance; past it, 503.
    pub max_sessions: usize,
    /// A session unused this long is forgotten (the client handshakes again).
    pub session_idle: Duration,
    /// How long a resumption ticket lets a client continue on any instance.
    pub ticket_lifetime: Duration,
    /// How often the cluster-wide ticket key changes.
    pub ticket_rotation: Duration,
    /// Peers whose X-Forwarded-For is believed (reverse proxies).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `GET /metrics` on the admin listener answers without a token.
    pub metrics_public: bool,
    /// The web console under `/ui/` on the admin listener: `ui = true`, or
    /// `auto` (the default) while the admin listener is on loopback.
    pub ui: bool,
    /// The operator's auth script, run on every login.
    pub auth_script: Option<PathBuf>,
    pub auth_timeout: Duration,
    pub auth_max_concurrent: usize,
    /// How often one instance of the cluster takes a scheduled backup; None:
    /// never (the default).
    pub backup_interval: Option<Duration>,
    /// Where this instance writes the scheduled backups it takes.
    pub backup_dir: PathBuf,
    /// Scheduled backups kept in `backup_dir`; older ones are deleted.
    pub backup_keep: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where every effective value came from, for `config check`.
    pub sources: BTreeMap<&'static str, Source>,
    /// How `config check` shows each key's effective value (secrets
    /// redacted).
    shown: BTreeMap<&'static str, String>,
}

/// The master key file in `data_dir` of an instance given no `master_key`
/// or `master_key_file` (SQLite only: the first start writes it).
pub const MASTER_KEY_FILE: &str = "master.key";

impl Config {
    /// DATA_DIR/master.key ([`MASTER_KEY_FILE`]).
    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join(MASTER_KEY_FILE)
    }

    /// This instance's master keys: the configured ones, else those of
    /// DATA_DIR/master.key as it is now ([`KeyLoadError::NoFile`] until a
    /// first start has written it). Start-up and the backup commands read
    /// them here, through the one loader.
    pub fn load_master_keys(&self) -> Result<Vec<MasterKey>, KeyLoadError> {
        match &self.master_keys {
            Some(keys) => Ok(keys.clone()),
            None => load_master_keys(KeySource::File(&self.master_key_path())),
        }
    }
}

fn invalid(key: &'static str, source: &Source, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        from: source.clone(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
