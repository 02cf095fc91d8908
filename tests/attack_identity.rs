//! A revoked identity keeps its open sessions: the handshake and the
//! resumption refuse a revoked identity ("then no session exists and the
//! client must stop", docs/protocol.md), but a session opened before the
//! revocation goes on checking out new seats — for as long as it is used
//! at least once per `session_idle`, i.e. indefinitely.

use std::time::Duration;
use testkit::promise::{InstanceSpec, PromiseCluster, Recorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_keeps_checking_out_seats_on_its_open_session() {
    let cl = PromiseCluster::start(&[InstanceSpec::new("x", "5s", "10s")], &[("cad", 3)], 1).await;
    let rec = Recorder::new();
    let t0 = rec.t0();
    let x = cl.targets[0].clone();
    let a = cl.client(&rec, "A", 0);
    let first = a.login(&x, "cad").await;
    assert!(first.granted().is_some(), "setup: {}", first.line(t0));
    let id = cl.credentials[0].split(':').next().unwrap().to_string();
    let out = testkit::admin_cli(&cl.servers[0], &["identity", "revoke", &id]);
    eprintln!("revoke: {}", out.trim());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = a.login(&x, "cad").await;
    // A new handshake is refused, as documented.
    let fresh = cl.client(&rec, "A2", 0);
    let refused = fresh.login(&x, "cad").await;
    eprintln!(
        "a new session of the revoked identity: {}",
        refused.line(t0)
    );
    assert!(
        after.granted().is_none(),
        "identity {id} was revoked; a login on its old session must not be granted: {}",
        after.line(t0)
    );
}
