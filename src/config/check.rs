//! `floatlm config check`: the effective configuration, one line per key of
//! [`KEYS`], with where each value came from and secrets redacted.

use super::keys::KEYS;
use super::Config;

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
