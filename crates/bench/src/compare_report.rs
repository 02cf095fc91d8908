//! The comparison (`--compare`) as a table, JSON and its section of
//! docs/benchmarks.md (between markers, which a full run keeps).

use serde_json::{json, Value};

use crate::compare::{median, Comparison};
use crate::report::cpu_ms_per_op as cpu_ms;
use crate::scenarios::Measured;

pub(crate) const BEGIN: &str =
    "<!-- comparison: written by floatlm-bench --compare (scripts/bench-compare.sh); a full run keeps it -->";
pub(crate) const END: &str = "<!-- end of comparison -->";

fn ops(m: &Measured) -> Option<f64> {
    Some(m.stats.per_second())
}
fn p99(m: &Measured) -> Option<f64> {
    (m.stats.ops > 0).then_some(m.stats.p99_ms)
}
fn errors(m: &Measured) -> Option<f64> {
    Some(m.stats.errors as f64)
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// "median (lowest-highest)" of one variant's rounds.
fn spread(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    match median(v) {
        None => "-".into(),
        Some(m) if v.len() > 1 => {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} ({}-{})", fmt(m), fmt(lo), fmt(hi))
        }
        Some(m) => fmt(m),
    }
}

fn ratio(c: &Comparison, v: usize, base: usize, s: &str) -> Option<f64> {
    let a = median(&c.values(v, s, ops))?;
    let b = median(&c.values(base, s, ops))?;
    (b > 0.0).then(|| a / b)
}

/// What the rounds say about variant `v` against the old binary in `s`:
/// a difference counts only when every round of one is beyond every round
/// of the other, and one round each cannot show that.
pub(crate) fn verdict(c: &Comparison, v: usize, s: &str) -> Option<String> {
    let new = c.values(v, s, ops);
    let old = c.values(0, s, ops);
    if new.is_empty() || old.is_empty() {
        return None;
    }
    let r = ratio(c, v, 0, s)?;
    if new.len() < 2 || old.len() < 2 {
        return Some(format!(
            "{r:.2}x in one round: no verdict (run --rounds 2 or more)"
        ));
    }
    let max = |x: &[f64]| x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = |x: &[f64]| x.iter().copied().fold(f64::INFINITY, f64::min);
    Some(if max(&new) < min(&old) {
        format!("slower beyond noise ({r:.2}x; every round below every round of the old binary)")
    } else if min(&new) > max(&old) {
        format!("faster beyond noise ({r:.2}x; every round above every round of the old binary)")
    } else {
        format!("within noise ({r:.2}x; the rounds overlap)")
    })
}

pub(crate) fn print(c: &Comparison) {
    println!(
        "\ncomparison: median of {} rounds (lowest-highest), ops/s",
        c.rounds
    );
    print!("{:<17}", "scenario");
    for v in &c.variants {
        print!(" {:>30}", v.label);
    }
    println!(" {:>8} {:>10}", "new/old", "no-trig/old");
    for &s in &c.scenarios {
        print!("{s:<17}");
        for v in 0..c.variants.len() {
            print!(" {:>30}", spread(&c.values(v, s, ops), thousands));
        }
        let r = |v| ratio(c, v, 0, s).map_or("-".into(), |r| format!("{r:.2}"));
        println!(" {:>8} {:>10}", r(1), r(2));
    }
    for &s in &c.scenarios {
        if let Some(v) = verdict(c, 2, s) {
            println!("{s}: new without the usage trigger against old: {v}");
        }
    }
}

