//! Reading one key out of the layers by its declaration in
//! [`KEYS`](super::KEYS): typed and range-checked, with where the value came
//! from and how `config check` shows it recorded on the way.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::keys::{spec, Rule, KEYS};
use super::sources::{Layers, Source};
use super::values::parse_duration;
use super::{invalid, ConfigError};
use crate::crypto::Secret;

/// Reads keys out of [`Layers`] by their declaration in [`KEYS`], and
/// remembers where each value came from and how `config check` shows it.
pub(super) struct Reader<'a> {
    pub(super) layers: &'a Layers,
    pub(super) sources: BTreeMap<&'static str, Source>,
    pub(super) shown: BTreeMap<&'static str, String>,
}

impl Reader<'_> {
    /// The value of `name`, else its declared default; records the source.
    pub(super) fn take(&mut self, name: &'static str) -> Option<(String, Source)> {
        let v = match self.layers.get(name) {
            Some((v, s)) => Some((v.trim().to_string(), s.clone())),
            None => spec(name).default.map(|d| (d.to_string(), Source::Default)),
        };
        if let Some((_, s)) = &v {
            self.sources.insert(name, s.clone());
        }
        v
    }

    pub(super) fn show(&mut self, name: &'static str, value: impl fmt::Display) {
        self.shown.insert(name, value.to_string());
    }

    pub(super) fn addr(&mut self, name: &'static str) -> Result<SocketAddr, ConfigError> {
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
    pub(super) fn seconds(&mut self, name: &'static str) -> Result<Duration, ConfigError> {
        let d = self
            .seconds_if_set(name)?
            .map(|(d, _)| d)
            .unwrap_or_default();
        self.show(name, format!("{}s", d.as_secs_f64()));
        Ok(d)
    }

    /// A duration key, if it is set (or has a default).
    pub(super) fn seconds_if_set(
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
    pub(super) fn whole<T: TryFrom<u64>>(&mut self, name: &'static str) -> Result<T, ConfigError> {
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
    pub(super) fn secret_or_file(
        &mut self,
        name: &'static str,
    ) -> Result<Option<(Secret, Source)>, ConfigError> {
        match self.secret_or_path(name)? {
            Some((Given::Value(v), s)) => Ok(Some((v, s))),
            Some((Given::File(file_key, p), s)) => {
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    invalid(file_key, &s, format!("cannot read {}: {e}", p.display()))
                })?;
                Ok(Some((Secret::new(text.trim().to_string()), s)))
            }
            None => Ok(None),
        }
    }

    /// The value of secret key `name` or the path its `*_file` key names
    /// (never both), for a caller that reads the file itself.
    pub(super) fn secret_or_path(
        &mut self,
        name: &'static str,
    ) -> Result<Option<(Given, Source)>, ConfigError> {
        debug_assert!(spec(name).secret, "{name} is not declared secret");
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
            (Some((v, s)), None) => Ok(Some((Given::Value(Secret::new(v)), s))),
            (None, Some((p, s))) => {
                self.sources.insert(name, s.clone());
                Ok(Some((Given::File(file_key, PathBuf::from(p)), s)))
            }
            (None, None) => Ok(None),
        }
    }
}

/// How a secret setting was given: its value, or the path its `*_file` key
/// (named) holds.
pub(super) enum Given {
    Value(Secret),
    File(&'static str, PathBuf),
}
