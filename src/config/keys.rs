//! The one table of configuration keys ([`KEYS`]): section, default, rule
//! and whether the value is a secret. Parsing, `config check`, the
//! environment and flag names and the config/floatlm.ini documentation test
//! all read it, so they cannot drift apart.

/// How a key's text is checked and turned into a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `IP:PORT`.
    Addr,
    /// A duration (`30s`, `2m`, `500ms`) within an inclusive range of seconds.
    Seconds(f64, f64),
    /// A whole number within an inclusive range.
    Whole(u64, u64),
    /// Checked by its own code in [`Layers::build`](super::Layers::build)
    /// (text, paths, secrets, lists).
    Own,
}

/// One configuration key: where it lives in the INI file, its default, its
/// rule and whether it is a secret. Every key is declared here once; the
/// environment variable (`FLOATLM_<KEY>`), the flag (`--<key-with-dashes>`),
/// validation and `config check` all follow from this table.
#[derive(Debug)]
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub rule: Rule,
    /// For `*_file` keys: the key whose value the file holds.
    pub file_of: Option<&'static str>,
    /// A secret: never printed (`config check` and `Debug` redact it), and
    /// it may instead be read from the file its `*_file` key names.
    pub secret: bool,
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
        secret: false,
    }
}

const fn secret_key(section: &'static str, name: &'static str) -> Key {
    Key {
        section,
        name,
        default: None,
        rule: Rule::Own,
        file_of: None,
        secret: true,
    }
}

const fn file_key(section: &'static str, name: &'static str, of: &'static str) -> Key {
    Key {
        section,
        name,
        default: None,
        rule: Rule::Own,
        file_of: Some(of),
        secret: false,
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
    secret_key("database", "database_url"),
    file_key("database", "database_url_file", "database_url"),
    key(
        "database",
        "max_connections",
        Some("16"),
        Rule::Whole(1, 1000),
    ),
    secret_key("security", "master_key"),
    file_key("security", "master_key_file", "master_key"),
    key("security", "vendor_keys", None, Rule::Own),
    secret_key("security", "admin_token"),
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
    key("backup", "backup_interval", Some("off"), Rule::Own),
    key("backup", "backup_dir", None, Rule::Own),
    key("backup", "backup_keep", Some("7"), Rule::Whole(1, 100_000)),
    key("access", "assignment", Some("auto"), Rule::Own),
    key(
        "usage",
        "usage_retention",
        Some("400d"),
        Rule::Seconds(86400.0, 36500.0 * 86400.0),
    ),
    key("logging", "log_format", Some("text"), Rule::Own),
    key("logging", "log_level", Some("info"), Rule::Own),
];

/// The declaration of `name` (a key this file declares).
pub(super) fn spec(name: &str) -> &'static Key {
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
