//! Usage records across a two-instance MariaDB cluster with a SIGKILL: a
//! scripted sequence of grants on both instances, a denial, a failover of a
//! lease to the survivor, a release, a force release and an expiry found by
//! the sweep gives exactly the expected rows, and the report's checkouts,
//! peak concurrency and seat-hours agree with the script's own timing.

use floatlm::domain::usage::{report, UsageBy, UsageEvent};
use floatlm::storage::UsageStore;
use std::time::{Duration, Instant};
use testkit::promise::{force_release, Findings, InstanceSpec, PromiseCluster, Record, Recorder};
use testkit::wait_for;

fn granted(r: &Record) -> String {
    r.granted()
        .unwrap_or_else(|| panic!("setup: expected a grant, got {:?}", r.answer))
        .to_string()
}

async fn rows(db_url: &str) -> Vec<UsageEvent> {
    let st = floatlm::storage::mysql::MySqlStorage::connect(db_url, 2)
        .await
        .unwrap();
    let from = chrono::DateTime::<chrono::Utc>::from_timestamp(0, 0).unwrap();
    st.usage_window(
        from,
        chrono::Utc::now() + chrono::Duration::days(1),
        100_000,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_sequence_with_a_sigkill_gives_exactly_the_expected_rows() {
    // integrity_interval 1 s: the maintenance loop (denials flush, sweep)
    // runs every second.
    let cl = PromiseCluster::start_with(
        &[
            InstanceSpec::new("a", "5s", "5s"),
            InstanceSpec::new("b", "5s", "5s"),
        ],
        &[("cad", 2)],
        3,
        &[("FLOATLM_INTEGRITY_INTERVAL", "1s")],
    )
    .await;
    let id = |k: usize| cl.credentials[k].split(':').next().unwrap().to_string();
    let rec = Recorder::new();
    let (a, b) = (&cl.targets[0], &cl.targets[1]);
    let (c, d, e) = (
        cl.client(&rec, "C", 0),
        cl.client(&rec, "D", 1),
        cl.client(&rec, "E", 2),
    );
    let mut f = Findings::new();

    // C through a, D through b: both seats.
    let c_login = c.login(a, "cad").await;
    let c_lease = granted(&c_login);
    let d_lease = granted(&d.login(b, "cad").await);
    // E is refused through b: a denial.
    let refused = e.login(b, "cad").await;
    assert!(refused.granted().is_none(), "two seats only");
    // a dies; C's lease lives on through b.
    cl.servers[0].signal(libc::SIGKILL);
    let hb = c.heartbeat(b, std::slice::from_ref(&c_lease)).await;
    f.expect(
        hb.alive(&c_lease) == Some(true),
        "C's lease survives a's death",
    );
    let c_out = c.logout(b, &c_lease).await;
    assert_eq!(c_out.released(), Some(true));
    // An operator ends D's lease through b.
    let fr = force_release(&rec, b, &d_lease).await;
    assert!(fr.received.is_some(), "the force release was answered");
    // E takes C's freed seat and then goes silent: its lease expires and the
    // sweep records it.
    let e_lease = granted(&e.login(b, "cad").await);

    let want = |ev: &[UsageEvent]| -> Vec<(String, String, String)> {
        let mut v: Vec<(String, String, String)> = ev
            .iter()
            .map(|x| {
                (
                    x.event.clone(),
                    x.identity.clone().unwrap_or_default(),
                    x.instance.clone().unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut expected: Vec<(String, String, String)> = [
        ("grant", 0, "a"),
        ("grant", 1, "b"),
        ("denial", 2, "b"),
        ("release", 0, "a"),
        ("force_release", 1, "b"),
        ("grant", 2, "b"),
        ("expiry", 2, "b"),
    ]
    .iter()
    .map(|(ev, k, inst)| (ev.to_string(), id(*k), inst.to_string()))
    .collect();
    expected.sort();
    let got = wait_for(
        "the expiry of E's lease and the denial in the usage records",
        Duration::from_secs(40),
        || async {
            let r = rows(&cl.db().url).await;
            (r.iter().any(|x| x.event == "expiry") && r.iter().any(|x| x.event == "denial"))
                .then_some(r)
        },
    )
    .await;
    assert_eq!(want(&got), expected, "rows: {got:#?}");
    // Still exactly these a moment later: nothing is recorded twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(want(&rows(&cl.db().url).await), expected);

    // The leases named in the rows are the ones the clients were given.
    let lease_of = |ev: &str, k: usize| -> String {
        let x = got
            .iter()
            .find(|x| x.event == ev && x.identity.as_deref() == Some(id(k).as_str()))
            .unwrap();
        let (fid, slot, gen, nonce) = x.lease.unwrap();
        floatlm::domain::seats::LeaseRef {
            feature_id: fid,
            slot_no: slot,
            lease_gen: gen,
            nonce,
        }
        .to_string()
    };
    assert_eq!(lease_of("grant", 0), c_lease);
    assert_eq!(lease_of("release", 0), c_lease);
    assert_eq!(lease_of("force_release", 1), d_lease);
    assert_eq!(lease_of("expiry", 2), e_lease);
    let denial = got.iter().find(|x| x.event == "denial").unwrap();
    assert_eq!(denial.reason.as_deref(), Some("all_seats_taken"));

    // The report against the script: 3 checkouts, 1 denial, 2 at once;
    // C's seat-hours lie between what the client saw from inside (grant
    // answered .. logout sent) and outside (login sent .. logout answered),
    // widened by the clock margin of a database on this machine.
    let from = got.iter().map(|x| x.at).min().unwrap() - chrono::Duration::seconds(1);
    let to = chrono::Utc::now();
    let lines = report(&got, from, to, to, UsageBy::Feature);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (
            lines[0].checkouts,
            lines[0].denials,
            lines[0].peak_concurrency
        ),
        (3, 1, 2)
    );
    let by_id = report(&got, from, to, to, UsageBy::Identity);
    let c_hours = by_id.iter().find(|l| l.key == id(0)).unwrap().seat_hours;
    let secs = |x: Instant, y: Instant| y.duration_since(x).as_secs_f64();
    let inner = secs(c_login.received.unwrap(), c_out.sent);
    let outer = secs(c_login.sent, c_out.received.unwrap());
    let got_s = c_hours * 3600.0;
    f.expect(
        got_s >= inner - 0.05 && got_s <= outer + 0.05,
        format!("C's seat time {got_s:.3}s must lie in [{inner:.3}, {outer:.3}]"),
    );
    f.finish(&rec, &cl.seats);
}
