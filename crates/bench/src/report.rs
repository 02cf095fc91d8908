//! The results as a table, JSON and docs/benchmarks.md.

use serde_json::{json, Value};

use crate::galera::TARGET as GALERA;
use crate::scenarios::{Measured, Results};

const HEADER: &str = "scenario          target                                     clients     ops/s    p50 ms   p95 ms   p99 ms   max ms  errors  srv CPU    ms/op  srv RSS MB";

/// One row's figures, as text, in table order (after scenario and target).
fn cells(m: &Measured) -> [String; 10] {
    let (cpu, per_op, rss) = m
        .server
        .as_ref()
        .map_or(("-".into(), "-".into(), "-".into()), |s| {
            (
                format!("{:.2}", s.cpu_cores),
                cpu_ms_per_op(m).map_or("-".into(), |c| format!("{c:.3}")),
                format!("{:.1}", s.rss_max_mb),
            )
        });
    [
        m.clients.to_string(),
        format!("{:.0}", m.stats.per_second()),
        format!("{:.2}", m.stats.p50_ms),
        format!("{:.2}", m.stats.p95_ms),
        format!("{:.2}", m.stats.p99_ms),
        format!("{:.2}", m.stats.max_ms),
        m.stats.errors.to_string(),
        cpu,
        per_op,
        rss,
    ]
}

fn line(m: &Measured) -> String {
    let c = cells(m);
    format!(
        "{:<17} {:<42} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>11}",
        m.scenario, m.target, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
    )
}

pub fn print_row(m: &Measured) {
    println!("{}", line(m));
    if let Some(e) = &m.stats.first_error {
        println!("    first error: {e}");
    }
    if let Some(c) = &m.conflicts {
        println!(
            "    certification conflicts: {} retried by floatlm ({} per 1,000 operations), {} counted by Galera",
            count(c.floatlm),
            per_thousand(c.floatlm, m.stats.ops),
            count(c.wsrep)
        );
    }
}

fn count(n: Option<u64>) -> String {
    n.map_or("?".into(), |n| n.to_string())
}

/// Conflicts per 1,000 operations.
fn per_thousand(n: Option<u64>, ops: u64) -> String {
    match n {
        Some(n) if ops > 0 => format!("{:.1}", 1000.0 * n as f64 / ops as f64),
        _ => "-".into(),
    }
}

/// One Galera row beside the single-server ones.
struct GaleraRatio<'a> {
    row: &'a Measured,
    per_second: f64,
    /// Against "3 instances, NGINX" on one server.
    vs_three: Option<f64>,
    /// Against "1 instance".
    vs_one: Option<f64>,
}

/// The Galera rows (both writer layouts) beside the single-server ones.
fn galera_ratios(r: &Results) -> Vec<GaleraRatio<'_>> {
    r.rows
        .iter()
        .filter(|m| m.target.starts_with(GALERA))
        .map(|m| {
            let g = m.stats.per_second();
            let vs = |t: &str| {
                r.find(m.scenario, t)
                    .map(|s| s.stats.per_second())
                    .filter(|s| *s > 0.0)
                    .map(|s| g / s)
            };
            GaleraRatio {
                row: m,
                per_second: g,
                vs_three: vs("3 instances, NGINX"),
                vs_one: vs("1 instance"),
            }
        })
        .collect()
}

/// `1.23x`, or `-` when there is nothing to compare with.
fn times(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}x"))
}

pub fn print_table(r: &Results) {
    println!("\n{HEADER}");
    for m in &r.rows {
        println!("{}", line(m));
    }
    for (label, value, target) in ratios(r) {
        println!("{label}: {value} (target {target})");
    }
    for g in galera_ratios(r) {
        println!(
            "{} {}: {:.0}/s, {} of 3 instances on one server, {} of 1 instance",
            g.row.target,
            g.row.scenario,
            g.per_second,
            times(g.vs_three),
            times(g.vs_one)
        );
    }
}

