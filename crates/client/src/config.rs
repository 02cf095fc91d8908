//! The client configuration: one INI file (`FLOATLM_CLIENT_CONFIG`, else
//! the per-user `$XDG_CONFIG_HOME/floatlm/client.ini` or
//! `~/.config/floatlm/client.ini`, else `/etc/floatlm/client.ini`), then
//! `FLOATLM_*` environment variables, then the caller's flags. Every value
//! remembers where it came from (file and line, variable, flag, default),
//! so errors and `floatlm client config check` can say so. The library and
//! the CLI read the same file through [`ClientConfig::load`].
//!
//! The INI reader is our own (30 lines): errors must name the line of a
//! key, which the INI crates do not keep.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::{split_credentials, valid_group, ServerAddress};
use crate::{ClientError, Options, ServerSpec};

/// The variable naming the client configuration file.
pub const CONFIG_ENV: &str = "FLOATLM_CLIENT_CONFIG";
/// The system-wide file, read when neither the variable nor a per-user file
/// names one.
pub const SYSTEM_FILE: &str = "/etc/floatlm/client.ini";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File { path, line } => write!(f, "{} line {line}", path.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// How a key's text is checked.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Comma-separated identity strings (ID:SECRET@ADDRESS) or ID:SECRET.
    Identity,
    /// Comma-separated `[GROUP:]ADDRESS`.
    Servers,
    Group,
    /// A duration (`500ms`, `60s`, `2m`, `1h`; a bare number is seconds)
    /// within these bounds in milliseconds.
    Millis(u64, u64),
    /// A whole number, or `unlimited`.
    Count,
    Path,
    Bool,
    /// Any text (masked when `secret`).
    Text,
}

/// One key of the file: its environment variable, default, rule, whether
/// its value is a secret, and what it means (shown in docs/client.md and
/// `config check`).
struct Key {
    name: &'static str,
    env: &'static str,
    default: &'static str,
    rule: Rule,
    secret: bool,
}

/// Every key, once: parsing, the environment, `config check` and the
/// documentation (docs/client.md) follow this table.
const KEYS: &[Key] = &[
    Key {
        name: "identity",
        env: "FLOATLM_IDENTITY",
        default: "",
        rule: Rule::Identity,
        secret: true,
    },
    Key {
        name: "servers",
        env: "FLOATLM_SERVERS",
        default: "",
        rule: Rule::Servers,
        secret: false,
    },
    Key {
        name: "group",
        env: "FLOATLM_GROUP",
        default: "",
        rule: Rule::Group,
        secret: false,
    },
    Key {
        name: "retry_interval",
        env: "FLOATLM_RETRY_INTERVAL",
        default: "60s",
        rule: Rule::Millis(100, 86_400_000),
        secret: false,
    },
    Key {
        name: "retry_count",
        env: "FLOATLM_RETRY_COUNT",
        default: "unlimited",
        rule: Rule::Count,
        secret: false,
    },
    Key {
        name: "request_timeout",
        env: "FLOATLM_REQUEST_TIMEOUT",
        default: "5s",
        rule: Rule::Millis(100, 300_000),
        secret: false,
    },
    Key {
        name: "ca_file",
        env: "FLOATLM_CA_FILE",
        default: "",
        rule: Rule::Path,
        secret: false,
    },
    Key {
        name: "insecure_skip_tls_verify",
        env: "FLOATLM_INSECURE_SKIP_TLS_VERIFY",
        default: "false",
        rule: Rule::Bool,
        secret: false,
    },
    Key {
        name: "auth_mech",
        env: "FLOATLM_AUTH_MECH",
        default: "",
        rule: Rule::Text,
        secret: false,
    },
    Key {
        name: "auth_data",
        env: "FLOATLM_AUTH_DATA",
        default: "",
        rule: Rule::Text,
        secret: true,
    },
];

/// The names of every key, in the order `config check` shows them.
pub fn client_config_keys() -> impl Iterator<Item = (&'static str, &'static str)> {
    KEYS.iter().map(|k| (k.name, k.env))
}

fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The effective client configuration: each key's value and its source.
#[derive(Clone)]
pub struct ClientConfig {
    /// The file read, and why it was that one; None when there was none.
    file: Option<(PathBuf, &'static str)>,
    /// Parallel to [`KEYS`].
    values: Vec<(String, Source)>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientConfig ")?;
        f.debug_list().entries(self.report()).finish()
    }
}

fn err(source: &Source, key: &str, reason: impl fmt::Display) -> ClientError {
    ClientError::Config(format!("{source}: key '{key}': {reason}"))
}

impl ClientConfig {
    /// The file, the process environment, no flags.
    pub fn load() -> Result<ClientConfig, ClientError> {
        Self::load_with(|k| std::env::var(k).ok())
    }

    /// As [`ClientConfig::load`], with `env` for the environment (tests).
    pub fn load_with(env: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, ClientError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let mut cfg = ClientConfig {
            file: None,
            values: KEYS
                .iter()
                .map(|k| (k.default.to_string(), Source::Default))
                .collect(),
        };
        let file = match get(CONFIG_ENV) {
            Some(p) => Some((PathBuf::from(p), "named by FLOATLM_CLIENT_CONFIG")),
            None => default_files(&get).into_iter().find(|(p, _)| p.exists()),
        };
        if let Some((path, why)) = file {
            cfg.read_file(&path)?;
            cfg.file = Some((path, why));
        }
        for k in KEYS {
            if let Some(v) = get(k.env) {
                cfg.set(k.name, v, Source::Env(k.env.to_string()))?;
            }
        }
        Ok(cfg)
    }

    /// Sets `key` from a command-line flag (`flag` names it in messages);
    /// None leaves it as it is.
    pub fn flag(&mut self, key: &str, flag: &str, value: Option<&str>) -> Result<(), ClientError> {
        match value {
            Some(v) => self.set(key, v.to_string(), Source::Flag(flag.to_string())),
            None => Ok(()),
        }
    }

