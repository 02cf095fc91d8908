//! The syntax of values that are more than one key's business: durations
//! (also read by the CLI), log filters, database URLs with the password
//! redacted, and the nodes of a cluster given as repeated `database_url`s.

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

/// The parts of a `mysql://` URL that [`merge_node_urls`] compares.
struct UrlParts<'a> {
    userinfo: Option<&'a str>,
    hosts: &'a str,
    /// `/database?options`.
    tail: &'a str,
}

fn url_parts(url: &str) -> Option<UrlParts<'_>> {
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))?;
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (hosts, tail) = hostpart.split_at(hostpart.find(['/', '?']).unwrap_or(hostpart.len()));
    Some(UrlParts {
        userinfo,
        hosts,
        tail,
    })
}

/// `database_url` given several times (in the INI file), each value naming
/// a node of one cluster, as one URL listing every host in the order given:
/// `mysql://u:p@h1:3306/db` and `mysql://u:p@h2:3306/db` become
/// `mysql://u:p@h1:3306,h2:3306/db`. Err when a value is no MySQL URL or
/// differs from the first in more than its hosts; the reason never shows a
/// password.
pub(super) fn merge_node_urls(urls: &[String]) -> Result<String, String> {
    let mut hosts: Vec<&str> = Vec::new();
    let mut first: Option<UrlParts> = None;
    for (i, url) in urls.iter().enumerate() {
        let n = i + 1;
        let p = url_parts(url.trim()).ok_or_else(|| {
            format!(
                "it is set {} times, and value {n} is not a mysql:// URL: only a MySQL/MariaDB \
                 cluster's nodes may be listed this way, one full URL each \
                 (mysql://USER:PASS@HOST:PORT/DATABASE)",
                urls.len()
            )
        })?;
        if let Some(f) = &first {
            let differs = if f.userinfo != p.userinfo {
                Some("user or password")
            } else if f.tail != p.tail {
                Some("database or options")
            } else {
                None
            };
            if let Some(what) = differs {
                return Err(format!(
                    "it is set {} times, and value {n} differs from the first in its {what}: each \
                     value names one node of the same cluster, with the same user, password, \
                     database and options; only HOST:PORT may change",
                    urls.len()
                ));
            }
        }
        for h in p.hosts.split(',').map(str::trim) {
            if h.is_empty() {
                return Err(format!("value {n} has an empty host"));
            }
            if hosts.contains(&h) {
                return Err(format!("the host {h} is named twice"));
            }
            hosts.push(h);
        }
        first.get_or_insert(p);
    }
    let f = first.ok_or("no value")?;
    Ok(match f.userinfo {
        Some(u) => format!("mysql://{u}@{}{}", hosts.join(","), f.tail),
        None => format!("mysql://{}{}", hosts.join(","), f.tail),
    })
}
