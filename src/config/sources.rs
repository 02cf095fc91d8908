//! The layers a value can come from (file < environment < flags) and where
//! each value came from ([`Source`]), before any validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::keys::{env_name, flag_name, KEYS};
use super::values::merge_node_urls;
use super::{invalid, ConfigError};

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

/// Raw layered values before validation.
#[derive(Debug, Default, Clone)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Layers {
    fn set(&mut self, key: &'static str, value: String, source: Source) {
        self.values.insert(key, (value, source));
    }

    /// Reads the INI file at `path`. A key may be set once, except
    /// `database_url`: repeated, each value names one node of a cluster, and
    /// they become one URL listing every host.
    pub fn file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(path.to_path_buf(), e.to_string()))?;
        let ini = ini::Ini::load_from_str(&text)
            .map_err(|e| ConfigError::File(path.to_path_buf(), e.to_string()))?;
        let source = Source::File(path.to_path_buf());
        let mut found: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
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
                found.entry(key).or_default().push(v.to_string());
            }
        }
        for (key, mut values) in found {
            let value = match values.len() {
                1 => values.remove(0),
                _ if key == "database_url" => {
                    merge_node_urls(&values).map_err(|reason| invalid(key, &source, reason))?
                }
                n => {
                    return Err(invalid(
                        key,
                        &source,
                        format!(
                            "it is set {n} times; set it once (only database_url may repeat, \
                             one node of a cluster each)"
                        ),
                    ))
                }
            };
            self.set(key, value, source.clone());
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

    pub(super) fn get(&self, key: &'static str) -> Option<&(String, Source)> {
        self.values.get(key).filter(|(v, _)| !v.trim().is_empty())
    }
}
