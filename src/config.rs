//! One validated [`Config`] from, in rising strength: an INI file,
//! `FLOATLM_*` environment variables, command-line flags.
//!
//! Every value remembers where it came from, so a bad one fails start-up with
//! a message naming the key, its source and what is allowed. Secrets may be
//! given as `*_file` paths (handy for container secrets) and never print.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

use crate::crypto::keyring::{parse_key_list, MasterKey};
use crate::crypto::Secret;
use crate::domain::license::VendorKey;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the built-in default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

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

/// Every key: (INI section, key). Env is FLOATLM_<KEY>, flag is --<key with ->.
pub const KEYS: &[(&str, &str)] = &[
    ("server", "listen"),
    ("server", "admin_listen"),
    ("server", "public_address"),
    ("server", "instance_id"),
    ("server", "data_dir"),
    ("server", "drain_delay"),
    ("server", "max_body_bytes"),
    ("database", "database_url"),
    ("database", "database_url_file"),
    ("database", "max_connections"),
    ("security", "master_key"),
    ("security", "master_key_file"),
    ("security", "vendor_keys"),
    ("security", "admin_token"),
    ("security", "admin_token_file"),
    ("server", "cluster_heartbeat"),
    ("server", "max_sessions"),
    ("server", "session_idle"),
    ("server", "ticket_lifetime"),
    ("server", "ticket_rotation"),
    ("server", "trusted_proxies"),
    ("auth", "auth_script"),
    ("auth", "auth_timeout"),
    ("auth", "auth_max_concurrent"),
    ("leases", "lease_ttl"),
    ("leases", "lease_hold"),
    ("leases", "integrity_interval"),
    ("logging", "log_format"),
    ("logging", "log_level"),
];

pub fn env_name(key: &str) -> String {
    format!("FLOATLM_{}", key.to_ascii_uppercase())
}

pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
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
    /// None: generate or load DATA_DIR/master.key (SQLite only).
    pub master_keys: Option<Vec<MasterKey>>,
    pub vendor_keys: Vec<VendorKey>,
    pub admin_token: Option<Secret>,
    pub lease_ttl: Duration,
    /// How long the database keeps a seat after its last recorded renewal
    /// (at least `lease_ttl`). A heartbeat is answered without a database
    /// write while more than `lease_ttl` of it remains.
    pub lease_hold: Duration,
    pub integrity_interval: Duration,
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
    /// The operator's auth script, run on every login.
    pub auth_script: Option<PathBuf>,
    pub auth_timeout: Duration,
    pub auth_max_concurrent: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where every effective value came from, for `config check`.
    pub sources: BTreeMap<&'static str, Source>,
}

