//! Usage records as a vocabulary: the seat events the `usage_events` table
//! holds (docs/operations.md, "Usage records") and the report computed from
//! them (checkouts, seat-hours, peak concurrency, denials). Pure: the rows
//! come from storage, the report goes to the admin API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A lease as the rows name it: (feature_id, slot_no, lease_gen, nonce).
pub type LeaseKey = (i64, i64, i64, i64);

/// One row of `usage_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    pub id: i64,
    /// Database time: when the event took effect (an expiry: the lease's
    /// expiry, not the moment it was found).
    pub at: DateTime<Utc>,
    /// `grant`, `release`, `expiry`, `force_release` or `denial`.
    pub event: String,
    pub feature: String,
    /// The lease (feature_id, slot_no, lease_gen, nonce); None for a denial.
    pub lease: Option<LeaseKey>,
    pub identity: Option<String>,
    pub user: Option<String>,
    pub host: Option<String>,
    pub address: Option<String>,
    pub instance: Option<String>,
    pub reason: Option<String>,
}

/// A refused login, written in batches without a seat change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub at: DateTime<Utc>,
    pub feature: String,
    pub identity: String,
    pub user: String,
    pub host: String,
    pub address: String,
    pub instance: String,
    pub reason: String,
}

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    Feature,
    Identity,
    User,
    Host,
}

impl std::str::FromStr for UsageBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "feature" => Ok(Self::Feature),
            "identity" => Ok(Self::Identity),
            "user" => Ok(Self::User),
            "host" => Ok(Self::Host),
            _ => Err(format!(
                "usage report by '{}': expected feature, identity, user or host",
                s.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageLine {
    /// The group's key (a feature, identity, user or host; "" when unknown).
    pub key: String,
    pub checkouts: u64,
    pub seat_hours: f64,
    pub peak_concurrency: u64,
    pub denials: u64,
}

fn key_of(e: &UsageEvent, by: UsageBy) -> String {
    match by {
        UsageBy::Feature => Some(e.feature.clone()),
        UsageBy::Identity => e.identity.clone(),
        UsageBy::User => e.user.clone(),
        UsageBy::Host => e.host.clone(),
    }
    .unwrap_or_default()
}

/// The report of the window [from, to) from `events`: every event inside
/// it, plus the grants before `from` whose lease had not ended by `from`
/// (what [`crate::storage::UsageStore::usage_window`] returns). A lease counts
/// from its grant (or `from`) to its end (or `to`, or `now` if that is
/// earlier and it has not ended); a checkout is a grant inside the window.
pub fn report(
    events: &[UsageEvent],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    by: UsageBy,
) -> Vec<UsageLine> {
    let open_end = to.min(now).max(from);
    let mut lines: BTreeMap<String, UsageLine> = BTreeMap::new();
    let line = |lines: &mut BTreeMap<String, UsageLine>, k: String| {
        lines.entry(k.clone()).or_insert(UsageLine {
            key: k,
            checkouts: 0,
            seat_hours: 0.0,
            peak_concurrency: 0,
            denials: 0,
        });
    };
    // Each lease: (group key, start, end).
    let mut starts: HashMap<LeaseKey, (String, DateTime<Utc>)> = HashMap::new();
    let mut spans: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for e in events {
        let k = key_of(e, by);
        match (e.event.as_str(), e.lease) {
            ("denial", _) if e.at >= from && e.at < to => {
                line(&mut lines, k.clone());
                lines.get_mut(&k).expect("inserted").denials += 1;
            }
            ("grant", Some(l)) => {
                if e.at >= from && e.at < to {
                    line(&mut lines, k.clone());
                    lines.get_mut(&k).expect("inserted").checkouts += 1;
                }
                starts.insert(l, (k, e.at.max(from)));
            }
            ("release" | "expiry" | "force_release", Some(l)) => {
                if let Some((k, start)) = starts.remove(&l) {
                    let end = e.at.min(to).max(start);
                    spans.push((k, start, end));
                }
            }
            _ => {}
        }
    }
    for (_, (k, start)) in starts {
        spans.push((k, start, open_end.max(start)));
    }
    // Seat-hours and the peak: a sweep over starts (+1) and ends (-1) per
    // group; an end sorts before a start at the same instant.
    let mut edges: HashMap<String, Vec<(DateTime<Utc>, i64)>> = HashMap::new();
    for (k, start, end) in spans {
        if end <= start {
            continue;
        }
        line(&mut lines, k.clone());
        let l = lines.get_mut(&k).expect("inserted");
        l.seat_hours += (end - start).num_microseconds().unwrap_or(i64::MAX) as f64 / 3.6e9;
        let ev = edges.entry(k).or_default();
        ev.push((start, 1));
        ev.push((end, -1));
    }
    for (k, mut ev) in edges {
        ev.sort();
        let (mut cur, mut peak) = (0i64, 0i64);
        for (_, d) in ev {
            cur += d;
            peak = peak.max(cur);
        }
        if let Some(l) = lines.get_mut(&k) {
            l.peak_concurrency = peak.max(0) as u64;
        }
    }
    lines.into_values().collect()
}

/// A report bound as given: RFC 3339 (`2026-01-31T12:00:00Z`) or a date
/// (`2026-01-31`, midnight UTC).
pub fn parse_time(what: &str, s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "usage report {what} '{}': expected a date (2026-01-31) or an RFC 3339 time (2026-01-31T12:00:00Z)",
        s.chars().take(40).collect::<String>()
    ))
}

