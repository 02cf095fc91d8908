//! Attacks through licenses: several licenses of one feature, a shrink or a
//! shortened window applied while promises run, and feature names that
//! MariaDB compares case-insensitively.
//!
//! floatlm counts a feature across every license that names it (`features`
//! sums them, a grant takes a slot of any of them), but the rules that keep
//! a shrink from granting while the feature is over its new seat count (the
//! retiring-slot swap) and that end promises at the license window are kept
//! per license (per feature row). The checker gets N = the seats licensed
//! after the change, which the tests keep constant over the run.

use std::time::{Duration, Instant};
use testkit::promise::{Findings, InstanceSpec, PromiseCluster, Record, Recorder};

fn granted(r: &Record, rec: &Recorder) -> String {
    r.granted()
        .unwrap_or_else(|| panic!("setup: expected a grant: {}", r.line(rec.t0())))
        .to_string()
}

/// Signs `toml` with the cluster's vendor key and applies it.
fn apply(cl: &PromiseCluster, name: &str, toml: &str) -> String {
    let lic = sign(cl, name, toml);
    testkit::admin_cli(&cl.servers[0], &["apply", &lic])
}

/// Signs a license definition with the cluster's vendor key; the .lic path.
fn sign(cl: &PromiseCluster, name: &str, toml: &str) -> String {
    let d = cl.dir.path();
    let def = d.join(format!("{name}.toml"));
    std::fs::write(&def, toml).unwrap();
    let lic = d.join(format!("{name}.lic")).display().to_string();
    testkit::floatlm_ok(&[
        "vendor",
        "sign",
        "--key",
        &d.join("vendor/vendor.key").display().to_string(),
        &def.display().to_string(),
        "-o",
        &lic,
    ]);
    lic
}

/// License PROMISE has 2 seats of cad, license L2 another 2. A and B hold
/// PROMISE's seats. PROMISE serial 2 drops cad: cad now has 2 seats (L2's).
/// A and B keep theirs (shrinking never revokes), and C and D are granted
/// L2's two seats at once — four leases of a 2-seat feature, and it lasts
/// as long as A and B keep heartbeating (retiring slots are extended like
/// any other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrink_of_one_license_is_not_paid_for_by_another_license_of_the_feature() {
    let mut cl =
        PromiseCluster::start(&[InstanceSpec::new("x", "5s", "10s")], &[("cad", 2)], 4).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = cl.targets[0].clone();
    apply(
        &cl,
        "l2",
        "license_id = \"L2\"\nserial = 1\ncustomer = \"test\"\n[[feature]]\nname = \"cad\"\nseats = 2\n",
    );
    let (a, b, c, d) = (
        cl.client(&rec, "A", 0),
        cl.client(&rec, "B", 1),
        cl.client(&rec, "C", 2),
        cl.client(&rec, "D", 3),
    );
    let mut f = Findings::new();
    let la = granted(&a.login(&x, "cad").await, &rec);
    let lb = granted(&b.login(&x, "cad").await, &rec);
    let out = apply(
        &cl,
        "promise2",
        "license_id = \"PROMISE\"\nserial = 2\ncustomer = \"test\"\n[[feature]]\nname = \"other\"\nseats = 1\n",
    );
    eprintln!("apply PROMISE serial 2: {}", out.trim());
    // After the change cad is licensed 2 seats (L2's).
    cl.seats.insert("cad".into(), 2);
    cl.seats.insert("other".into(), 1);

    let gc = c.login(&x, "cad").await;
    let gd = d.login(&x, "cad").await;
    f.expect(
        gc.granted().is_none() || gd.granted().is_none(),
        format!(
            "A and B still hold cad after it shrank to 2 seats; C and D must not both be granted:\n    {}\n    {}",
            gc.line(t0),
            gd.line(t0)
        ),
    );
    // Everybody heartbeats for a while: all four stay alive.
    let leases: Vec<(String, &testkit::promise::RecClient)> = [
        (Some(la), &a),
        (Some(lb), &b),
        (gc.granted().map(String::from), &c),
        (gd.granted().map(String::from), &d),
    ]
    .into_iter()
    .filter_map(|(l, cl)| l.map(|l| (l, cl)))
    .collect();
    let until = Instant::now() + Duration::from_secs(8);
    let mut rounds = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rounds += 1;
        let mut alive = 0;
        for (l, who) in &leases {
            if who.heartbeat(&x, std::slice::from_ref(l)).await.alive(l) == Some(true) {
                alive += 1;
            }
        }
        eprintln!(
            "heartbeat round {rounds}: {alive} of {} cad leases alive (2 seats)",
            leases.len()
        );
    }
    f.finish(&rec, &cl.seats);
}