/// Raw layered values before validation.
#[derive(Debug, Default, Clone)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Layers {
    fn set(&mut self, key: &'static str, value: String, source: Source) {
        self.values.insert(key, (value, source));
    }

    /// Reads the INI file at `path`.
    pub fn file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(path.to_path_buf(), e.to_string()))?;
        let ini = ini::Ini::load_from_str(&text)
            .map_err(|e| ConfigError::File(path.to_path_buf(), e.to_string()))?;
        for (section, props) in ini.iter() {
            let section = section.unwrap_or("");
            for (k, v) in props.iter() {
                let key = KEYS
                    .iter()
                    .find(|(s, name)| *name == k && (section.is_empty() || *s == section))
                    .map(|(_, name)| *name)
                    .ok_or_else(|| ConfigError::UnknownKey {
                        path: path.to_path_buf(),
                        section: section.to_string(),
                        key: k.to_string(),
                    })?;
                self.set(key, v.to_string(), Source::File(path.to_path_buf()));
            }
        }
        Ok(())
    }

    /// Reads FLOATLM_* variables from `env`.
    pub fn env<'a>(&mut self, env: impl Fn(&str) -> Option<String> + 'a) {
        for (_, key) in KEYS {
            let name = env_name(key);
            if let Some(v) = env(&name) {
                self.set(key, v, Source::Env(name));
            }
        }
    }

    /// Applies one command-line flag value.
    pub fn flag(&mut self, key: &'static str, value: Option<impl ToString>) {
        self.flag_named(key, &flag_name(key), value);
    }

    /// Applies a flag whose name is not `--<key>` (for example `--auth`).
    pub fn flag_named(&mut self, key: &'static str, flag: &str, value: Option<impl ToString>) {
        if let Some(v) = value {
            self.set(key, v.to_string(), Source::Flag(flag.to_string()));
        }
    }

    fn get(&self, key: &'static str) -> Option<&(String, Source)> {
        self.values.get(key).filter(|(v, _)| !v.trim().is_empty())
    }

    /// Validates everything into a [`Config`].
    pub fn build(&self) -> Result<Config, ConfigError> {
        let sources = std::cell::RefCell::new(BTreeMap::new());
        let take = |key: &'static str, default: Option<&str>| -> Option<(String, Source)> {
            let v = match self.get(key) {
                Some((v, s)) => Some((v.trim().to_string(), s.clone())),
                None => default.map(|d| (d.to_string(), Source::Default)),
            };
            if let Some((_, s)) = &v {
                sources.borrow_mut().insert(key, s.clone());
            }
            v
        };
        fn invalid(key: &'static str, source: &Source, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                from: source.clone(),
                reason: reason.into(),
            }
        }
        fn addr(key: &'static str, v: &(String, Source)) -> Result<SocketAddr, ConfigError> {
            v.0.parse().map_err(|_| {
                invalid(
                    key,
                    &v.1,
                    format!(
                        "'{}' is not IP:PORT (for example 127.0.0.1:8990 or 0.0.0.0:8990)",
                        v.0
                    ),
                )
            })
        }
        fn secs(
            key: &'static str,
            v: &(String, Source),
            min: f64,
            max: f64,
        ) -> Result<Duration, ConfigError> {
            let d = parse_duration(&v.0).ok_or_else(|| {
                invalid(
                    key,
                    &v.1,
                    format!(
                        "'{}' is not a duration in the allowed range {min}s..={max}s (examples: 30s, 2m, 1h, 7d, 500ms)",
                        v.0.chars().take(40).collect::<String>()
                    ),
                )
            })?;
            let s = d.as_secs_f64();
            if s < min || s > max {
                return Err(invalid(
                    key,
                    &v.1,
                    format!("{s}s is outside the allowed range {min}s..={max}s"),
                ));
            }
            Ok(d)
        }
        /// The value of `key`, or the contents of the file named by `key_file`.
        fn secret_or_file(
            direct: Option<(String, Source)>,
            file: Option<(String, Source)>,
            key: &'static str,
            key_file: &'static str,
        ) -> Result<Option<(Secret, Source)>, ConfigError> {
            match (direct, file) {
                (Some(_), Some((_, s))) => Err(invalid(
                    key_file,
                    &s,
                    format!("set either {key} or {key_file}, not both"),
                )),
                (Some((v, s)), None) => Ok(Some((Secret::new(v), s))),
                (None, Some((p, s))) => {
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| invalid(key_file, &s, format!("cannot read {p}: {e}")))?;
                    Ok(Some((Secret::new(text.trim().to_string()), s)))
                }
                (None, None) => Ok(None),
            }
        }

        let listen_v = take("listen", Some("127.0.0.1:8990")).unwrap();
        let listen = addr("listen", &listen_v)?;
        let admin_listen = addr(
            "admin_listen",
            &take("admin_listen", Some("127.0.0.1:8991")).unwrap(),
        )?;
        let public_address = match take("public_address", None) {
            Some((v, s)) => {
                let ok = v.rsplit_once(':').is_some_and(|(h, p)| {
                    !h.is_empty() && p.parse::<u16>().is_ok() && !v.contains(['@', ' ', '/'])
                });
                if !ok {
                    return Err(invalid(
                        "public_address",
                        &s,
                        format!("'{v}' is not HOST:PORT"),
                    ));
                }
                v
            }
            None => listen.to_string(),
        };
        let instance_id = match take("instance_id", None) {
            Some((v, s)) => {
                if !crate::domain::valid_name(&v) {
                    return Err(invalid(
                        "instance_id",
                        &s,
                        "use 1-64 characters of A-Z a-z 0-9 _ . -",
                    ));
                }
                v
            }
            None => format!("i-{}", crate::crypto::random_hex(4)),
        };
        let data_dir = PathBuf::from(take("data_dir", Some("./floatlm-data")).unwrap().0);
        let drain_delay = secs(
            "drain_delay",
            &take("drain_delay", Some("5s")).unwrap(),
            0.0,
            600.0,
        )?;
        let body_v = take("max_body_bytes", Some("1048576")).unwrap();
        let max_body_bytes: usize = body_v
            .0
            .parse()
            .ok()
            .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
            .ok_or_else(|| {
                invalid(
                    "max_body_bytes",
                    &body_v.1,
                    "a whole number of bytes between 1024 and 67108864",
                )
            })?;

        let db = secret_or_file(
            take("database_url", None),
            take("database_url_file", None),
            "database_url",
            "database_url_file",
        )?;
        let database = match db {
            None => {
                sources.borrow_mut().insert("database_url", Source::Default);
                DatabaseConfig::Sqlite(data_dir.join("floatlm.db"))
            }
            Some((url, s)) => {
                let u = url.expose();
                if let Some(rest) = u
                    .strip_prefix("sqlite://")
                    .or_else(|| u.strip_prefix("sqlite:"))
                {
                    let path = rest.split('?').next().unwrap_or("");
                    if path.is_empty() {
                        return Err(invalid("database_url", &s, "sqlite: URL names no file (example: sqlite:///var/lib/floatlm/floatlm.db)"));
                    }
                    DatabaseConfig::Sqlite(PathBuf::from(path))
                } else if u.starts_with("mysql://") || u.starts_with("mariadb://") {
                    let u = u.replacen("mariadb://", "mysql://", 1);
                    let after = u.trim_start_matches("mysql://");
                    let db = after
                        .rsplit_once('/')
                        .map(|(_, d)| d.split('?').next().unwrap_or(""));
                    if db.is_none_or(|d| d.is_empty()) {
                        return Err(invalid("database_url", &s, "a MySQL URL must name the database: mysql://USER:PASS@HOST:3306/DATABASE"));
                    }
                    DatabaseConfig::Mysql(Secret::new(u))
                } else {
                    return Err(invalid(
                        "database_url",
                        &s,
                        "use sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DATABASE",
                    ));
                }
            }
        };
        let mc_v = take("max_connections", Some("16")).unwrap();
        let max_connections: u32 = mc_v
            .0
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "max_connections",
                    &mc_v.1,
                    "a whole number between 1 and 1000",
                )
            })?;

        let mk = secret_or_file(
            take("master_key", None),
            take("master_key_file", None),
            "master_key",
            "master_key_file",
        )?;
        let master_keys = match mk {
            None => {
                if matches!(database, DatabaseConfig::Mysql(_)) {
                    return Err(ConfigError::Missing(
                        "a MySQL/MariaDB database needs master_key or master_key_file (every instance must hold the same keys); \
                         generate one with: echo \"k1:$(head -c 32 /dev/urandom | base64)\""
                            .into(),
                    ));
                }
                None
            }
            Some((spec, s)) => {
                let key = if s == Source::Default {
                    "master_key"
                } else {
                    key_of(&s, "master_key", "master_key_file")
                };
                Some(parse_key_list(spec.expose()).map_err(|e| invalid(key, &s, e.to_string()))?)
            }
        };

        let mut vendor_keys = Vec::new();
        if let Some((v, s)) = take("vendor_keys", None) {
            for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let text = if Path::new(item).exists() || item.ends_with(".pub") {
                    std::fs::read_to_string(item).map_err(|e| {
                        invalid(
                            "vendor_keys",
                            &s,
                            format!("cannot read vendor key file {item}: {e}"),
                        )
                    })?
                } else {
                    item.to_string()
                };
                let key = VendorKey::parse(&text)
                    .map_err(|e| invalid("vendor_keys", &s, format!("{item}: {e}")))?;
                if !vendor_keys.contains(&key) {
                    vendor_keys.push(key);
                }
            }
        }

        let admin_token = secret_or_file(
            take("admin_token", None),
            take("admin_token_file", None),
            "admin_token",
            "admin_token_file",
        )?
        .map(|(t, s)| {
            if t.expose().len() < 16 {
                Err(invalid(
                    "admin_token",
                    &s,
                    "an admin token must be at least 16 characters",
                ))
            } else {
                Ok(t)
            }
        })
        .transpose()?;

        let lease_ttl = secs(
            "lease_ttl",
            &take("lease_ttl", Some("60s")).unwrap(),
            5.0,
            86400.0,
        )?;
        let lease_hold = match take("lease_hold", None) {
            None => lease_ttl * 2,
            Some(v) => {
                let d = secs("lease_hold", &v, 5.0, 10.0 * 86400.0)?;
                if d < lease_ttl || d > lease_ttl * 10 {
                    return Err(invalid(
                        "lease_hold",
                        &v.1,
                        format!(
                            "{}s must be between lease_ttl ({}s) and 10 × lease_ttl",
                            d.as_secs_f64(),
                            lease_ttl.as_secs_f64()
                        ),
                    ));
                }
                d
            }
        };
        let integrity_interval = secs(
            "integrity_interval",
            &take("integrity_interval", Some("30s")).unwrap(),
            1.0,
            3600.0,
        )?;
        let cluster_heartbeat = secs(
            "cluster_heartbeat",
            &take("cluster_heartbeat", Some("5s")).unwrap(),
            0.2,
            300.0,
        )?;
        let ms_v = take("max_sessions", Some("100000")).unwrap();
        let max_sessions: usize = ms_v
            .0
            .parse()
            .ok()
            .filter(|n| (1..=10_000_000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "max_sessions",
                    &ms_v.1,
                    "a whole number between 1 and 10000000",
                )
            })?;
        let session_idle = secs(
            "session_idle",
            &take("session_idle", Some("10m")).unwrap(),
            1.0,
            86400.0,
        )?;
        let ticket_lifetime = secs(
            "ticket_lifetime",
            &take("ticket_lifetime", Some("24h")).unwrap(),
            1.0,
            7.0 * 86400.0,
        )?;
        let ticket_rotation = secs(
            "ticket_rotation",
            &take("ticket_rotation", Some("6h")).unwrap(),
            1.0,
            7.0 * 86400.0,
        )?;
        let mut trusted_proxies = Vec::new();
        if let Some((v, s)) = take("trusted_proxies", None) {
            for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                trusted_proxies.push(item.parse().map_err(|_| {
                    invalid(
                        "trusted_proxies",
                        &s,
                        format!("'{item}' is not an IP address"),
                    )
                })?);
            }
        }
        let auth_script = match take("auth_script", None) {
            Some((v, s)) => {
                let p = PathBuf::from(&v);
                let meta = std::fs::metadata(&p)
                    .map_err(|e| invalid("auth_script", &s, format!("{v}: {e}")))?;
                use std::os::unix::fs::PermissionsExt;
                if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                    return Err(invalid(
                        "auth_script",
                        &s,
                        format!("{v} is not an executable file (chmod +x it)"),
                    ));
                }
                Some(p)
            }
            None => None,
        };
        let auth_timeout = secs(
            "auth_timeout",
            &take("auth_timeout", Some("5s")).unwrap(),
            0.05,
            300.0,
        )?;
        let amc_v = take("auth_max_concurrent", Some("8")).unwrap();
        let auth_max_concurrent: usize = amc_v
            .0
            .parse()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                invalid(
                    "auth_max_concurrent",
                    &amc_v.1,
                    "a whole number between 1 and 1024",
                )
            })?;
        let lf = take("log_format", Some("text")).unwrap();
        let log_format = match lf.0.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    &lf.1,
                    format!("'{other}' is not text or json"),
                ))
            }
        };
        let ll = take("log_level", Some("info")).unwrap();
        if !valid_log_filter(&ll.0) {
            return Err(invalid(
                "log_level",
                &ll.1,
                format!(
                    "'{}' is not a log level: use off, error, warn, info, debug or trace, or TARGET=LEVEL directives (floatlm=debug,sqlx=warn)",
                    ll.0.chars().take(40).collect::<String>()
                ),
            ));
        }
        Ok(Config {
            listen,
            admin_listen,
            public_address,
            instance_id,
            data_dir,
            drain_delay,
            max_body_bytes,
            database,
            max_connections,
            master_keys,
            vendor_keys,
            admin_token,
            lease_ttl,
            lease_hold,
            integrity_interval,
            cluster_heartbeat,
            max_sessions,
            session_idle,
            ticket_lifetime,
            ticket_rotation,
            trusted_proxies,
            auth_script,
            auth_timeout,
            auth_max_concurrent,
            log_format,
            log_level: ll.0,
            sources: sources.into_inner(),
        })
    }
}