    fn read_file(&mut self, path: &Path) -> Result<(), ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Config(format!(
                "cannot read client config file {}: {e}",
                path.display()
            ))
        })?;
        let mut section = String::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let source = Source::File {
                path: path.to_path_buf(),
                line: n + 1,
            };
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name.strip_suffix(']').ok_or_else(|| {
                    ClientError::Config(format!(
                        "{source}: malformed section header '{line}' (expected [client])"
                    ))
                })?;
                if name.trim() != "client" {
                    return Err(ClientError::Config(format!(
                        "{source}: unknown section [{}]; the client file has keys at the top or in [client]",
                        name.trim()
                    )));
                }
                section = name.trim().to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(ClientError::Config(format!(
                    "{source}: malformed line '{}' (expected KEY = VALUE)",
                    mask_line(line)
                )));
            };
            let k = k.trim();
            if key(k).is_none() {
                return Err(ClientError::Config(format!(
                    "{source}: unknown key '{k}'{}; known keys: {}",
                    if section.is_empty() {
                        String::new()
                    } else {
                        format!(" in [{section}]")
                    },
                    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                )));
            }
            self.set(k, v.trim().to_string(), source)?;
        }
        Ok(())
    }

    /// Checks `value` by the key's rule, then keeps it with its source.
    fn set(&mut self, name: &str, value: String, source: Source) -> Result<(), ClientError> {
        let Some(i) = KEYS.iter().position(|k| k.name == name) else {
            return Err(ClientError::Config(format!(
                "{source}: unknown key '{name}'"
            )));
        };
        let k = &KEYS[i];
        match k.rule {
            Rule::Identity => {
                for id in list(&value) {
                    let ok = if id.contains('@') {
                        id.parse::<ServerSpec>().map(|_| ())
                    } else {
                        split_credentials(id)
                            .map(|_| ())
                            .map_err(ClientError::BadIdentity)
                    };
                    // The message never quotes the value: it holds the secret.
                    ok.map_err(|e| {
                        err(
                            &source,
                            name,
                            format!("{e} (expected ID:SECRET@HOST:PORT or ID:SECRET)"),
                        )
                    })?;
                }
            }
            Rule::Servers => {
                for s in list(&value) {
                    if s.contains('@') {
                        // A whole identity string (-s ID:SECRET@HOST:PORT): never quoted.
                        s.parse::<ServerSpec>().map_err(|e| err(&source, name, e))?;
                    } else {
                        s.parse::<ServerAddress>()
                            .map_err(|e| err(&source, name, format!("'{s}': {e}")))?;
                    }
                }
            }
            Rule::Group => {
                if !value.is_empty() && !valid_group(&value) {
                    return Err(err(
                        &source,
                        name,
                        format!(
                            "'{value}' is not a group name (letters, digits, '-', '_'; at most 32)"
                        ),
                    ));
                }
            }
            Rule::Millis(lo, hi) => {
                let d = parse_duration(&value).ok_or_else(|| {
                    err(
                        &source,
                        name,
                        format!("'{value}' is not a duration (500ms, 60s, 2m, 1h)"),
                    )
                })?;
                let ms = d.as_millis() as u64;
                if ms < lo || ms > hi {
                    return Err(err(
                        &source,
                        name,
                        format!("{value} is out of range ({lo} ms to {} s)", hi / 1000),
                    ));
                }
            }
            Rule::Count => {
                if value != "unlimited" && value.parse::<u32>().is_err() {
                    return Err(err(
                        &source,
                        name,
                        format!("'{value}' is not a whole number or 'unlimited'"),
                    ));
                }
            }
            Rule::Path => {
                if !value.is_empty() && !Path::new(&value).is_file() {
                    return Err(err(&source, name, format!("{value}: no such file")));
                }
            }
            Rule::Bool => {
                parse_bool(&value)
                    .ok_or_else(|| err(&source, name, format!("'{value}' is not true or false")))?;
            }
            Rule::Text => {}
        }
        self.values[i] = (value, source);
        Ok(())
    }

    fn get(&self, name: &str) -> &(String, Source) {
        let i = KEYS
            .iter()
            .position(|k| k.name == name)
            .expect("a key of KEYS");
        &self.values[i]
    }

    /// The file that was read and why it was that one.
    pub fn file(&self) -> Option<(&Path, &'static str)> {
        self.file.as_ref().map(|(p, w)| (p.as_path(), *w))
    }

    /// The servers to use: each `servers` address with the credentials of
    /// the first `identity` (a `servers` entry may itself be a whole
    /// identity string); without `servers`, the `identity` strings.
    pub fn servers(&self) -> Result<Vec<ServerSpec>, ClientError> {
        let (ids, id_src) = self.get("identity");
        let (servers, srv_src) = self.get("servers");
        let ids = list(ids);
        let mut out = Vec::new();
        for s in list(servers) {
            if s.contains('@') {
                out.push(s.parse().map_err(|e| err(srv_src, "servers", e))?);
                continue;
            }
            let first = ids.first().ok_or_else(|| {
                err(srv_src, "servers", format!(
                    "'{s}' names only an address: give ID:SECRET in identity (or FLOATLM_IDENTITY, --identity)"
                ))
            })?;
            let cred = first.rsplit_once('@').map_or(*first, |(c, _)| c);
            let (id, secret) = split_credentials(cred).map_err(|e| err(id_src, "identity", e))?;
            let addr: ServerAddress = s.parse().map_err(|e| err(srv_src, "servers", e))?;
            out.push(ServerSpec::new(id, secret, addr));
        }
        if out.is_empty() {
            for id in &ids {
                if !id.contains('@') {
                    return Err(err(
                        id_src,
                        "identity",
                        "ID:SECRET without an address: give servers (or -s HOST:PORT)",
                    ));
                }
                out.push(id.parse().map_err(|e| err(id_src, "identity", e))?);
            }
        }
        if out.is_empty() {
            return Err(ClientError::Config(format!(
                "no server given: set identity = ID:SECRET@HOST:PORT in {}, or FLOATLM_IDENTITY, or pass -s",
                self.file.as_ref().map_or_else(|| "a client file (see docs/client.md)".to_string(), |(p, _)| p.display().to_string())
            )));
        }
        let (group, g_src) = self.get("group");
        if !group.is_empty()
            && !out
                .iter()
                .any(|s| s.group.as_deref() == Some(group.as_str()))
        {
            return Err(err(
                g_src,
                "group",
                format!(
                    "no server is tagged with group {group} (write servers as {group}:HOST:PORT)"
                ),
            ));
        }
        Ok(out)
    }

    /// `base` with every value this configuration sets (file, environment,
    /// flags; a built-in default leaves `base` as it is).
    pub fn options(&self, mut base: Options) -> Options {
        for (k, (v, src)) in KEYS.iter().zip(&self.values) {
            if *src == Source::Default {
                continue;
            }
            match k.name {
                "group" => base.group = (!v.is_empty()).then(|| v.clone()),
                "retry_interval" => {
                    base.retry_interval = parse_duration(v).unwrap_or(base.retry_interval)
                }
                "retry_count" => base.max_retries = v.parse().ok(),
                "request_timeout" => {
                    base.request_timeout = parse_duration(v).unwrap_or(base.request_timeout)
                }
                "ca_file" => base.ca_file = (!v.is_empty()).then(|| PathBuf::from(v)),
                "insecure_skip_tls_verify" => {
                    base.insecure_skip_tls_verify = parse_bool(v).unwrap_or(false)
                }
                "auth_mech" => base.auth.mech = v.clone(),
                "auth_data" => base.auth.data = v.clone(),
                _ => {}
            }
        }
        base
    }

    /// Each key, the value a client would use (secrets masked) and where it
    /// came from.
    pub fn report(&self) -> Vec<(&'static str, String, String)> {
        KEYS.iter()
            .zip(&self.values)
            .map(|(k, (v, src))| {
                let shown = if v.is_empty() {
                    "(not set)".to_string()
                } else if matches!(k.rule, Rule::Identity | Rule::Servers) {
                    list(v)
                        .iter()
                        .map(|s| mask_identity(s))
                        .collect::<Vec<_>>()
                        .join(", ")
                } else if k.secret {
                    format!("(set, {} characters)", v.chars().count())
                } else {
                    v.clone()
                };
                (k.name, shown, src.to_string())
            })
            .collect()
    }
}