/// cad has one seat at every instant: license PROMISE until T, license L2
/// from T (a vendor moving the customer to a new license). A holds
/// PROMISE's seat with a 20 s promise. PROMISE serial 2 would end the window
/// at T, a few seconds away, before A's promise can have run out: the apply
/// is refused with a message saying when it can be applied, so no promise
/// ever reaches past a window, and C is not granted L2's seat while A's
/// promise still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_shortened_below_live_promises_is_refused() {
    let cl = PromiseCluster::start(&[InstanceSpec::new("x", "20s", "40s")], &[("cad", 1)], 2).await;
    let rec = Recorder::new();
    let x = cl.targets[0].clone();
    let (a, c) = (cl.client(&rec, "A", 0), cl.client(&rec, "C", 1));
    let mut f = Findings::new();
    let _la = granted(&a.login(&x, "cad").await, &rec);

    let t = (chrono::Utc::now() + chrono::Duration::seconds(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    apply(
        &cl,
        "l2",
        &format!("license_id = \"L2\"\nserial = 1\ncustomer = \"test\"\n[[feature]]\nname = \"cad\"\nseats = 1\nnot_before = \"{t}\"\n"),
    );
    let lic = sign(
        &cl,
        "promise2",
        &format!("license_id = \"PROMISE\"\nserial = 2\ncustomer = \"test\"\n[[feature]]\nname = \"cad\"\nseats = 1\nexpires = \"{t}\"\n"),
    );
    let url = format!("http://{}", cl.servers[0].admin);
    let out = std::process::Command::new(testkit::bin())
        .args([
            "admin",
            "--url",
            &url,
            "--token",
            testkit::CLUSTER_TOKEN,
            "apply",
            &lic,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    f.expect(
        !out.status.success()
            && err.contains("before the promises")
            && err.contains("apply it after"),
        format!("the shortening apply must be refused with a clear message: {err}"),
    );

    // PROMISE keeps its seat; past T, L2 opens a second one, which C gets.
    let until = Instant::now() + Duration::from_secs(10);
    let mut got = false;
    while Instant::now() < until && !got {
        got = c.login(&x, "cad").await.granted().is_some();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    f.expect(got, "C gets L2's seat once its window opens");
    let mut seats = cl.seats.clone();
    seats.insert("cad".into(), 2);
    f.finish(&rec, &seats);
}

/// Two vendor-signed licenses: one with feature `cad` (1 seat), one with
/// feature `CAD` (1 seat) — distinct names by the license rules (and on
/// SQLite). On MariaDB `features.name` compares case-insensitively, so a
/// login for `cad` is granted a slot of `CAD` too: two leases of a 1-seat
/// feature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_names_differing_in_case_share_seats_on_mariadb() {
    let mut cl =
        PromiseCluster::start(&[InstanceSpec::new("x", "5s", "10s")], &[("cad", 1)], 2).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = cl.targets[0].clone();
    apply(
        &cl,
        "upper",
        "license_id = \"UPPER\"\nserial = 1\ncustomer = \"test\"\n[[feature]]\nname = \"CAD\"\nseats = 1\n",
    );
    cl.seats.insert("CAD".into(), 1);
    cl.seats.insert("cad ".into(), 1);
    let (a, b) = (cl.client(&rec, "A", 0), cl.client(&rec, "B", 1));
    let mut f = Findings::new();
    let ga = a.login(&x, "cad").await;
    let gb = b.login(&x, "cad").await;
    f.expect(
        ga.granted().is_none() || gb.granted().is_none(),
        format!(
            "cad has one seat; two logins for cad must not both be granted:\n    {}\n    {}",
            ga.line(t0),
            gb.line(t0)
        ),
    );
    f.finish(&rec, &cl.seats);
}

/// The same on one license: a license with features `cad` and `CAD` would
/// be one feature to a MySQL unique key and two everywhere else, so it is
/// refused as invalid on both backends, with the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_with_case_distinct_features_is_refused_alike_on_both_backends() {
    let err = floatlm::domain::license::parse_definition(
        "license_id = \"CASES\"\nserial = 1\ncustomer = \"t\"\n[[feature]]\nname = \"cad\"\nseats = 1\n[[feature]]\nname = \"CAD\"\nseats = 1\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("listed twice") && err.to_string().contains("case"),
        "{err}"
    );
}

/// Two slots are inserted by hand (the integrity check's own example of
/// tampering); `admin verify` refuses `cad`, and logins for `cad` are
/// refused. Logins for `CAD` or `cad ` are not: the refusal is looked up by
/// the exact name the client sent, the slot is found by MariaDB's
/// case-insensitive, trailing-space-insensitive comparison. Three clients
/// are granted the tampered 1-seat feature at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrity_refusal_is_bypassed_by_the_spelling_of_the_feature() {
    let mut cl =
        PromiseCluster::start(&[InstanceSpec::new("x", "5s", "10s")], &[("cad", 1)], 3).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = cl.targets[0].clone();
    let db = sqlx::MySqlPool::connect(&cl.db().url).await.unwrap();
    sqlx::query("INSERT INTO slots (feature_id, slot_no) VALUES (1, 1), (1, 2)")
        .execute(&db)
        .await
        .unwrap();
    // verify exits 1 when it refuses a feature, and says so.
    let out = std::process::Command::new(testkit::bin())
        .args([
            "admin",
            "--url",
            &format!("http://{}", cl.servers[0].admin),
            "--token",
            testkit::CLUSTER_TOKEN,
            "verify",
        ])
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "verify must fail: {v}");
    assert!(v.contains("REFUSED cad"), "{v}");
    let mut f = Findings::new();
    let a = cl.client(&rec, "A", 0);
    let refused = a.login(&x, "cad").await;
    assert!(
        refused.granted().is_none(),
        "setup: cad must be refused after tampering: {}",
        refused.line(t0)
    );
    // The same licensed feature, spelled as a client may spell it.
    cl.seats.insert("CAD".into(), 1);
    cl.seats.insert("cad ".into(), 1);
    let mut grants = Vec::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = cl.client(&rec, &format!("C{i}"), i);
        let r = c.login(&x, "CAD").await;
        if let Some(l) = r.granted() {
            grants.push(r.line(t0));
            clients.push((c, l.to_string()));
        }
    }
    // A trailing space works as well (PAD SPACE collation).
    if let Some((c, l)) = clients.first() {
        c.logout(&x, l).await;
        let r = c.login(&x, "cad ").await;
        if r.granted().is_some() {
            grants.push(r.line(t0));
        }
    }
    f.expect(
        grants.is_empty(),
        format!(
            "cad is refused by the integrity check (a slot was inserted by hand); no spelling of it may be granted:\n    {}",
            grants.join("\n    ")
        ),
    );
    f.finish(&rec, &cl.seats);
}
