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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
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

/// How a key's text is checked and turned into a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `IP:PORT`.
    Addr,
    /// A duration (`30s`, `2m`, `500ms`) within an inclusive range of seconds.
    Seconds(f64, f64),
    /// A whole number within an inclusive range.
    Whole(u64, u64),
    /// Checked by its own code in [`Layers::build`] (text, paths, secrets,
    /// lists).
    Own,
}

/// One configuration key: where it lives in the INI file, its default and
/// its rule. Every key is declared here once; the environment variable
/// (`FLOATLM_<KEY>`), the flag (`--<key-with-dashes>`), validation and
/// `config check` all follow from this table.
#[derive(Debug)]
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub rule: Rule,
    /// For `*_file` keys: the key whose value the file holds.
    pub file_of: Option<&'static str>,
}

const fn key(
    section: &'static str,
    name: &'static str,
    default: Option<&'static str>,
    rule: Rule,
) -> Key {
    Key {
        section,
        name,
        default,
        rule,
        file_of: None,
    }
}

const fn file_key(section: &'static str, name: &'static str, of: &'static str) -> Key {
    Key {
        section,
        name,
        default: None,
        rule: Rule::Own,
        file_of: Some(of),
    }
}

/// Every key, in the order `config check` prints them.
pub const KEYS: &[Key] = &[
    key("server", "listen", Some("127.0.0.1:8990"), Rule::Addr),
    key("server", "admin_listen", Some("127.0.0.1:8991"), Rule::Addr),
    key("server", "public_address", None, Rule::Own),
    key("server", "instance_id", None, Rule::Own),
    key("server", "data_dir", Some("./floatlm-data"), Rule::Own),
    key(
        "server",
        "drain_delay",
        Some("5s"),
        Rule::Seconds(0.0, 600.0),
    ),
    key(
        "server",
        "max_body_bytes",
        Some("1048576"),
        Rule::Whole(1024, 64 * 1024 * 1024),
    ),
    key(
        "server",
        "cluster_heartbeat",
        Some("5s"),
        Rule::Seconds(0.2, 300.0),
    ),
    key(
        "server",
        "max_sessions",
        Some("100000"),
        Rule::Whole(1, 10_000_000),
    ),
    key(
        "server",
        "session_idle",
        Some("10m"),
        Rule::Seconds(1.0, 86400.0),
    ),
    key(
        "server",
        "ticket_lifetime",
        Some("24h"),
        Rule::Seconds(1.0, 7.0 * 86400.0),
    ),
    key(
        "server",
        "ticket_rotation",
        Some("6h"),
        Rule::Seconds(1.0, 7.0 * 86400.0),
    ),
    key("server", "trusted_proxies", None, Rule::Own),
    key("server", "metrics_public", Some("false"), Rule::Own),
    key("server", "ui", Some("auto"), Rule::Own),
    key("database", "database_url", None, Rule::Own),
    file_key("database", "database_url_file", "database_url"),
    key(
        "database",
        "max_connections",
        Some("16"),
        Rule::Whole(1, 1000),
    ),
    key("security", "master_key", None, Rule::Own),
    file_key("security", "master_key_file", "master_key"),
    key("security", "vendor_keys", None, Rule::Own),
    key("security", "admin_token", None, Rule::Own),
    file_key("security", "admin_token_file", "admin_token"),
    key("auth", "auth_script", None, Rule::Own),
    key(
        "auth",
        "auth_timeout",
        Some("5s"),
        Rule::Seconds(0.05, 300.0),
    ),
    key(
        "auth",
        "auth_max_concurrent",
        Some("8"),
        Rule::Whole(1, 1024),
    ),
    key(
        "leases",
        "lease_ttl",
        Some("60s"),
        Rule::Seconds(5.0, 86400.0),
    ),
    key(
        "leases",
        "lease_hold",
        None,
        Rule::Seconds(5.0, 10.0 * 86400.0),
    ),
    key(
        "leases",
        "integrity_interval",
        Some("30s"),
        Rule::Seconds(1.0, 3600.0),
    ),
    key("logging", "log_format", Some("text"), Rule::Own),
    key("logging", "log_level", Some("info"), Rule::Own),
];