/// The files looked for when FLOATLM_CLIENT_CONFIG is not set, in order.
fn default_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<(PathBuf, &'static str)> {
    let mut v = Vec::new();
    if let Some(x) = env("XDG_CONFIG_HOME") {
        v.push((
            Path::new(&x).join("floatlm/client.ini"),
            "per-user file ($XDG_CONFIG_HOME)",
        ));
    } else if let Some(h) = env("HOME") {
        v.push((
            Path::new(&h).join(".config/floatlm/client.ini"),
            "per-user file (~/.config)",
        ));
    }
    v.push((PathBuf::from(SYSTEM_FILE), "system-wide file"));
    v
}

/// Where a client looks for its file, for messages.
pub fn client_config_search_path() -> Vec<PathBuf> {
    default_files(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

fn list(v: &str) -> Vec<&str> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// `ID:SECRET@ADDRESS` as `ID:****@ADDRESS`.
fn mask_identity(s: &str) -> String {
    if !s.contains('@') && s.parse::<ServerAddress>().is_ok() {
        return s.to_string();
    }
    let (cred, addr) = match s.rsplit_once('@') {
        Some((c, a)) => (c, Some(a)),
        None => (s, None),
    };
    let id = cred.split_once(':').map_or("?", |(id, _)| id);
    match addr {
        Some(a) => format!("{id}:****@{a}"),
        None => format!("{id}:****"),
    }
}

/// A malformed line may hold a secret: show only its start.
fn mask_line(line: &str) -> String {
    let head: String = line.chars().take(12).collect();
    if head.len() < line.len() {
        format!("{head}…")
    } else {
        head
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `500ms`, `60s`, `2m`, `1h`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}