/// (what, measured, target) for each target of the benchmark issue.
fn ratios(r: &Results) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let per_s = |s: &str, t: &str| r.find(s, t).map(|m| m.stats.per_second());
    if let Some(db) = per_s("db_transaction", "baseline") {
        for t in ["1 instance", "3 instances"] {
            if let Some(c) = per_s("checkout", t) {
                out.push((
                    format!("checkouts/s, {t} / raw database transactions/s"),
                    format!("{:.2}x ({c:.0} / {db:.0})", c / db),
                    "1.0x".into(),
                ));
            }
            if let Some(c) = per_s("checkout_release", t) {
                out.push((
                    format!("checkout + release pairs/s (two seat operations each), {t} / raw database transactions/s"),
                    format!("{:.2}x ({c:.0} / {db:.0}; {:.2}x per seat operation)", c / db, 2.0 * c / db),
                    "(no target)".into(),
                ));
            }
        }
    }
    if let (Some(ng), Some(hb)) = (
        per_s("nginx_proxy", "baseline"),
        per_s("heartbeat", "3 instances"),
    ) {
        out.push((
            "heartbeats/s through NGINX / NGINX proxied ceiling".into(),
            format!("{:.2}x ({hb:.0} / {ng:.0})", hb / ng),
            "0.8x".into(),
        ));
    }
    if let Some(h) = per_s("handshake", "1 instance") {
        out.push((
            "fresh handshakes/s, one instance".into(),
            format!("{h:.0}"),
            "5000".into(),
        ));
    }
    if let (Some(live), Some(m)) = (&r.live, r.find("live_leases", "3 instances")) {
        out.push((
            format!(
                "p99 heartbeat latency, {} live leases every {:.0} s on 3 instances",
                live.leases, live.interval_s
            ),
            format!("{:.2} ms", m.stats.p99_ms),
            "< 20 ms at 100000".into(),
        ));
        let max = live.rss_per_instance_mb.iter().cloned().fold(0.0, f64::max);
        let sessions: u64 = live.sessions_per_instance.iter().sum();
        out.push((
            format!("server RSS per instance with {sessions} sessions in the cluster"),
            format!("{max:.1} MB (largest instance)"),
            "< 50 MB at 100000 sessions".into(),
        ));
    }
    out
}