pub(crate) fn to_json(c: &Comparison) -> Value {
    json!({
        "command": c.command,
        "scenarios": c.scenarios,
        "rounds": c.rounds,
        "seconds": c.seconds,
        "clients": c.clients,
        "leases": c.leases,
        "loadavg": [c.load.0, c.load.1],
        "machine": c.machine.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "order": c.order,
        "variants": c.variants.iter().enumerate().map(|(i, v)| json!({
            "label": v.label,
            "binary": v.bin.display().to_string(),
            "version": v.version,
            "usage_trigger": v.usage_trigger,
            "runs": c.runs[i].iter().map(|round| round.iter().map(|m| json!({
                "scenario": m.scenario,
                "ops_per_s": m.stats.per_second(),
                "p50_ms": m.stats.p50_ms,
                "p99_ms": m.stats.p99_ms,
                "errors": m.stats.errors,
                "first_error": m.stats.first_error,
                "server_cpu_ms_per_op": cpu_ms(m),
            })).collect::<Vec<_>>()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The section of docs/benchmarks.md, markers included.
pub(crate) fn markdown(c: &Comparison) -> String {
    let mut md = format!("{BEGIN}\n## No regression against an older build\n\n");
    let v = &c.variants;
    md.push_str(&format!(
        "The single-instance scenarios on MariaDB, run in one session against \
         `{}` ({}) and this build ({}), \
         {} rounds, each variant on a fresh database, in the order {} and then \
         reversed, so a slow stretch of the machine hits every variant alike. \
         `{}` is this build with `DROP TRIGGER usage_on_slots` run on its database \
         after start: the usage records (issue 15) cost checkouts (*Usage \
         records*, below) and builds before them have none, so that column \
         compares the structure alone. {} s per scenario, {} clients, {} held leases for \
         `heartbeat`; median of the rounds, lowest-highest in brackets. Load \
         average (1, 5, 15 min) {} before and {} after: the machine is shared, \
         and a difference counts only when every round of one variant is beyond \
         every round of the other.\n\n\
         Exact command: `{}`\n\n",
        v[0].label,
        v[0].version,
        v[1].version,
        c.rounds,
        v.iter()
            .map(|x| format!("`{}`", x.label))
            .collect::<Vec<_>>()
            .join(", "),
        v[2].label,
        c.seconds,
        c.clients,
        c.leases,
        c.load.0,
        c.load.1,
        c.command,
    ));
    md.push_str(&format!(
        "| scenario | {} ops/s | {} ops/s | {} ops/s | new / old | no trigger / old |\n\
         |---|---:|---:|---:|---:|---:|\n",
        v[0].label, v[1].label, v[2].label
    ));
    for &s in &c.scenarios {
        let r = |x| ratio(c, x, 0, s).map_or("-".into(), |r| format!("{r:.2}"));
        md.push_str(&format!(
            "| {s} | {} | {} | {} | {} | {} |\n",
            spread(&c.values(0, s, ops), thousands),
            spread(&c.values(1, s, ops), thousands),
            spread(&c.values(2, s, ops), thousands),
            r(1),
            r(2)
        ));
    }
    md.push_str(&format!(
        "\n| scenario | server CPU ms/op: {} / {} / {} | p99 ms: {} / {} / {} | errors (all rounds) |\n\
         |---|---:|---:|---:|\n",
        v[0].label, v[1].label, v[2].label, v[0].label, v[1].label, v[2].label
    ));
    for &s in &c.scenarios {
        let m = |x: usize, f: fn(&Measured) -> Option<f64>, d: usize| {
            median(&c.values(x, s, f)).map_or("-".into(), |m| format!("{m:.d$}"))
        };
        let errs: f64 = (0..v.len()).flat_map(|x| c.values(x, s, errors)).sum();
        md.push_str(&format!(
            "| {s} | {} / {} / {} | {} / {} / {} | {errs:.0} |\n",
            m(0, cpu_ms, 3),
            m(1, cpu_ms, 3),
            m(2, cpu_ms, 3),
            m(0, p99, 1),
            m(1, p99, 1),
            m(2, p99, 1),
        ));
    }
    md.push_str("\nPer scenario, this build without the usage trigger against the old binary:\n\n");
    for &s in &c.scenarios {
        if let Some(verdict) = verdict(c, 2, s) {
            md.push_str(&format!("- `{s}`: {verdict}\n"));
        }
    }
    md.push_str(&format!("\n{END}\n"));
    md
}

/// `doc` with its comparison section (between the markers) replaced by
/// `section`; without one, `section` goes before "## Where the time goes"
/// (or at the end).
pub(crate) fn splice(doc: &str, section: &str) -> String {
    if let (Some(a), Some(b)) = (doc.find(BEGIN), doc.find(END)) {
        if a < b {
            let after = &doc[b + END.len()..];
            return format!("{}{}{}", &doc[..a], section.trim_end_matches('\n'), after);
        }
    }
    match doc.find("## Where the time goes") {
        Some(i) => format!("{}{section}\n{}", &doc[..i], &doc[i..]),
        None => format!("{doc}\n{section}"),
    }
}

/// A full run's `generated` page with the comparison section of the
/// `previous` one: the comparison is measured apart, so the last one stays.
pub(crate) fn keep_section(generated: &str, previous: &str) -> String {
    match section_of(previous) {
        Some(section) => splice(generated, section),
        None => generated.to_string(),
    }
}

/// The comparison section of `doc`, markers included, if it has one.
pub(crate) fn section_of(doc: &str) -> Option<&str> {
    let a = doc.find(BEGIN)?;
    let b = doc[a..].find(END)? + a;
    Some(&doc[a..b + END.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place() {
        let doc = format!("# B\n\n{BEGIN}\nold\n{END}\n\n## Where the time goes\n");
        let new = format!("{BEGIN}\nnew\n{END}\n");
        let out = splice(&doc, &new);
        assert_eq!(
            out,
            format!("# B\n\n{BEGIN}\nnew\n{END}\n\n## Where the time goes\n")
        );
        assert_eq!(section_of(&out), Some(&new[..new.len() - 1]));
        let bare = "# B\n\n## Where the time goes\n";
        assert!(splice(bare, &new).contains(&format!("{END}\n\n## Where")));
    }

    #[test]
    fn a_full_run_keeps_the_last_comparison() {
        let section = format!("{BEGIN}\n## Old against new\n\n| a | b |\n{END}");
        let previous =
            format!("# B\n\nold figures\n\n{section}\n\n## Where the time goes\n\nold notes\n");
        let generated = "# B\n\nnew figures\n\n## Where the time goes\n\nnew notes\n";
        let out = keep_section(generated, &previous);
        assert_eq!(
            out,
            format!("# B\n\nnew figures\n\n{section}\n## Where the time goes\n\nnew notes\n")
        );
        assert_eq!(section_of(&out), Some(section.as_str()));
        // Kept again by the next run, unchanged.
        assert_eq!(keep_section(generated, &out), out);
        // Nothing to keep, or no heading to put it before.
        assert_eq!(keep_section(generated, "# B\n"), generated);
        assert!(splice("# B\n", &section).ends_with(&format!("\n{section}")));
    }

    #[test]
    fn the_page_has_a_section_where_the_generator_puts_it() {
        let page = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/benchmarks.md"
        ))
        .expect("docs/benchmarks.md");
        let section = section_of(&page).expect("a comparison section");
        let end = page.find(section).expect("in the page") + section.len();
        assert!(page[end..]
            .trim_start()
            .starts_with("## Where the time goes"));
        assert!(crate::report::NOTES.starts_with("## Where the time goes"));
    }

    /// Two rounds of three variants: old 100 and 110, new 120 and 130 in
    /// `checkout`; in `query` new overlaps old.
    fn two_rounds() -> Comparison {
        let m = |scenario: &'static str, ops: u64| Measured {
            scenario,
            target: String::new(),
            clients: 1,
            stats: crate::load::Stats {
                ops,
                seconds: 1.0,
                p99_ms: 2.0,
                ..Default::default()
            },
            server: None,
            conflicts: None,
            cpu: None,
        };
        let run = |c: u64, q: u64| vec![m("checkout", c), m("query", q)];
        let variant = |label: &str| crate::compare::Variant {
            label: label.into(),
            bin: "/x/floatlm".into(),
            version: "floatlm 0.2.0".into(),
            usage_trigger: true,
        };
        Comparison {
            command: "floatlm-bench --compare /x/floatlm".into(),
            scenarios: vec!["checkout", "query"],
            rounds: 2,
            seconds: 0.5,
            clients: 1,
            leases: 10,
            machine: Vec::new(),
            load: ("1.00 1.00 1.00".into(), "1.00 1.00 1.00".into()),
            variants: vec![
                variant("f6f7d48"),
                variant("new"),
                variant("new, no usage trigger"),
            ],
            order: vec![vec![0, 1, 2], vec![2, 1, 0]],
            runs: vec![
                vec![run(100, 1000), run(110, 1100)],
                vec![run(120, 1050), run(130, 900)],
                vec![run(125, 1000), run(135, 1200)],
            ],
        }
    }

    #[test]
    fn a_difference_counts_only_beyond_every_round() {
        let c = two_rounds();
        let v = verdict(&c, 2, "checkout").expect("measured");
        assert!(v.starts_with("faster beyond noise (1.24x"), "{v}");
        let v = verdict(&c, 2, "query").expect("measured");
        assert!(v.starts_with("within noise (1.05x"), "{v}");
        assert!(verdict(&c, 2, "heartbeat").is_none());
        let mut one = c.clone();
        one.runs.iter_mut().for_each(|r| r.truncate(1));
        let v = verdict(&one, 2, "checkout").expect("measured");
        assert!(v.contains("no verdict"), "{v}");
    }

    #[test]
    fn the_section_has_a_row_per_compared_scenario() {
        let md = markdown(&two_rounds());
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        assert!(
            md.contains(
                "| checkout | 105 (100-110) | 125 (120-130) | 130 (125-135) | 1.19 | 1.24 |"
            ),
            "{md}"
        );
        assert!(md.contains("| query | 1,050 (1,000-1,100) |"), "{md}");
        assert!(!md.contains("| heartbeat |"));
        assert!(md.contains("Exact command: `floatlm-bench --compare /x/floatlm`"));
        assert!(md.contains("against `f6f7d48` (floatlm 0.2.0) and this build"));
        assert!(md.contains(" 0.5 s per scenario, 1 clients, 10 held leases"));
        assert_eq!(section_of(&md), Some(md.trim_end()));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(5119.4), "5,119");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
