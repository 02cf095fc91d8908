//! The syntax of values that are more than one key's business: durations
//! (also read by the CLI), log filters, and database URLs with the password
//! redacted.

use std::time::Duration;

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
pub(super) fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    !s.trim().is_empty()
        && s.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => !target.trim().is_empty() && level(l),
            None => level(d),
        })
        && tracing_subscriber::EnvFilter::try_new(s).is_ok()
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