impl Results {
    pub fn to_json(&self) -> Value {
        json!({
            "command": self.command,
            "quick": self.quick,
            "machine": self.machine.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "scenarios": self.rows.iter().map(|m| json!({
                "scenario": m.scenario,
                "target": m.target,
                "clients": m.clients,
                "ops": m.stats.ops,
                "seconds": m.stats.seconds,
                "ops_per_s": m.stats.per_second(),
                "p50_ms": m.stats.p50_ms,
                "p95_ms": m.stats.p95_ms,
                "p99_ms": m.stats.p99_ms,
                "max_ms": m.stats.max_ms,
                "errors": m.stats.errors,
                "first_error": m.stats.first_error,
                "server_cpu_cores": m.server.as_ref().map(|s| s.cpu_cores),
                "server_rss_max_mb": m.server.as_ref().map(|s| s.rss_max_mb),
                "server_instances": m.server.as_ref().map(|s| s.instances),
                "conflicts_retried": m.conflicts.and_then(|c| c.floatlm),
                "conflicts_wsrep": m.conflicts.and_then(|c| c.wsrep),
                "machine_cpu_cores": m.cpu.map(|c| json!({
                    "floatlm": c.floatlm,
                    "database": c.database,
                    "nginx": c.nginx,
                    "load_generator": c.load,
                    "other_busy": c.other,
                    "idle": c.idle,
                })),
            })).collect::<Vec<_>>(),
            "live_leases": self.live.as_ref().map(|l| json!({
                "leases": l.leases,
                "interval_s": l.interval_s,
                "setup_s": l.setup_s,
                "rss_per_instance_mb": l.rss_per_instance_mb,
                "sessions_per_instance": l.sessions_per_instance,
                "answered_from_read": l.renewals.0,
                "extensions_written": l.renewals.1,
            })),
            "ratios": ratios(self).into_iter().map(|(what, value, target)| json!({
                "what": what, "measured": value, "target": target,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Server CPU per operation, in milliseconds, where it was measured.
pub(crate) fn cpu_ms_per_op(m: &Measured) -> Option<f64> {
    let s = m.server.as_ref()?;
    let rate = m.stats.per_second();
    (rate > 0.0).then(|| s.cpu_cores * 1000.0 / rate)
}

/// docs/benchmarks.md, generated.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str("<!-- Generated by scripts/bench.sh (crates/bench); edit the generator, not this file. -->\n\n");
    md.push_str("Every figure below was measured in one run, on one machine, next to two\n");
    md.push_str("baselines from the same run: the database's own ceiling for one seat\n");
    md.push_str("transaction per operation (sqlx: `BEGIN; SELECT … FOR UPDATE; UPDATE;\n");
    md.push_str("COMMIT` on a slot table, random rows, READ COMMITTED) and NGINX's own\n");
    md.push_str("ceiling proxying a trivial upstream with the shipped consistent-hash\n");
    md.push_str("configuration. All traffic is on loopback.\n\n");
    md.push_str("## Reproduce\n\n```sh\n");
    md.push_str(if r.quick {
        "scripts/bench.sh --quick   # this run: under three minutes\nscripts/bench.sh           # the full run (100,000 live leases)\n"
    } else {
        "scripts/bench.sh           # this run (100,000 live leases)\nscripts/bench.sh --quick   # under three minutes\n"
    });
    md.push_str("```\n\n");
    md.push_str(&format!("Exact command of this run: `{}`\n\n", r.command));
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in &r.machine {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str("\n## Results\n\n");
    md.push_str("| scenario | target | clients | ops/s | p50 ms | p95 ms | p99 ms | max ms | errors | server CPU (cores) | server CPU ms/op | server RSS MB |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in &r.rows {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            m.scenario,
            m.target,
            cells(m).join(" | ")
        ));
    }
    md.push_str(
        "\nScenarios: `handshake` = a fresh Noise handshake per operation (new session);\n",
    );
    md.push_str("`query` = one sealed `info` request; `checkout` = one sealed login with a new\n");
    md.push_str("request id that takes a new seat (never released during the run; one seat\n");
    md.push_str("operation, like one baseline transaction); `checkout_release` = the client\n");
    md.push_str("library's `checkout` then `release`, one operation per pair (two seat\n");
    md.push_str(
        "operations); `heartbeat` = one sealed heartbeat renewing one lease, spread over\n",
    );
    md.push_str("many sessions that each hold a lease; `live_leases` = an open-loop run at a\n");
    md.push_str("fixed rate (every lease heartbeats once per interval), latency counted from\n");
    md.push_str("the scheduled send time. Server CPU is the instances' own CPU time over the\n");
    md.push_str("wall time (not the database's or NGINX's).\n\n");
    md.push_str(&errors_note(
        r.rows.iter().filter(|m| !m.target.starts_with(GALERA)),
    ));
    if let Some(l) = &r.live {
        md.push_str(&format!(
            "Live leases: {} sessions each holding one lease were opened through NGINX in {:.1} s;\n\
             sessions per instance {:?}; RSS per instance after the run {} MB. During the run the\n\
             instances wrote {} lease extensions and answered {} heartbeats from a check read (every\n\
             heartbeat reads its lease's row; the bench runs with `lease_hold` = `lease_ttl` + 3\n\
             heartbeat intervals: one extension in three heartbeats at steady state, as with the\n\
             default settings; leases granted early in the set-up are extended first).\n\n",
            l.leases,
            l.setup_s,
            l.sessions_per_instance,
            l.rss_per_instance_mb
                .iter()
                .map(|m| format!("{m:.1}"))
                .collect::<Vec<_>>()
                .join(" / "),
            l.renewals.1,
            l.renewals.0
        ));
    }
    md.push_str("## Against the targets\n\n| what | measured | target |\n|---|---|---|\n");
    for (what, value, target) in ratios(r) {
        md.push_str(&format!("| {what} | {value} | {target} |\n"));
    }
    md.push('\n');
    md.push_str(&cpu_section(r));
    md.push_str(&galera_section(r));
    md.push_str(&analysis(r));
    md.push_str(FINDINGS);
    md.push_str(NOTES);
    md.push('\n');
    md.push_str(USAGE_NOTES);
    md
}

/// CPU microseconds per operation of one group: `cores` spent at `per_s`.
fn us_per_op(cores: f64, per_s: f64) -> f64 {
    if per_s > 0.0 {
        cores * 1e6 / per_s
    } else {
        0.0
    }
}

/// The whole machine's CPU per operation, by who spent it, for every row.
fn cpu_section(r: &Results) -> String {
    let rows: Vec<&Measured> = r.rows.iter().filter(|m| m.cpu.is_some()).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## Where the CPU went\n\n\
         The whole machine's CPU during each scenario, in microseconds per operation, by\n\
         process (from /proc): the floatlm instances; the database server(s); NGINX; the load\n\
         generator (which also serves the trivial upstreams of the NGINX baseline); other busy\n\
         time (the kernel's network work not charged to a process, interrupts, other\n\
         processes); and idle. Busy + idle is the cores' whole time.\n\n\
         | scenario | target | ops/s | floatlm | database | NGINX | load generator | other busy | idle |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in rows {
        let (c, rate) = (m.cpu.expect("filtered"), m.stats.per_second());
        let us = |cores: f64| format!("{:.0}", us_per_op(cores, rate));
        md.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            m.scenario,
            m.target,
            rate,
            us(c.floatlm),
            us(c.database),
            us(c.nginx),
            us(c.load),
            us(c.other),
            us(c.idle),
        ));
    }
    md.push('\n');
    md
}

/// The Galera scenario against the single server, with its conflict rate.
fn galera_section(r: &Results) -> String {
    if !r.rows.iter().any(|m| m.target.starts_with(GALERA)) {
        return String::new();
    }
    let mut md = String::from("## Galera\n\n");
    md.push_str(
        r#"Three instances, one per node of a 3-node MariaDB Galera cluster that the bench
starts on this machine (own ports and data directories on loopback, galera-4,
`wsrep_sync_wait = 1` set by floatlm), each listing all three nodes with its own
first, behind the same NGINX configuration (consistent hash on the client's id, so
a client stays on one instance and one node while the others write the same
features through theirs). Conflicts: transaction attempts that failed
certification (or a deadlock) and were retried whole, from the instances'
`floatlm_db_conflicts_total{cause="conflict"}`; Galera's own count
(`wsrep_local_cert_failures + wsrep_local_bf_aborts` on the nodes) beside it. A
`checkout_release` operation is two requests. "node 0 only": the same three
instances on a fresh database, each listing the nodes in the same order, so every
grant is written through one node (what sticking grants to one writer node would
gain); the other nodes stay their failover nodes.

"#,
    );
    md.push_str("| writers | scenario | ops/s | against 3 instances, one server | against 1 instance | p50 ms | p99 ms | errors | conflicts retried | per 1,000 ops | Galera's count |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for g in galera_ratios(r) {
        let m = g.row;
        let writers = if m.target == crate::galera::ONE_WRITER {
            "node 0 only"
        } else {
            "each its own node"
        };
        let c = m.conflicts.unwrap_or_default();
        md.push_str(&format!(
            "| {writers} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            m.scenario,
            g.per_second,
            times(g.vs_three),
            times(g.vs_one),
            m.stats.p50_ms,
            m.stats.p99_ms,
            m.stats.errors,
            count(c.floatlm),
            per_thousand(c.floatlm, m.stats.ops),
            count(c.wsrep)
        ));
    }
    md.push('\n');
    md.push_str(&errors_note(
        r.rows.iter().filter(|m| m.target.starts_with(GALERA)),
    ));
    md
}

/// What the rows that had errors failed with (their first error), and why
/// where the reason is known.
fn errors_note<'r>(rows: impl Iterator<Item = &'r crate::scenarios::Measured>) -> String {
    let mut md = String::new();
    for m in rows.filter(|m| m.stats.errors > 0) {
        let first: String = m
            .stats
            .first_error
            .as_deref()
            .unwrap_or("(not recorded)")
            .chars()
            .take(160)
            .collect::<String>()
            .replace(['\n', '|', '`'], " ");
        md.push_str(&format!(
            "- Errors of `{}` ({}): {}, the first: `{first}`",
            m.scenario, m.target, m.stats.errors
        ));
        if first.contains("session_unknown") {
            md.push_str(
                ". NGINX took an instance out (one failed request does, `max_fails=1`: a \
                 1 s timeout or a 503) and the clients hashed to it landed on another \
                 instance that does not know their sessions; the client library resumes \
                 there with its ticket, the bench's virtual clients do not",
            );
        }
        md.push_str(".\n");
    }
    if !md.is_empty() {
        md.push('\n');
    }
    md
}

