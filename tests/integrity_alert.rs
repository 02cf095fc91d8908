//! Issue 12: seat rows edited by hand in the database raise an alert.
//!
//! SQL access to the database is license authority (docs/operations.md,
//! "What SQL access can do"): floatlm cannot stop every hand edit, but the
//! integrity check refuses the edited feature and says so where monitoring
//! looks. A real `floatlm serve` on SQLite (integrity check every second, JSON
//! logs) gets a slot inserted by hand, then, after a re-apply, its seats
//! column edited. Each time:
//!
//! * an error line with target `floatlm::integrity` and
//!   `event = "integrity_mismatch"` names the feature, within a few checks;
//! * `integrity_mismatches` in `GET /admin/v1/status` counts the mismatch
//!   once (not once per check while it lasts) and `integrity_refused` names
//!   the feature;
//! * a login for the feature is refused; re-applying the license file lifts
//!   the refusal.

use floatlm_protocol::messages::{reason, ErrorCode, Response};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::promise::{RecClient, Recorder, Target};
use testkit::{admin_cli, cli_license, cluster_instance, created_credential, ServerProc};

const FEATURE: &str = "cad";
/// A mismatch must show this soon (checks run every second).
const ALERT_WITHIN: Duration = Duration::from_secs(5);

async fn status(p: &ServerProc) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("http://{}/admin/v1/status", p.admin))
        .bearer_auth(testkit::CLUSTER_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The JSON log lines of `p` that are integrity-mismatch alerts for `feature`.
fn alerts(p: &ServerProc, feature: &str) -> Vec<serde_json::Value> {
    p.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["level"] == "ERROR"
                && v["target"] == "floatlm::integrity"
                && v["fields"]["event"] == "integrity_mismatch"
                && v["fields"]["feature"] == feature
        })
        .collect()
}

/// Waits until `status.integrity_mismatches` is `n` and `alerts` has more
/// than `seen` lines; returns the alert lines.
async fn wait_alert(p: &ServerProc, n: u64, seen: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + ALERT_WITHIN;
    loop {
        let st = status(p).await;
        let lines = alerts(p, FEATURE);
        if st["integrity_mismatches"] == n && lines.len() > seen {
            assert!(
                st["integrity_refused"][FEATURE].is_string(),
                "status names the refused feature: {st}"
            );
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no integrity alert within {ALERT_WITHIN:?} (want integrity_mismatches = {n}): status {st}; log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sql(db: &Path, statement: &str) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let n = sqlx::query(statement)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1, "{statement}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_rows_edited_by_hand_raise_an_integrity_alert() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "ALERT", FEATURE, 2);
    let db = d.join("floatlm.db");
    let url = format!("sqlite://{}", db.display());
    let server = cluster_instance(
        d,
        url.as_str(),
        "alert-1",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &[
            ("FLOATLM_INTEGRITY_INTERVAL", "1s"),
            ("FLOATLM_LOG_FORMAT", "json"),
        ],
    );
    admin_cli(&server, &["apply", &lic]);
    let cred = created_credential(&admin_cli(
        &server,
        &["identity", "create", "--name", "alert"],
    ));
    let st = status(&server).await;
    assert_eq!(st["integrity_mismatches"], 0, "{st}");
    assert!(alerts(&server, FEATURE).is_empty());

    // A third seat, inserted by hand.
    sql(
        &db,
        "INSERT INTO slots (feature_id, slot_no) SELECT id, 99 FROM features WHERE name = 'cad'",
    )
    .await;
    let lines = wait_alert(&server, 1, 0).await;
    let reason = lines[0]["fields"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("3 active slots"), "{}", lines[0]);
    assert_eq!(lines[0]["fields"]["new"], true, "{}", lines[0]);
    // Clients are refused, with the reason.
    let rec = Recorder::new();
    let c = RecClient::new(&rec, "c", &cred);
    let r = c.login(&Target::of(&server), FEATURE).await;
    assert!(
        matches!(&r.answer, testkit::promise::Answer::Sealed(Response::Error {
            code: ErrorCode::NoLicense, reason: Some(why), .. }) if why == reason::LICENSE_REFUSED),
        "a login for the edited feature is refused: {}",
        r.answer
    );
    // Later checks log it again (an alert keeps firing) but count it once.
    let deadline = Instant::now() + ALERT_WITHIN;
    while alerts(&server, FEATURE).len() < lines.len() + 2 {
        assert!(
            Instant::now() < deadline,
            "the mismatch is logged at every check"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = alerts(&server, FEATURE);
    assert_eq!(again.last().unwrap()["fields"]["new"], false);
    assert_eq!(status(&server).await["integrity_mismatches"], 1);

    // Re-applying repairs the rows and lifts the refusal.
    admin_cli(&server, &["apply", &lic]);
    let st = status(&server).await;
    assert!(
        st["integrity_refused"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{st}"
    );
    let r = c.login(&Target::of(&server), FEATURE).await;
    assert!(
        r.granted().is_some(),
        "granted after the re-apply: {}",
        r.answer
    );

    // The seats column, edited by hand: a second mismatch.
    let seen = alerts(&server, FEATURE).len();
    sql(&db, "UPDATE features SET seats = 50 WHERE name = 'cad'").await;
    let lines = wait_alert(&server, 2, seen).await;
    assert!(
        lines[seen]["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("seats column 50")),
        "{}",
        lines[seen]
    );
    admin_cli(&server, &["apply", &lic]);
}
