//! [`Layers::build`]: every key of [`KEYS`](super::KEYS) read into one
//! validated [`Config`], with the rules that join keys (a MySQL database
//! needs a master key, `lease_hold` is bounded by `lease_ttl`, …).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{Given, Reader};
use super::sources::{Layers, Source};
use super::values::{parse_duration, redact_url, valid_log_filter};
use super::{invalid, Assignment, Config, ConfigError, DatabaseConfig, LogFormat};
use crate::crypto::keyring::{load_master_keys, KeySource, MasterKey};
use crate::crypto::Secret;
use crate::domain::license::VendorKey;

impl Layers {
    /// Validates everything into a [`Config`].
    pub fn build(&self) -> Result<Config, ConfigError> {
        let mut reader = Reader {
            layers: self,
            sources: BTreeMap::new(),
            shown: BTreeMap::new(),
        };
        // The first invalid value read is the error: keep this order. Keys
        // with their own rules are read by the functions below.
        let r = &mut reader;
        let listen = r.addr("listen")?;
        let admin_listen = r.addr("admin_listen")?;
        let public_address = public_address(r, listen)?;
        let instance_id = instance_id(r)?;
        let data_dir = PathBuf::from(r.take("data_dir").map(|v| v.0).unwrap_or_default());
        r.show("data_dir", data_dir.display());
        let drain_delay = r.seconds("drain_delay")?;
        let max_body_bytes = r.whole("max_body_bytes")?;

        let database = database_url(r, &data_dir)?;
        let max_connections = r.whole("max_connections")?;

        let master_keys = master_keys(r, &database, &data_dir)?;
        let vendor_keys = vendor_keys(r)?;
        let admin_token = admin_token(r, &data_dir)?;
        let lease_ttl = r.seconds("lease_ttl")?;
        let lease_hold = lease_hold(r, lease_ttl)?;
        let integrity_interval = r.seconds("integrity_interval")?;
        let cluster_heartbeat = r.seconds("cluster_heartbeat")?;
        let max_sessions = r.whole("max_sessions")?;
        let session_idle = r.seconds("session_idle")?;
        let ticket_lifetime = r.seconds("ticket_lifetime")?;
        let ticket_rotation = r.seconds("ticket_rotation")?;
        let trusted_proxies = trusted_proxies(r)?;
        let metrics_public = metrics_public(r)?;
        let ui = ui(r, admin_listen)?;
        let auth_script = auth_script(r)?;
        let auth_timeout = r.seconds("auth_timeout")?;
        let auth_max_concurrent = r.whole("auth_max_concurrent")?;
        let backup_interval = backup_interval(r)?;
        let backup_dir = match r.take("backup_dir") {
            Some((v, _)) => PathBuf::from(v),
            None => data_dir.join("backups"),
        };
        r.show("backup_dir", backup_dir.display());
        let backup_keep = r.whole("backup_keep")?;
        let usage_retention = r.seconds("usage_retention")?;
        let assignment = assignment(r)?;
        let log_format = log_format(r)?;
        let log_level = log_level(r)?;
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
            backup_interval,
            backup_dir,
            backup_keep,
            usage_retention,
            assignment,
            log_format,
            log_level,
            sources: reader.sources,
            shown: reader.shown,
        })
    }
}

/// `public_address`: HOST:PORT as written into identity strings; by default
/// the licensing listener's address.
fn public_address(r: &mut Reader, listen: SocketAddr) -> Result<String, ConfigError> {
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
    Ok(public_address)
}

/// `instance_id`: a name, or a random one.
fn instance_id(r: &mut Reader) -> Result<String, ConfigError> {
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
    Ok(instance_id)
}

/// `database_url` (or its file): SQLite in `data_dir` by default.
fn database_url(r: &mut Reader, data_dir: &Path) -> Result<DatabaseConfig, ConfigError> {
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
    Ok(database)
}