/// The arithmetic of the heartbeat target: the CPU per heartbeat the two
/// cores have at 0.8x of NGINX's ceiling, against what the same run spent.
fn heartbeat_budget(r: &Results, ceiling: f64) -> String {
    let (Some(hb), Some(q)) = (
        r.find("heartbeat", "3 instances"),
        r.find("query", "3 instances"),
    ) else {
        return String::new();
    };
    let (Some(c), Some(qc)) = (hb.cpu, q.cpu) else {
        return String::new();
    };
    let rate = hb.stats.per_second();
    let all = c.floatlm + c.database + c.nginx + c.load + c.other + c.idle;
    let budget = us_per_op(all, 0.8 * ceiling);
    let us = |cores: f64| us_per_op(cores, rate);
    format!(
        "  The arithmetic: at 0.8x of the ceiling ({:.0}/s) the cores have {:.0} µs of CPU per \
         heartbeat, busy and idle together. In this run NGINX and the load generator alone spent \
         {:.0} µs per heartbeat, the kernel's network work and the rest {:.0}, MariaDB {:.0} and the \
         instances {:.0} ({:.0} µs for a sealed `info` through NGINX, which reads no database); \
         {:.0} µs stayed idle.\n",
        0.8 * ceiling,
        budget,
        us(c.nginx + c.load),
        us(c.other),
        us(c.database),
        us(c.floatlm),
        us_per_op(qc.floatlm, q.stats.per_second()),
        us(c.idle),
    )
}