fn key_of(s: &Source, direct: &'static str, file: &'static str) -> &'static str {
    let is_file = match s {
        Source::Env(n) => n.ends_with("_FILE"),
        Source::Flag(n) => n.ends_with("-file"),
        _ => false,
    };
    if is_file {
        file
    } else {
        direct
    }
}

/// Parses `30s`, `2m`, `1h`, `500ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86400.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    // Too large for a Duration (1e20 s) is not a duration either.
    Duration::try_from_secs_f64(v * mult).ok()
}

/// Whether `s` is a log filter a person meant: levels (`info`), or
/// `target=level` directives, comma separated. A bare word that is no level
/// (`verbose`) would silently select a target of that name, i.e. log nothing.
fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    !s.trim().is_empty()
        && s.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => !target.trim().is_empty() && level(l),
            None => level(d),
        })
        && tracing_subscriber::EnvFilter::try_new(s).is_ok()
}

impl Config {
    /// The effective configuration as INI-like lines, secrets redacted.
    pub fn describe(&self) -> String {
        let src = |k: &str| {
            self.sources
                .get(k)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "the built-in default".into())
        };
        let db = match &self.database {
            DatabaseConfig::Sqlite(p) => format!("sqlite://{}", p.display()),
            DatabaseConfig::Mysql(u) => redact_url(u.expose()),
        };
        let keys = match &self.master_keys {
            Some(k) => format!(
                "{} (key ids: {}; the last seals)",
                "[redacted]",
                k.iter().map(|k| k.id()).collect::<Vec<_>>().join(", ")
            ),
            None => format!(
                "(not set: generated/loaded {})",
                self.data_dir.join("master.key").display()
            ),
        };
        let vk: Vec<String> = self.vendor_keys.iter().map(|k| k.id()).collect();
        let lines = [
            ("listen", self.listen.to_string()),
            ("admin_listen", self.admin_listen.to_string()),
            ("public_address", self.public_address.clone()),
            ("instance_id", self.instance_id.clone()),
            ("data_dir", self.data_dir.display().to_string()),
            (
                "drain_delay",
                format!("{}s", self.drain_delay.as_secs_f64()),
            ),
            ("max_body_bytes", self.max_body_bytes.to_string()),
            ("database_url", db),
            ("max_connections", self.max_connections.to_string()),
            ("master_key", keys),
            (
                "vendor_keys",
                if vk.is_empty() {
                    "(none: no license can be applied)".into()
                } else {
                    vk.join(", ")
                },
            ),
            (
                "admin_token",
                if self.admin_token.is_some() {
                    "[redacted]".into()
                } else {
                    "(not set)".into()
                },
            ),
            ("lease_ttl", format!("{}s", self.lease_ttl.as_secs_f64())),
            ("lease_hold", format!("{}s", self.lease_hold.as_secs_f64())),
            (
                "integrity_interval",
                format!("{}s", self.integrity_interval.as_secs_f64()),
            ),
            (
                "log_format",
                format!("{:?}", self.log_format).to_lowercase(),
            ),
            ("log_level", self.log_level.clone()),
        ];
        let mut out = String::new();
        for (k, v) in lines {
            out.push_str(&format!("{k} = {v}    ; from {}\n", src(k)));
        }
        out
    }
}