/// How a report is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFormat {
    Table,
    Csv,
    Json,
}

impl std::str::FromStr for UsageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            _ => Err(format!(
                "usage report format '{}': expected table, csv or json",
                s.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// A CSV field: quoted when it holds a separator, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The report as CSV (header line first) or as an aligned text table,
/// `by` naming the first column. Seat-hours are written with 4 decimals.
pub fn render(lines: &[UsageLine], by: &str, format: UsageFormat) -> String {
    let rows: Vec<[String; 5]> = lines
        .iter()
        .map(|l| {
            [
                l.key.clone(),
                l.checkouts.to_string(),
                format!("{:.4}", l.seat_hours),
                l.peak_concurrency.to_string(),
                l.denials.to_string(),
            ]
        })
        .collect();
    let head = [by, "checkouts", "seat_hours", "peak_concurrency", "denials"];
    let mut out = String::new();
    match format {
        UsageFormat::Json => {
            out = serde_json::to_string_pretty(lines).unwrap_or_default();
            out.push('\n');
        }
        UsageFormat::Csv => {
            out.push_str(&head.join(","));
            out.push('\n');
            for r in &rows {
                let f: Vec<String> = r.iter().map(|v| csv_field(v)).collect();
                out.push_str(&f.join(","));
                out.push('\n');
            }
        }
        UsageFormat::Table => {
            let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
            for r in &rows {
                for (i, v) in r.iter().enumerate() {
                    w[i] = w[i].max(v.chars().count());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut s = String::new();
                for (i, c) in cells.iter().enumerate() {
                    let pad = w[i].saturating_sub(c.chars().count());
                    if i == 0 {
                        s.push_str(c);
                        s.push_str(&" ".repeat(pad));
                    } else {
                        s.push_str("  ");
                        s.push_str(&" ".repeat(pad));
                        s.push_str(c);
                    }
                }
                s.trim_end().to_string() + "\n"
            };
            out.push_str(&line(head.to_vec()));
            for r in &rows {
                out.push_str(&line(r.iter().map(String::as_str).collect()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn ev(at: i64, event: &str, gen: i64) -> UsageEvent {
        UsageEvent {
            id: 0,
            at: t(at),
            event: event.into(),
            feature: "cad".into(),
            lease: (event != "denial").then_some((1, 1, gen, 7)),
            identity: Some("id1".into()),
            user: Some("ann".into()),
            host: Some("h".into()),
            address: None,
            instance: None,
            reason: None,
        }
    }

    #[test]
    fn seat_hours_and_peak_follow_the_leases() {
        // Two overlapping leases for an hour each, one denial; a lease
        // still open at `to` counts until `to`.
        let mut a = ev(0, "grant", 1);
        a.lease = Some((1, 1, 1, 1));
        let mut a_end = ev(3600, "release", 1);
        a_end.lease = Some((1, 1, 1, 1));
        let mut b = ev(1800, "grant", 1);
        b.lease = Some((1, 2, 1, 2));
        let mut b_end = ev(5400, "expiry", 1);
        b_end.lease = Some((1, 2, 1, 2));
        let mut c = ev(7200, "grant", 2);
        c.lease = Some((1, 1, 2, 3));
        let d = ev(7300, "denial", 0);
        let r = report(
            &[a, b, a_end, b_end, c, d],
            t(0),
            t(9000),
            t(99_999),
            UsageBy::Feature,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].checkouts, 3);
        assert_eq!(r[0].denials, 1);
        assert_eq!(r[0].peak_concurrency, 2);
        assert!((r[0].seat_hours - 2.5).abs() < 1e-9, "{}", r[0].seat_hours);
    }
}