/// Per missed target: by how much, and the measured cost behind it.
fn analysis(r: &Results) -> String {
    let mut out = String::from(
        "## Missed targets, measured

",
    );
    let per_s = |s: &str, t: &str| r.find(s, t).map(|m| m.stats.per_second());
    let cpu = |s: &str, t: &str| r.find(s, t).and_then(cpu_ms_per_op);
    for t in ["1 instance", "3 instances"] {
        if let (Some(db), Some(c)) = (per_s("db_transaction", "baseline"), per_s("checkout", t)) {
            if c < db {
                out.push_str(&format!(
                    "- **Checkouts, {t}** reach {:.0}% of the raw transaction rate. The instances spend {} ms \
                     of CPU per checkout (envelope crypto, HTTP, JSON; the database work is shared by a \
                     batch); the rest is MariaDB's own CPU and commit latency, on the same two cores as the \
                     load generator.\n",
                    100.0 * c / db,
                    cpu("checkout", t).map_or("?".into(), |v| format!("{v:.3}"))
                ));
            }
        }
    }
    if let (Some(ng), Some(hb)) = (
        per_s("nginx_proxy", "baseline"),
        per_s("heartbeat", "3 instances"),
    ) {
        if hb < 0.8 * ng {
            out.push_str(&format!(
                "- **Heartbeats through NGINX** reach {:.0}% of NGINX's ceiling with a trivial upstream. \
                 Each costs the instances {} ms of CPU (HTTP, envelope open and seal, JSON, and a share of \
                 a batched database read of the lease's row), against a trivial upstream that does none \
                 of that; NGINX, MariaDB and the load generator share the same two cores.\n",
                100.0 * hb / ng,
                cpu("heartbeat", "3 instances").map_or("?".into(), |v| format!("{v:.3}"))
            ));
            out.push_str(&heartbeat_budget(r, ng));
        }
    }
    if let Some(h) = per_s("handshake", "1 instance") {
        if h < 5000.0 {
            let c = cpu("handshake", "1 instance");
            out.push_str(&format!(
                "- **Handshakes** reach {:.0}% of 5,000/s. The instance spends {} ms of CPU on each (X25519, \
                 HKDF, unsealing the identity secret, a database read), which alone would allow about {} per \
                 second on two cores; the load generator does the client half of the same X25519 work on \
                 the same cores.\n",
                100.0 * h / 5000.0,
                c.map_or("?".into(), |v| format!("{v:.3}")),
                c.map_or("?".into(), |v| format!("{:.0}", 2000.0 / v))
            ));
        }
    }
    if let Some(m) = r.find("live_leases", "3 instances") {
        if m.stats.p99_ms >= 20.0 {
            out.push_str(&format!(
                "- **Live leases**: p99 {:.1} ms against 20 ms (p50 {:.1} ms, p95 {:.1} ms). The rate is \
                 steady, so the tail comes from moments when the three instances, NGINX, MariaDB and the \
                 load generator all want the two cores at once.\n",
                m.stats.p99_ms, m.stats.p50_ms, m.stats.p95_ms
            ));
        }
    }
    out.push('\n');
    out
}

