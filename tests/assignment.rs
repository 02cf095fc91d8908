//! Feature assignment (`assignment = manual`) end to end on both backends:
//! an unassigned feature is refused with reason `not_assigned` and absent
//! from `info`; `admin identity assign` / `unassign` (the CLI) change that
//! at once; the refusals are usage denials in `admin usage report`.

use floatlm_client::{Client, ClientError, NoLicenseReason, Options};
use testkit::{floatlm_ok, DemoServer, Kind, TestDb};

fn opts() -> Options {
    Options {
        retry_interval: std::time::Duration::from_millis(500),
        request_timeout: std::time::Duration::from_secs(3),
        ..Options::default()
    }
}

fn admin(d: &DemoServer, args: &[&str]) -> String {
    let url = format!("http://{}", d.proc.admin);
    let mut all = vec![
        "admin",
        "--url",
        url.as_str(),
        "--token",
        d.admin_token.as_str(),
    ];
    all.extend_from_slice(args);
    floatlm_ok(&all)
}

async fn refused_not_assigned(client: &Client) {
    match client.checkout("demo").await {
        Err(ClientError::NoLicense {
            reason: NoLicenseReason::NotAssigned,
            message,
        }) => assert!(
            message.contains("not assigned to this identity"),
            "{message}"
        ),
        other => panic!(
            "an unassigned feature must be refused: {:?}",
            other.map(|s| s.lease())
        ),
    }
}

async fn manual_assignment(kind: Kind) {
    let db = TestDb::for_kind(kind).await;
    let d = DemoServer::start_on(
        db.as_ref(),
        &["--lease-ttl", "5s"],
        &[("FLOATLM_ASSIGNMENT", "manual")],
    );
    let id = d.identity.split(':').next().unwrap().to_string();
    let client = Client::connect(&[&d.identity], opts()).await.unwrap();

    // Nothing assigned: info shows nothing, a checkout is refused.
    assert!(
        client.query(&[]).await.unwrap().is_empty(),
        "info lists only assigned features"
    );
    refused_not_assigned(&client).await;

    let out = admin(&d, &["--json", "identity", "assign", &id, "demo"]);
    assert!(out.contains("\"demo\""), "{out}");
    let q = client.query(&[]).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].name.as_str(), q[0].total), ("demo", 5));
    let seat = client.checkout("demo").await.unwrap();

    // Unassigned again: new checkouts are refused; the held lease runs on.
    admin(&d, &["identity", "unassign", &id, "demo"]);
    refused_not_assigned(&client).await;
    assert!(client.query(&[]).await.unwrap().is_empty());
    assert!(
        seat.release().await,
        "the lease held before unassign is still held"
    );

    // The usage report: one checkout, two denials for this identity.
    let csv = admin(
        &d,
        &[
            "usage",
            "report",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--by",
            "identity",
            "--format",
            "csv",
        ],
    );
    let line = csv
        .lines()
        .find(|l| l.starts_with(&format!("{id},")))
        .unwrap_or_else(|| panic!("no line for {id}: {csv}"));
    let cells: Vec<&str> = line.split(',').collect();
    assert_eq!(cells[1], "1", "checkouts: {csv}");
    assert_eq!(cells[4], "2", "denials: {csv}");
    assert!(
        csv.starts_with("identity,checkouts,seat_hours,peak_concurrency,denials\n"),
        "{csv}"
    );
}

mod sqlite_backend {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn manual_assignment() {
        super::manual_assignment(testkit::Kind::Sqlite).await
    }
}

mod mysql_backend {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn manual_assignment() {
        super::manual_assignment(testkit::Kind::Mysql).await
    }
}