/// `master_key` (or its file): required by a MySQL database; SQLite
/// generates or loads DATA_DIR/master.key without it.
fn master_keys(
    r: &mut Reader,
    database: &DatabaseConfig,
    data_dir: &Path,
) -> Result<Option<Vec<MasterKey>>, ConfigError> {
    let master_keys = match r.secret_or_path("master_key")? {
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
        Some((given, s)) => {
            let (key, source) = match &given {
                Given::Value(text) => ("master_key", KeySource::Text(text.expose())),
                Given::File(file_key, path) => (*file_key, KeySource::File(path)),
            };
            Some(load_master_keys(source).map_err(|e| invalid(key, &s, e.to_string()))?)
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
                data_dir.join(super::MASTER_KEY_FILE).display()
            ),
        },
    );
    Ok(master_keys)
}

/// `vendor_keys`: keys or key files, comma separated, without repeats.
fn vendor_keys(r: &mut Reader) -> Result<Vec<VendorKey>, ConfigError> {
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
    Ok(vendor_keys)
}

/// `admin_token` (or its file): at least 16 characters; without it the
/// first start generates one.
fn admin_token(r: &mut Reader, data_dir: &Path) -> Result<Option<Secret>, ConfigError> {
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
    Ok(admin_token)
}

/// `lease_hold`: between `lease_ttl` and 10 × `lease_ttl`; twice
/// `lease_ttl` by default.
fn lease_hold(r: &mut Reader, lease_ttl: Duration) -> Result<Duration, ConfigError> {
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
    Ok(lease_hold)
}

/// `trusted_proxies`: IP addresses, comma separated.
fn trusted_proxies(r: &mut Reader) -> Result<Vec<std::net::IpAddr>, ConfigError> {
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
    Ok(trusted_proxies)
}

/// `auth_script`: an executable file, if set.
fn auth_script(r: &mut Reader) -> Result<Option<PathBuf>, ConfigError> {
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
    Ok(auth_script)
}

/// `metrics_public`: true or false.
fn metrics_public(r: &mut Reader) -> Result<bool, ConfigError> {
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
    Ok(metrics_public)
}

/// `ui`: true, false, or auto (on while `admin_listen` is loopback).
fn ui(r: &mut Reader, admin_listen: SocketAddr) -> Result<bool, ConfigError> {
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
    Ok(ui)
}

/// `backup_interval`: off, or a duration between 1 s and 30 days.
fn backup_interval(r: &mut Reader) -> Result<Option<Duration>, ConfigError> {
    let backup_interval = match r.take("backup_interval") {
        Some((v, _)) if v.eq_ignore_ascii_case("off") => None,
        Some((v, s)) => Some(
            parse_duration(&v)
                .filter(|d| (1.0..=30.0 * 86400.0).contains(&d.as_secs_f64()))
                .ok_or_else(|| {
                    invalid(
                        "backup_interval",
                        &s,
                        format!(
                            "'{}' is neither off nor a duration between 1s and 30d (examples: 6h, 1d)",
                            v.chars().take(40).collect::<String>()
                        ),
                    )
                })?,
        ),
        None => None,
    };
    r.show(
        "backup_interval",
        backup_interval.map_or("off".to_string(), |d| format!("{}s", d.as_secs_f64())),
    );
    Ok(backup_interval)
}

/// `log_format`: text or json.
fn log_format(r: &mut Reader) -> Result<LogFormat, ConfigError> {
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
    Ok(log_format)
}

/// `assignment`: auto (every identity may use every feature) or manual.
fn assignment(r: &mut Reader) -> Result<Assignment, ConfigError> {
    let a = r.take("assignment").unwrap_or_default();
    let assignment = match a.0.as_str() {
        "auto" => Assignment::Auto,
        "manual" => Assignment::Manual,
        other => {
            return Err(invalid(
                "assignment",
                &a.1,
                format!("'{other}' is not auto or manual"),
            ))
        }
    };
    r.show("assignment", &a.0);
    Ok(assignment)
}

/// `log_level`: levels or TARGET=LEVEL directives.
fn log_level(r: &mut Reader) -> Result<String, ConfigError> {
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
    Ok(ll.0)
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