/// What the findings of earlier runs turned out to be (measured apart).
const FINDINGS: &str = r#"## Findings of earlier runs, explained

- **Checkouts fell from ~3,000/s to ~930-1,200/s on one instance** (the
  run of 2026-11-28) with the instances nearly idle. The cause was in
  floatlm: since cf84e28 the pool's connections run with
  `eq_range_index_dive_limit = 1` (good for the heartbeats' batched
  primary-key reads), so MariaDB planned every `state = … AND feature_id IN
  (…)` read of `slots` from index statistics alone, which cannot see that
  retiring slots are rare. The check every grant batch makes for retiring
  slots (`SELECT NOW(6), EXISTS (… state = 1 …)`) then chose the primary key
  or a full index scan and read every slot of the feature: 100,000 rows per
  batch for the `checkout` scenario's feature (EXPLAIN: `PRIMARY`, 76,624
  rows estimated, `Handler_read_next` 100,000; with dives: `slots_pick`, 0
  rows). In SHOW PROCESSLIST samples during the run it was the statement seen
  most often after COMMIT (`Sending data`). Every read of slots by state now names the pick
  index (`FORCE INDEX (slots_pick)`); `tests/grant_plans.rs` counts the rows
  a grant reads (`Handler_read_*` on a MariaDB of its own: at most 1,000
  for a 20,000-seat feature; it read 20,131 rows per batch of 16 grants
  and 20,013 for one grant before, 132 and 14 after). Forcing the index was
  not enough: with one feature MariaDB then scanned the whole pick index, so
  the checks ask for `state > 0 AND state < 2` (the same slots, but no
  equality range, so MariaDB looks into the index and sees none).
  `checkout_release` moved less because its feature has 10,000 slots.
