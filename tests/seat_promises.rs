//! The client library's promise: a seat handle says until when the seat is
//! the application's, moves that forward with every heartbeat, and reports
//! the loss when it happens (operator release, or no server in time).
//! Real `floatlm serve --demo` processes on port 0.

use floatlm_client::{Client, HandleState, LossReason, Options};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{wait_for, DemoServer};

/// Short leases keep these tests quick: heartbeats every 5/3 s.
const TTL: &str = "5s";

fn opts() -> Options {
    Options {
        retry_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promise_end_moves_forward_with_each_heartbeat() {
    let d = DemoServer::start(&["--lease-ttl", TTL]);
    let client = Client::connect(&[&d.identity], opts()).await.unwrap();
    let before = Instant::now();
    let seat = client.checkout("demo").await.unwrap();
    let first = seat.valid_until();
    assert!(
        first > Instant::now() && first <= before + Duration::from_secs(5),
        "the first promise lies within the TTL: {:?} from the checkout",
        first - before
    );
    let mut seen = first;
    for n in 1..=2 {
        seen = wait_for(
            &format!("heartbeat {n} to extend the promise"),
            Duration::from_secs(10),
            || async {
                let v = seat.valid_until();
                (v > seen).then_some(v)
            },
        )
        .await;
        assert_eq!(seat.state(), HandleState::Held);
    }
    assert!(seen > first);
    assert_eq!(seat.loss(), None);
    assert!(seat.release().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_force_release_is_reported_as_a_loss() {
    let d = DemoServer::start(&["--lease-ttl", TTL]);
    let client = Client::connect(&[&d.identity], opts()).await.unwrap();
    let seat = client.checkout("demo").await.unwrap();
    let told: Arc<Mutex<Vec<String>>> = Arc::default();
    let t = told.clone();
    seat.on_loss(move |reason| t.lock().unwrap().push(reason.to_string()));

    d.force_release(&seat.lease()).await;
    let reason = tokio::time::timeout(Duration::from_secs(10), seat.lost())
        .await
        .expect("the loss is reported by the next heartbeat");
    assert_eq!(reason, LossReason::Revoked);
    assert!(matches!(seat.state(), HandleState::Lost { .. }));
    assert!(!seat.is_valid());
    assert!(seat.valid_until() <= Instant::now(), "the promise is void");
    let told = told.lock().unwrap().clone();
    assert_eq!(told.len(), 1, "the callback runs once: {told:?}");
    assert!(told[0].contains("operator"), "{told:?}");
    // Registered after the loss: called at once.
    let late: Arc<Mutex<Option<String>>> = Arc::default();
    let l = late.clone();
    seat.on_loss(move |reason| *l.lock().unwrap() = Some(reason.to_string()));
    assert!(late.lock().unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loss_fires_when_the_promise_ends_with_every_server_gone() {
    let mut d = DemoServer::start(&["--lease-ttl", TTL]);
    let client = Client::connect(&[&d.identity], opts()).await.unwrap();
    let seat = client.checkout("demo").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    seat.on_loss(move |_| {
        let _ = tx.send(Instant::now());
    });
    d.proc.signal(libc::SIGKILL);
    d.proc.wait_exit(Duration::from_secs(10)).unwrap();
    let promised = seat.valid_until();
    assert!(
        promised > Instant::now(),
        "still promised when the server dies"
    );

    // Nobody polls the state: the heartbeat task itself must fire the loss.
    let reason = tokio::time::timeout(Duration::from_secs(15), seat.lost())
        .await
        .expect("the loss fires at the end of the promise");
    let at = Instant::now();
    assert!(
        matches!(reason, LossReason::Unconfirmed { .. }),
        "{reason:?}"
    );
    assert!(at >= promised, "not before the promise ended");
    assert!(
        at < promised + Duration::from_secs(2),
        "at the promise's end, not later: {:?} late",
        at - promised
    );
    let called = rx.recv().await.unwrap();
    assert!(called >= promised && called < promised + Duration::from_secs(2));
    assert!(matches!(seat.state(), HandleState::Lost { .. }));
}