/// The declaration of `name` (a key this file declares).
fn spec(name: &str) -> &'static Key {
    KEYS.iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("config key {name} is not declared in KEYS"))
}

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
    /// `GET /metrics` on the admin listener answers without a token.
    pub metrics_public: bool,
    /// The web console under `/ui/` on the admin listener: `ui = true`, or
    /// `auto` (the default) while the admin listener is on loopback.
    pub ui: bool,
    /// The operator's auth script, run on every login.
    pub auth_script: Option<PathBuf>,
    pub auth_timeout: Duration,
    pub auth_max_concurrent: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where every effective value came from, for `config check`.
    pub sources: BTreeMap<&'static str, Source>,
    /// How `config check` shows each key's effective value (secrets
    /// redacted).
    shown: BTreeMap<&'static str, String>,
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
                    .find(|key| key.name == k && (section.is_empty() || key.section == section))
                    .map(|key| key.name)
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
        for key in KEYS {
            let name = env_name(key.name);
            if let Some(v) = env(&name) {
                self.set(key.name, v, Source::Env(name));
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
        let mut r = Reader {
            layers: self,
            sources: BTreeMap::new(),
            shown: BTreeMap::new(),
        };
        let listen = r.addr("listen")?;
        let admin_listen = r.addr("admin_listen")?;
        let public_address = match r.take("public_address") {
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
        r.show("public_address", &public_address);
        let instance_id = match r.take("instance_id") {
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
        r.show("instance_id", &instance_id);
        let data_dir = PathBuf::from(r.take("data_dir").map(|v| v.0).unwrap_or_default());
        r.show("data_dir", data_dir.display());
        let drain_delay = r.seconds("drain_delay")?;
        let max_body_bytes = r.whole("max_body_bytes")?;

        let database = match r.secret_or_file("database_url")? {
            None => {
                r.sources.insert("database_url", Source::Default);
                DatabaseConfig::Sqlite(data_dir.join("floatlm.db"))
            }
            Some((url, s)) => database(&url, &s)?,
        };
        r.show(
            "database_url",
            match &database {
                DatabaseConfig::Sqlite(p) => format!("sqlite://{}", p.display()),
                DatabaseConfig::Mysql(u) => redact_url(u.expose()),
            },
        );
        let max_connections = r.whole("max_connections")?;

        let master_keys = match r.secret_or_file("master_key")? {
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
                let key = key_of(&s, "master_key", "master_key_file");
                Some(parse_key_list(spec.expose()).map_err(|e| invalid(key, &s, e.to_string()))?)
            }
        };
        r.show(
            "master_key",
            match &master_keys {
                Some(k) => format!(
                    "[redacted] (key ids: {}; the last seals)",
                    k.iter().map(|k| k.id()).collect::<Vec<_>>().join(", ")
                ),
                None => format!(
                    "(not set: generated/loaded {})",
                    data_dir.join("master.key").display()
                ),
            },
        );

        let mut vendor_keys = Vec::new();
        if let Some((v, s)) = r.take("vendor_keys") {
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
        r.show(
            "vendor_keys",
            if vendor_keys.is_empty() {
                "(none: no license can be applied)".to_string()
            } else {
                vendor_keys
                    .iter()
                    .map(|k| k.id())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );

        let admin_token = match r.secret_or_file("admin_token")? {
            Some((t, s)) if t.expose().len() < 16 => {
                return Err(invalid(
                    key_of(&s, "admin_token", "admin_token_file"),
                    &s,
                    "an admin token must be at least 16 characters",
                ))
            }
            t => t.map(|(t, _)| t),
        };
        r.show(
            "admin_token",
            if admin_token.is_some() {
                "[redacted]".to_string()
            } else {
                format!(
                    "(not set: the first start generates {})",
                    data_dir.join("admin.token").display()
                )
            },
        );

        let lease_ttl = r.seconds("lease_ttl")?;
        let lease_hold = match r.seconds_if_set("lease_hold")? {
            None => lease_ttl * 2,
            Some((d, s)) => {
                if d < lease_ttl || d > lease_ttl * 10 {
                    return Err(invalid(
                        "lease_hold",
                        &s,
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
        r.show("lease_hold", format!("{}s", lease_hold.as_secs_f64()));
        let integrity_interval = r.seconds("integrity_interval")?;
        let cluster_heartbeat = r.seconds("cluster_heartbeat")?;
        let max_sessions = r.whole("max_sessions")?;
        let session_idle = r.seconds("session_idle")?;
        let ticket_lifetime = r.seconds("ticket_lifetime")?;
        let ticket_rotation = r.seconds("ticket_rotation")?;
        let mut trusted_proxies: Vec<std::net::IpAddr> = Vec::new();
        if let Some((v, s)) = r.take("trusted_proxies") {
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
        r.show(
            "trusted_proxies",
            if trusted_proxies.is_empty() {
                "(none: X-Forwarded-For is ignored)".to_string()
            } else {
                trusted_proxies
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        let mp = r.take("metrics_public").unwrap_or_default();
        let metrics_public = match mp.0.as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(invalid(
                    "metrics_public",
                    &mp.1,
                    format!(
                        "'{}' is not true or false",
                        other.chars().take(40).collect::<String>()
                    ),
                ))
            }
        };
        r.show("metrics_public", metrics_public);
        let uv = r.take("ui").unwrap_or_default();
        let ui = match uv.0.as_str() {
            "true" => true,
            "false" => false,
            // Only this host can reach a loopback listener: the console adds
            // nothing a local user could not do with curl and the token.
            "auto" => admin_listen.ip().is_loopback(),
            other => {
                return Err(invalid(
                    "ui",
                    &uv.1,
                    format!(
                        "'{}' is not true, false or auto",
                        other.chars().take(40).collect::<String>()
                    ),
                ))
            }
        };
        if uv.0 == "auto" {
            let on = if ui { "a loopback" } else { "not a loopback" };
            r.show("ui", format!("auto ({ui}: admin_listen is {on} address)"));
        } else {
            r.show("ui", ui);
        }
        let auth_script = match r.take("auth_script") {
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
        r.show(
            "auth_script",
            auth_script.as_ref().map_or_else(
                || "(none: every authenticated identity may log in)".to_string(),
                |p| p.display().to_string(),
            ),
        );
        let auth_timeout = r.seconds("auth_timeout")?;
        let auth_max_concurrent = r.whole("auth_max_concurrent")?;
        let lf = r.take("log_format").unwrap_or_default();
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
        r.show("log_format", &lf.0);
        let ll = r.take("log_level").unwrap_or_default();
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
        r.show("log_level", &ll.0);
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
            metrics_public,
            ui,
            auth_script,
            auth_timeout,
            auth_max_concurrent,
            log_format,
            log_level: ll.0,
            sources: r.sources,
            shown: r.shown,
        })
    }
}

fn invalid(key: &'static str, source: &Source, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        from: source.clone(),
        reason: reason.into(),
    }
}

/// Which database a `database_url` names.
fn database(url: &Secret, s: &Source) -> Result<DatabaseConfig, ConfigError> {
    let u = url.expose();
    if let Some(rest) = u
        .strip_prefix("sqlite://")
        .or_else(|| u.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or("");
        if path.is_empty() {
            return Err(invalid(
                "database_url",
                s,
                "sqlite: URL names no file (example: sqlite:///var/lib/floatlm/floatlm.db)",
            ));
        }
        Ok(DatabaseConfig::Sqlite(PathBuf::from(path)))
    } else if u.starts_with("mysql://") || u.starts_with("mariadb://") {
        let u = u.replacen("mariadb://", "mysql://", 1);
        let after = u.trim_start_matches("mysql://");
        let db = after
            .rsplit_once('/')
            .map(|(_, d)| d.split('?').next().unwrap_or(""));
        if db.is_none_or(|d| d.is_empty()) {
            return Err(invalid(
                "database_url",
                s,
                "a MySQL URL must name the database: mysql://USER:PASS@HOST:3306/DATABASE",
            ));
        }
        Ok(DatabaseConfig::Mysql(Secret::new(u)))
    } else {
        Err(invalid(
            "database_url",
            s,
            "use sqlite:///PATH or mysql://USER:PASS@HOST:PORT/DATABASE",
        ))
    }
}

/// Reads keys out of [`Layers`] by their declaration in [`KEYS`], and
/// remembers where each value came from and how `config check` shows it.
struct Reader<'a> {
    layers: &'a Layers,
    sources: BTreeMap<&'static str, Source>,
    shown: BTreeMap<&'static str, String>,
}

impl Reader<'_> {
    /// The value of `name`, else its declared default; records the source.
    fn take(&mut self, name: &'static str) -> Option<(String, Source)> {
        let v = match self.layers.get(name) {
            Some((v, s)) => Some((v.trim().to_string(), s.clone())),
            None => spec(name).default.map(|d| (d.to_string(), Source::Default)),
        };
        if let Some((_, s)) = &v {
            self.sources.insert(name, s.clone());
        }
        v
    }

    fn show(&mut self, name: &'static str, value: impl fmt::Display) {
        self.shown.insert(name, value.to_string());
    }

    fn addr(&mut self, name: &'static str) -> Result<SocketAddr, ConfigError> {
        debug_assert_eq!(spec(name).rule, Rule::Addr);
        let (v, s) = self.take(name).unwrap_or_default();
        let a: SocketAddr = v.parse().map_err(|_| {
            invalid(
                name,
                &s,
                format!("'{v}' is not IP:PORT (for example 127.0.0.1:8990 or 0.0.0.0:8990)"),
            )
        })?;
        self.show(name, a);
        Ok(a)
    }

    /// A duration key that has a default.
    fn seconds(&mut self, name: &'static str) -> Result<Duration, ConfigError> {
        let d = self
            .seconds_if_set(name)?
            .map(|(d, _)| d)
            .unwrap_or_default();
        self.show(name, format!("{}s", d.as_secs_f64()));
        Ok(d)
    }

    /// A duration key, if it is set (or has a default).
    fn seconds_if_set(
        &mut self,
        name: &'static str,
    ) -> Result<Option<(Duration, Source)>, ConfigError> {
        let Rule::Seconds(min, max) = spec(name).rule else {
            unreachable!("{name} is not declared as a duration");
        };
        let Some((v, s)) = self.take(name) else {
            return Ok(None);
        };
        let d = parse_duration(&v).ok_or_else(|| {
            invalid(
                name,
                &s,
                format!(
                    "'{}' is not a duration in the allowed range {min}s..={max}s (examples: 30s, 2m, 1h, 7d, 500ms)",
                    v.chars().take(40).collect::<String>()
                ),
            )
        })?;
        let secs = d.as_secs_f64();
        if secs < min || secs > max {
            return Err(invalid(
                name,
                &s,
                format!("{secs}s is outside the allowed range {min}s..={max}s"),
            ));
        }
        Ok(Some((d, s)))
    }

    /// A whole-number key (it has a default).
    fn whole<T: TryFrom<u64>>(&mut self, name: &'static str) -> Result<T, ConfigError> {
        let Rule::Whole(min, max) = spec(name).rule else {
            unreachable!("{name} is not declared as a whole number");
        };
        let (v, s) = self.take(name).unwrap_or_default();
        let n = v
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| invalid(name, &s, format!("a whole number between {min} and {max}")))?;
        self.show(name, &v);
        Ok(n)
    }

    /// The value of secret key `name` or the contents of the file its
    /// `*_file` key names (never both).
    fn secret_or_file(
        &mut self,
        name: &'static str,
    ) -> Result<Option<(Secret, Source)>, ConfigError> {
        let file_key = KEYS
            .iter()
            .find(|k| k.file_of == Some(name))
            .map(|k| k.name)
            .unwrap_or_else(|| unreachable!("{name} has no *_file key"));
        match (self.take(name), self.take(file_key)) {
            (Some(_), Some((_, s))) => Err(invalid(
                file_key,
                &s,
                format!("set either {name} or {file_key}, not both"),
            )),
            (Some((v, s)), None) => Ok(Some((Secret::new(v), s))),
            (None, Some((p, s))) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| invalid(file_key, &s, format!("cannot read {p}: {e}")))?;
                self.sources.insert(name, s.clone());
                Ok(Some((Secret::new(text.trim().to_string()), s)))
            }
            (None, None) => Ok(None),
        }
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
    /// The effective configuration as INI-like lines, one per key of
    /// [`KEYS`] (a `*_file` key shows as the key it supplies), secrets
    /// redacted.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for k in KEYS.iter().filter(|k| k.file_of.is_none()) {
            let value = self.shown.get(k.name).map_or("(not set)", String::as_str);
            let from = self
                .sources
                .get(k.name)
                .map_or_else(|| "the built-in default".to_string(), |s| s.to_string());
            out.push_str(&format!("{} = {value}    ; from {from}\n", k.name));
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
    fn config_check_shows_every_key_and_the_sample_file_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t".repeat(20)).unwrap();
        let mut l = Layers::default();
        l.flag(
            "database_url",
            Some("mysql://root:hunter2@127.0.0.1:3306/floatlm"),
        );
        l.flag("master_key", Some(format!("k1:{}", "A".repeat(43) + "=")));
        l.env(env_of(&[(
            "FLOATLM_ADMIN_TOKEN_FILE",
            token.to_str().unwrap(),
        )]));
        for c in [Layers::default().build().unwrap(), l.build().unwrap()] {
            let shown = c.describe();
            for k in KEYS.iter().filter(|k| k.file_of.is_none()) {
                let line = shown
                    .lines()
                    .find(|line| line.starts_with(&format!("{} = ", k.name)))
                    .unwrap_or_else(|| panic!("config check omits {}:\n{shown}", k.name));
                assert!(
                    !line.contains("(not set)    ;") || k.name == "admin_token",
                    "{line}"
                );
            }
            assert!(!shown.contains("hunter2") && !shown.contains(&"t".repeat(20)));
        }
        let c = l.build().unwrap();
        assert!(
            c.describe().contains(
                "admin_token = [redacted]    ; from environment variable FLOATLM_ADMIN_TOKEN_FILE"
            ),
            "{}",
            c.describe()
        );
        // The sample file names every key (set or commented out), and
        // nothing else.
        let sample = include_str!("../config/floatlm.ini");
        for k in KEYS {
            let named = sample.lines().any(|line| {
                let line = line.trim_start_matches(';').trim();
                line.split('=').next().map(str::trim) == Some(k.name) && line.contains('=')
            });
            assert!(named, "config/floatlm.ini does not mention {}", k.name);
        }
        let p = dir.path().join("sample.ini");
        std::fs::write(&p, sample).unwrap();
        Layers::default().file(&p).unwrap();
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