- **Errors through NGINX after the 100,000-lease scenario** (`query`:
  102,042 × 502, `checkout`: 47,170 × `session_unknown`). Reproduced
  without any live leases: `--only checkout` through NGINX gave 49,550
  `session_unknown` at 42 checkouts/s. NGINX's error log had 67 `upstream
  timed out … while reading response header` and then 36,051 `no live
  upstreams` (its 502): checkouts slowed past the shipped 1 s
  `proxy_read_timeout` by the plan above took each instance out for 5 s
  (`max_fails=1`), the sessions hashed to it landed on an instance that did
  not know them (the bench's virtual clients do not resume; the client
  library does), and with every instance out NGINX answered 502 at once.
  `info` waits for a full count of the slots table once a second per
  instance (0.45-0.6 s for 230,000 slots on this loaded machine): the
  likely cause of the `query` 502s after the live-lease scenario left
  230,000 slot rows and a busy database (not reproduced at that scale). The suspected cause, `503
  too_many_sessions` counted by NGINX as a failure, was not what happened
  here (33,900 sessions per instance against the default `max_sessions`
  100,000), but it was a real hazard and is fixed too: a full session
  table now answers 429, which the shipped configurations pass on without
  taking the instance out (nginx/README.md, *Which answers take an instance
  out*; `tests/nginx_failover.rs` checks it), and the bench gives every
  instance room for all the sessions a run opens (`--max-sessions`), so the
  sessions one scenario leaves behind (they live until `session_idle`)
  never refuse the next one's. `info` no longer waits for that full
  count: once a count takes 50 ms or more, clients get the previous counts
  at once (at most 30 s old) while the next count runs in the background,
  no sooner than ten times the last one's duration (before, the `query` scenario's p99 was about 1 s on
  a loaded machine, and every grant through the instance made the next
  `info` count again). The full run of 2026-12-07 after these fixes had no
  errors in any row through NGINX, `query` included; a run on 2026-12-08
  had 93,982 `session_unknown` in `query` again: one answer past NGINX's
  1 s timeout, then about 5 s of clients hashed elsewhere. The instances
  had had no `info` request for more than 30 s (the spared count's age
  limit), so the first one after the live-lease scenario waited for a count
  that had become slow meanwhile. Each instance now also counts when no
  client asks (`Licenses::keep_counts_warm`: a fast count each second, a
  slow one every 20 s), so it knows a count is slow before a client comes
  and holds one young enough to serve at once. A first try counted slow
  ones every ten times their duration instead: the three instances' counts
  of 230,000 slots then cost MariaDB enough that the live-lease scenario's
  p99 rose from 6-14 ms to 140 ms. The full run of 2026-12-08 with the
  20 s schedule had no errors in any row through NGINX but a live-lease
  p99 of 31 ms (target 20; 6.5-14 ms in the three runs before); the
  live-lease scenario alone, run three times right after it, gave p99
  10.7 ms (this build), 10.9 ms (two check reads in flight, as before
  0a782da) and 7.8 ms (no counting while nobody asks): the counts cost the
  tail a few milliseconds, and the rest of the 31 ms is this loaded
  machine's spread between runs.
- **One heartbeat check read in flight per instance, not two** (0a782da):
  while one read runs, the heartbeats arriving wait for the next, so reads
  are fewer and larger. Three alternating rounds of `--only heartbeat
  --seconds 10`, two reads in flight against one: through NGINX 8,437 /
  11,156 / 9,411 against 10,847 / 11,920 / 11,269 heartbeats/s; one
  instance direct 15,705 / 16,062 / 19,788 against 21,569 / 24,338 /
  21,187; p99 lower with one read in every round. The full runs do not
  show it as clearly (heartbeats through NGINX 10,028-10,469/s with two
  reads on 2026-12-08, 10,047/s with one): on this machine the
  run-to-run spread is as large as the gain.
- **The restructuring (issue 14) against f6f7d48** (the comparison below,
  three rounds, re-measured on 2026-12-07 after migration 0012). Earlier
  sessions at load 12-13 had `handshake` (0.84x, 0.88x) and `query`
  (0.83x, 0.53x) below the old binary; on a quieter machine the structure
  alone (no usage trigger) is within noise for `handshake`, `query`,
  `checkout_release` and `heartbeat` (0.91x-1.10x, the rounds overlap) and
  `checkout` is faster beyond noise (2.49x, the plan fix above, which
  f6f7d48 did not have): no regression. The usage trigger (issue 15) costs
  seat changes (`checkout_release` 0.70x of the old binary with it). It no
  longer costs heartbeats: before migration 0012 a heartbeat's extension ran
  the trigger although it records nothing for it (`heartbeat` 0.84x with
  the trigger against 1.03x without, one quiet session earlier); guarded,
  `heartbeat` is 0.94x with and without it.

"#;

/// The usage-record cost, measured apart (scripts/bench-usage.sh).
const USAGE_NOTES: &str = r#"## Usage records

What writing usage records costs per checkout, measured on one release
build against one instance on MariaDB (`scripts/bench-usage.sh`:
`floatlm-bench --identity … --only checkout --seconds 8 --leases 10000`,
64 clients, each run from freshly freed slots), first with the usage
trigger, then after `DROP TRIGGER usage_on_slots` on the same database,
then with it re-created; one session, the machine shared with other
builds (load average 4-7 on 2 cores):

| run | checkouts/s | p50 ms | p95 ms | p99 ms |
|---|---|---|---|---|
| with usage records | 1,796 | 35.0 | 54.6 | 69.3 |
| without (trigger dropped) | 2,524 | 25.5 | 39.0 | 45.3 |
| with usage records again | 1,873 | 32.1 | 51.7 | 96.6 |

So about 0.15 ms more wall time per checkout at saturation on this
machine (1/1,835 s against 1/2,524 s), 26-29% fewer checkouts per second:
the trigger writes one `usage_events` row per seat event inside the slot
UPDATE (one row insert plus a feature-name lookup, per row, in MariaDB's
own CPU on the same two cores). A second session with the trigger body
written as `IF … END IF` blocks (no derived table) measured 1,907 and
2,204 checkouts/s against 2,902 without: within this machine's noise for
checkouts, where every row has an event to write. Renewals have none,
yet 0010's trigger still evaluated its three arms for every renewed row:
60,000 renewal UPDATEs (`expires_at` raised, three statements of 20,000
rows) took 0.07 s with no trigger, 4.3-4.8 s with 0010's trigger and
0.3-0.5 s with the guarded one of migration 0012 (an `IF` that is exactly
the union of the arms' conditions, so the same events are written), which
MariaDB now runs. Not yet tried: one multi-row INSERT per batch
transaction written by the instance instead of the per-row trigger.

"#;

/// Where the time goes: the parts of the analysis that do not change per run.
pub(crate) const NOTES: &str = r#"## Where the time goes

- **Every heartbeat is answered from a database read, never from memory.**
  An answer that says "you hold this lease" must stay true when another
  instance, a racing release or a restore changed the row, so each
  heartbeat waits for a read of its slot row. The reads are batched: the
  heartbeats that arrive while one read is in flight share the next one (a
  `SELECT … FROM slots … WHERE (primary key) OR …` of up to 4,000 keys,
  padded to a power of two so MariaDB prepares each size once per
  connection). The database keeps a lease `lease_hold` (twice `lease_ttl` by
  default); while at least half a TTL of it is left the answer is given at
  once and the lease is extended in the background; with less left the
  heartbeat waits for the extension. A client heartbeating every third of
  its TTL costs one write per TTL. The extensions are group-committed: one
  `UPDATE … SET expires_at = GREATEST(…) WHERE (primary key and lease
  nonce and holder) OR …` per batch, skipping rows another transaction has
  locked (`SKIP LOCKED`; those heartbeats are answered from their read).
- **What the read costs.** Against version 0.1, which answered most
  heartbeats from the expiry it remembered (and so could promise a seat a
  release on another instance had already freed; issue 11), measured on this
  machine back to back in one session: 0.1 reached 31,775 heartbeats/s on
  one instance and 17,595/s through NGINX (0.025 ms of server CPU each);
  0.2 reaches 11,000-15,000/s direct and 6,000-8,700/s through NGINX
  (0.047 ms of server CPU each, MariaDB at about 60% of a core for the
  reads). A realistic client heartbeats every few seconds, so one instance
  still serves tens of thousands of live leases per core.
- **Grants and releases are group-committed.** Concurrent logins queue in
  each instance; one batch at a time claims all their request ids with one
  INSERT, locks as many free slots as it needs with one `SELECT … LIMIT k
  FOR UPDATE SKIP LOCKED`, takes them with one `UPDATE … CASE slot_no …`
  whose WHERE names every slot's `lease_gen`, and records the grants with
  one upsert: eight statements for the whole batch. Releases share one
  UPDATE per batch the same way. One batch in flight per instance measured
  best (2, 4 and 8 concurrent batches were 20-150% slower with three
  instances: more, smaller transactions).
- **One machine.** The load generator, the instances, NGINX and MariaDB
  share the same cores; server CPU per operation (the `ms/op` column) is the
  figure that carries over to bigger machines.
- **Handshakes** cost two X25519 operations per session and an identity
  lookup served from the instance's identity cache (a database read and the
  unsealing of the identity's secret only when the entry is missing or
  older than its short TTL; revocations reach the cache at once on the
  revoking instance and within one cluster heartbeat elsewhere).
- **Profiles** (perf on this machine, during these scenarios):
  - *Checkout batches* (three instances, timed per statement inside the
    batch transaction): BEGIN 0.9 ms, request-id claim 0.7, feature read
    0.7, free-slot pick with `SKIP LOCKED` 2.4, clock and retiring check
    0.8, slot UPDATE 1.2, request upsert 0.9, COMMIT 1.3 (one fsync, about
    1 ms on this disk): 8.8 ms for a batch of 7.5 logins on average. Round
    trips, not rows, are the cost: every statement waits for a context
    switch into MariaDB on two busy cores. Fewer statements per batch
    (folding the feature read into the pick, and the claim into one
    multi-statement round trip) is what is left to gain.
  - *Heartbeat path* (floatlm instance, `perf record`): flat; allocation
    (malloc/free about 10%), kernel TCP send/receive, hyper's HTTP/1 parse
    and encode, the envelope's AEAD, JSON. No single hot spot; mimalloc
    instead of the system allocator measured no faster.
  - *Live leases* (measured on 0.1): with renewals written in line (the
    heartbeat waiting) p99 was 16 s when every heartbeat wrote and 569 ms
    when one in three did; answered entirely from memory it was 4 ms; 0.2
    adds the batched read to every heartbeat. Background extensions
    through one small batch at a time (200 leases) keep MariaDB's load
    smooth: p99 2.6 s with the renewal batches of 4,000 leases, 23 ms with
    500, 9 ms with 200 (same 100,000-lease run, measured back to back).
"#;