/// A database URL with any password replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:[redacted]{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn defaults_are_sane() {
        let c = Layers::default().build().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8990");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8991");
        assert!(matches!(c.database, DatabaseConfig::Sqlite(_)));
        assert_eq!(c.lease_ttl, Duration::from_secs(60));
        assert_eq!(c.lease_hold, Duration::from_secs(120));
    }

    #[test]
    fn lease_hold_follows_and_bounds_lease_ttl() {
        let mut l = Layers::default();
        l.env(env_of(&[("FLOATLM_LEASE_TTL", "30s")]));
        assert_eq!(l.build().unwrap().lease_hold, Duration::from_secs(60));
        l.env(env_of(&[("FLOATLM_LEASE_HOLD", "30s")]));
        assert_eq!(l.build().unwrap().lease_hold, Duration::from_secs(30));
        for bad in ["29s", "301s"] {
            l.env(env_of(&[("FLOATLM_LEASE_HOLD", bad)]));
            let e = l.build().unwrap_err().to_string();
            assert!(e.contains("lease_hold") && e.contains("lease_ttl"), "{e}");
        }
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.ini");
        std::fs::write(&p, "[server]\nlisten = 127.0.0.1:1\nadmin_listen = 127.0.0.1:2\n[leases]\nlease_ttl = 10s\n").unwrap();
        let mut l = Layers::default();
        l.file(&p).unwrap();
        l.env(env_of(&[
            ("FLOATLM_LISTEN", "127.0.0.1:3"),
            ("FLOATLM_LEASE_TTL", "20s"),
        ]));
        l.flag("listen", Some("127.0.0.1:4"));
        let c = l.build().unwrap();
        assert_eq!(c.listen.port(), 4);
        assert_eq!(c.admin_listen.port(), 2);
        assert_eq!(c.lease_ttl, Duration::from_secs(20));
        assert_eq!(
            c.sources["lease_ttl"],
            Source::Env("FLOATLM_LEASE_TTL".into())
        );
    }

    #[test]
    fn errors_name_key_source_and_rule() {
        let mut l = Layers::default();
        l.env(env_of(&[("FLOATLM_LEASE_TTL", "forever")]));
        let e = l.build().unwrap_err().to_string();
        assert!(
            e.contains("lease_ttl") && e.contains("FLOATLM_LEASE_TTL") && e.contains("duration"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.ini");
        std::fs::write(&p, "[server]\nlistne = 1\n").unwrap();
        let e = Layers::default().file(&p).unwrap_err().to_string();
        assert!(e.contains("listne"), "{e}");
    }

    #[test]
    fn mysql_needs_a_master_key_and_secrets_do_not_print() {
        let mut l = Layers::default();
        l.flag(
            "database_url",
            Some("mysql://root:hunter2@127.0.0.1:3306/floatlm"),
        );
        let e = l.build().unwrap_err().to_string();
        assert!(e.contains("master_key"), "{e}");
        assert!(!e.contains("hunter2"));
        l.flag("master_key", Some(format!("k1:{}", "A".repeat(43) + "=")));
        let c = l.build().unwrap();
        let shown = format!("{c:?}{}", c.describe());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(&"A".repeat(43)), "{shown}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
        assert_eq!(parse_duration("1e20"), None);
        assert_eq!(parse_duration("inf"), None);
    }

    #[test]
    fn log_levels_are_levels() {
        for ok in [
            "info",
            "DEBUG",
            "floatlm=debug,sqlx=warn",
            "warn,floatlm=trace",
            "off",
        ] {
            assert!(valid_log_filter(ok), "{ok}");
        }
        for bad in [
            "verbose",
            "",
            "floatlm=loud",
            "=info",
            "info,,",
            "loud,info",
        ] {
            assert!(!valid_log_filter(bad), "{bad}");
        }
        assert_eq!(
            redact_url("mysql://u:p@h:1/d"),
            "mysql://u:[redacted]@h:1/d"
        );
    }
}
