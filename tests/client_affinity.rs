//! Affinity groups against real instances: two groups (eu, us) of two
//! `floatlm serve` processes each, all on one MariaDB database. A client of
//! group eu talks only to eu; when both eu instances are killed (SIGKILL)
//! its seat moves to us with no loss (same lease, the handle stays held);
//! when eu is restarted, the client is back on eu within the retry interval.

use floatlm_client::{Client, HandleState, Options, ServerState};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{
    admin_cli, cli_license, cluster_instance, created_credential, wait_for, ServerProc, TestDb,
};

const RETRY: Duration = Duration::from_secs(3);

fn instance(dir: &Path, db: &TestDb, id: &str, listen: &str, pubkey: &str) -> ServerProc {
    cluster_instance(
        dir,
        db,
        id,
        listen,
        &["--vendor-key", pubkey, "--lease-ttl", "10s"],
        &[],
    )
}

fn groups_in_status(c: &Client) -> String {
    format!("{:?}", c.server_status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stays_in_its_group_fails_over_and_comes_back() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "AFF", "cad", 3);
    let ids = ["eu-1", "eu-2", "us-1", "us-2"];
    let mut procs: Vec<ServerProc> = ids
        .iter()
        .map(|id| instance(d, &db, id, "127.0.0.1:0", &pubkey))
        .collect();
    admin_cli(&procs[0], &["apply", &lic]);
    let cred = created_credential(&admin_cli(
        &procs[0],
        &["identity", "create", "--name", "aff"],
    ));
    let addrs: Vec<String> = procs.iter().map(|p| p.licensing.clone()).collect();
    let servers: Vec<String> = ids
        .iter()
        .zip(&addrs)
        .map(|(id, a)| format!("{cred}@{}:{a}", &id[..2]))
        .collect();

    let client = Client::connect(
        &servers,
        Options {
            group: Some("eu".into()),
            retry_interval: RETRY,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(client.group(), Some("eu"));
    let seat = client.checkout("cad").await.unwrap();
    let lease = seat.lease();
    // A few more calls: all of them stay in the group.
    for _ in 0..5 {
        client.query(&["cad"]).await.unwrap();
    }
    assert_eq!(client.group_in_use().as_deref(), Some("eu"));
    let status = client.server_status();
    for s in &status[2..] {
        assert_eq!(s.group.as_deref(), Some("us"));
        assert!(!s.home);
        assert_eq!(
            s.state,
            ServerState::Unknown,
            "a us server was contacted: {status:?}"
        );
    }
    assert!(status[..2]
        .iter()
        .all(|s| s.home && s.group.as_deref() == Some("eu")));

    // Kill the whole eu group: the seat moves to us at its next heartbeat.
    for p in &mut procs[..2] {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    let killed = Instant::now();
    wait_for(
        "the client to fail over to group us",
        Duration::from_secs(20),
        || {
            let g = client.group_in_use();
            async move { (g.as_deref() == Some("us")).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "failed over to us {:.1} s after eu was killed",
        killed.elapsed().as_secs_f64()
    );
    // Still the same seat, held, with its promise ahead.
    wait_for("a heartbeat through us", Duration::from_secs(15), || {
        let ok = seat.state() == HandleState::Held
            && seat.valid_until() > Instant::now() + Duration::from_secs(3);
        async move { ok.then_some(()) }
    })
    .await;
    assert_eq!(seat.lease(), lease);
    assert!(seat.loss().is_none());
    let status = client.server_status();
    assert!(
        status[..2]
            .iter()
            .all(|s| matches!(s.state, ServerState::Failing { .. })),
        "{status:?}"
    );
    let q = client.query(&["cad"]).await.unwrap();
    assert_eq!(q[0].used, 1, "the seat is the one lease, not a second one");

    // Restart eu on the same addresses: back to eu within the retry interval.
    for (i, id) in ids[..2].iter().enumerate() {
        procs[i] = instance(d, &db, id, &addrs[i], &pubkey);
    }
    let restarted = Instant::now();
    // Due by design within one retry interval of the last failed probe
    // (before the restart), plus the probe's own round trip.
    wait_for(
        "the client to return to group eu",
        RETRY + Duration::from_secs(4),
        || {
            let g = client.group_in_use();
            async move { (g.as_deref() == Some("eu")).then_some(()) }
        },
    )
    .await;
    let back = restarted.elapsed();
    eprintln!(
        "back on eu {:.2} s after eu answered again (retry interval {RETRY:?})",
        back.as_secs_f64()
    );
    assert!(
        back <= RETRY + Duration::from_millis(2500),
        "took {back:?}: {}",
        groups_in_status(&client)
    );
    // The seat is renewed through eu now, still the same lease.
    let q = client.query(&["cad"]).await.unwrap();
    assert_eq!(q[0].used, 1);
    assert_eq!(client.group_in_use().as_deref(), Some("eu"));
    assert_eq!(seat.lease(), lease);
    assert_eq!(seat.state(), HandleState::Held);
    seat.release().await;
    let q = client.query(&["cad"]).await.unwrap();
    assert_eq!(q[0].used, 0);
}

/// A group that names no server is refused up front, naming the group.
#[tokio::test]
async fn a_group_without_servers_is_a_clear_error() {
    let e = Client::connect(
        &["abc:secret@eu:127.0.0.1:1"],
        Options {
            group: Some("us".into()),
            ..Options::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("no server is tagged with group us"),
        "{e}"
    );
}

/// The group's members are asked again every retry interval, and no more
/// than `max_retries` times; meanwhile the seat lives on the other group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_is_retried_up_to_the_retry_count() {
    let demo = testkit::DemoServer::start(&[]);
    let (cred, addr) = demo.identity.rsplit_once('@').unwrap();
    // Two addresses where nothing listens: the eu group is down.
    let closed: Vec<String> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string()
        })
        .collect();
    let servers = vec![
        format!("{cred}@eu:{}", closed[0]),
        format!("{cred}@eu:{}", closed[1]),
        format!("{cred}@us:{addr}"),
    ];
    let interval = Duration::from_millis(300);
    let client = Client::connect(
        &servers,
        Options {
            group: Some("eu".into()),
            retry_interval: interval,
            max_retries: Some(2),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let seat = client.checkout("demo").await.unwrap();
    assert_eq!(client.group_in_use().as_deref(), Some("us"));
    let retries = |c: &Client| -> Vec<u32> {
        c.server_status()[..2]
            .iter()
            .map(|s| match s.state {
                ServerState::Failing { retries, .. } => retries,
                _ => panic!("eu is down: {s:?}"),
            })
            .collect()
    };
    // The first failure, then one retry per interval, up to 2.
    wait_for(
        "two retries of each eu server",
        Duration::from_secs(10),
        || {
            let r = retries(&client);
            async move { (r == [2, 2]).then_some(()) }
        },
    )
    .await;
    // No more after the retry count, however long it waits.
    tokio::time::sleep(interval * 5).await;
    assert_eq!(retries(&client), [2, 2]);
    assert_eq!(client.group_in_use().as_deref(), Some("us"));
    assert_eq!(seat.state(), HandleState::Held);
    seat.release().await;
    assert_eq!(demo.used().await, 0);
}
