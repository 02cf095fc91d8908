//! Issue 12's small faults, each seen as a user sees it (exit code, message,
//! HTTP answer) and each checked to change nothing else: `admin verify`'s
//! exit code, a damaged key canary, a damaged identity secret, a restarted
//! `serve --demo`, a trial start with a wrong extra master key, and
//! `rotate-key` while an instance lacks the new key. Real `floatlm`
//! processes on port 0.

use floatlm::crypto::keyring::Keyring;
use floatlm_client::{Client, Options};
use floatlm_protocol::handshake::ClientHandshake;
use floatlm_protocol::PATH_HANDSHAKE;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::{
    bin, sealed_blob, set_sealed_blob, SealedColumn, Serve, ServerProc, TestDb, MASTER_KEY_1,
    MASTER_KEY_2,
};

/// Master key `k2` with other bytes than [`MASTER_KEY_2`]: the wrong one.
const WRONG_KEY_2: &str = "k2:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

/// Runs the floatlm CLI; returns (exit code, stdout, stderr).
fn floatlm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `floatlm serve --demo` on SQLite with its data in `dir/data`, so that
/// it can be stopped and started again on the same data; `env` on top
/// (FLOATLM_MASTER_KEY, say).
struct Demo {
    proc: ServerProc,
    dir: std::path::PathBuf,
}

impl Demo {
    fn try_start(dir: &Path, env: &[(&str, &str)]) -> Result<Demo, String> {
        Self::try_start_with(dir, &[], env)
    }

    fn try_start_with(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Demo, String> {
        Ok(Demo {
            proc: Serve::in_dir(dir)
                .demo()
                .no_drain_delay()
                .args(&["--log-level", "info"])
                .args(extra)
                .envs(env)
                .spawn()?,
            dir: dir.to_path_buf(),
        })
    }

    fn start(dir: &Path, env: &[(&str, &str)]) -> Demo {
        Self::try_start(dir, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stops it with SIGTERM and waits for a clean exit.
    fn stop(mut self) -> String {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "clean stop: {status:?}"
        );
        self.proc.log()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("data").join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The demo identity, pointed at this start's port (a restart binds
    /// another one).
    fn identity(&self) -> String {
        let written = self.file("demo-identity.txt");
        let cred = written.rsplit_once('@').unwrap().0;
        format!("{cred}@{}", self.proc.licensing)
    }

    /// `floatlm admin --url … --token … ARGS`: (exit code, stdout, stderr).
    fn admin(&self, args: &[&str]) -> (i32, String, String) {
        let url = format!("http://{}", self.proc.admin);
        let token = self.file("admin.token");
        let mut all = vec!["admin", "--url", &url, "--token", &token];
        all.extend_from_slice(args);
        floatlm(&all)
    }

    fn admin_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.admin(args);
        assert_eq!(code, 0, "floatlm admin {args:?}: {out}{err}");
        out
    }

    /// A seat of `demo` checked out and given back by the client library.
    async fn checkout_demo(&self) -> Result<(), String> {
        let opts = Options {
            request_timeout: Duration::from_secs(5),
            ..Options::default()
        };
        let c = Client::connect(&[self.identity().as_str()], opts)
            .await
            .map_err(|e| e.to_string())?;
        let seat = c.checkout("demo").await.map_err(|e| e.to_string())?;
        drop(seat);
        Ok(())
    }

    fn db_url(&self) -> String {
        format!("sqlite://{}", self.dir.join("data/floatlm.db").display())
    }
}

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

/// Flips the last byte of a sealed blob (in its authentication tag: the
/// key id in front still reads); returns the damaged blob.
async fn flip_last_byte(url: &str, column: SealedColumn, id: &str) -> Vec<u8> {
    let mut b = sealed_blob(url, column, id).await;
    *b.last_mut().unwrap() ^= 1;
    set_sealed_blob(url, column, id, &b).await;
    b
}

/// Waits until the instance row of `id` records a key of id `key_id` (an
/// instance writes it at its first cluster heartbeat, just after it listens).
async fn wait_row_holds(url: &str, id: &str, key_id: &str) {
    let needle = format!("{key_id}:");
    testkit::wait_for(
        &format!("instance {id}'s row to record key {key_id}"),
        Duration::from_secs(20),
        || {
            let needle = needle.clone();
            async move {
                let p = pool(url).await;
                let keys: Option<String> =
                    sqlx::query_scalar("SELECT key_ids FROM instances WHERE id = ?")
                        .bind(id)
                        .fetch_optional(&p)
                        .await
                        .unwrap();
                p.close().await;
                keys.filter(|k| k.contains(&needle)).map(|_| ())
            }
        },
    )
    .await
}

/// Item 1: `admin verify` exits 0 and says "integrity ok" when all is well;
/// once a byte of the demo license's sealed row is flipped it prints a
/// REFUSED line for its feature and exits 1, on every look. Nothing else
/// changes: the identities list as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_verify_exits_1_when_it_refuses_a_feature_and_0_when_all_is_well() {
    let dir = tempfile::tempdir().unwrap();
    let d = Demo::start(dir.path(), &[]);
    let (code, out, err) = d.admin(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("integrity ok"), "{out}");
    let idents_before = d.admin_ok(&["identity", "list"]);

    flip_last_byte(&d.db_url(), SealedColumn::License, "DEMO").await;
    let (code, out, err) = d.admin(&["verify"]);
    assert_eq!(code, 1, "verify must fail: {out}{err}");
    assert!(out.lines().any(|l| l.starts_with("REFUSED demo:")), "{out}");
    assert!(!out.contains("integrity ok"), "{out}");
    // The identities are untouched, and the server still answers.
    assert_eq!(d.admin_ok(&["identity", "list"]), idents_before);
    let (code, out, _) = d.admin(&["verify"]);
    assert_eq!(code, 1, "refused again on a second look: {out}");
    d.stop();
}

/// Item 2: a flipped byte in the key canary row is a damaged canary, not a
/// wrong master key: the instance starts, says the canary was damaged and
/// writes a fresh one (which opens, so the next start says nothing), and
/// the demo feature is granted as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_key_canary_is_repaired_not_blamed_on_the_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = Demo::start(dir.path(), &[]);
    d.checkout_demo().await.unwrap();
    let url = d.db_url();
    let licence_before = sealed_blob(&url, SealedColumn::License, "DEMO").await;
    d.stop();

    let damaged = flip_last_byte(&url, SealedColumn::Canary, "k1").await;
    let d = Demo::start(dir.path(), &[]);
    d.checkout_demo().await.unwrap();
    let log = d.stop();
    assert!(log.contains("the key canary row was damaged"), "{log}");
    for blamed in [
        "wrong master key",
        "not the key this database",
        "master key refused",
    ] {
        assert!(!log.contains(blamed), "{blamed:?} in: {log}");
    }
    let fresh = sealed_blob(&url, SealedColumn::Canary, "k1").await;
    assert_ne!(fresh, damaged, "a fresh canary was written");
    // Nothing else was rewritten.
    assert_eq!(
        sealed_blob(&url, SealedColumn::License, "DEMO").await,
        licence_before
    );
    // The fresh canary opens: the next start has nothing to repair.
    let d = Demo::start(dir.path(), &[]);
    let log = d.stop();
    assert!(!log.contains("canary"), "{log}");
}

/// Item 3: a flipped byte in an identity's sealed secret: its handshake is
/// refused like a wrong secret (401 `auth_failed`, no word of the damage in
/// the body), `admin identity list` shows it as damaged, and the other
/// identity still logs in and lists as ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_identity_secret_fails_like_a_wrong_one_and_lists_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let d = Demo::start(dir.path(), &[]);
    let out = d.admin_ok(&["identity", "create", "--name", "ci"]);
    let cred = testkit::created_credential(&out);
    let (id, secret) = cred.split_once(':').unwrap();
    flip_last_byte(&d.db_url(), SealedColumn::Identity, id).await;

    let (hs, hello) = ClientHandshake::start(id, secret.as_bytes(), None).unwrap();
    drop(hs);
    let r = reqwest::Client::new()
        .post(format!("http://{}{PATH_HANDSHAKE}", d.proc.licensing))
        .body(hello)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "auth_failed", "{body}");
    for internal in ["damaged", "seal", "open", "row"] {
        assert!(!body.contains(internal), "{internal:?} in {body}");
    }

    let (code, out, err) = d.admin(&["identity", "list"]);
    assert_eq!(code, 0, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no identity {name} in {out}"))
            .to_string()
    };
    assert!(line("ci").contains("damaged"), "{out}");
    assert!(line("demo").trim_end().ends_with("ok"), "{out}");
    // The other identity is unaffected.
    d.checkout_demo().await.unwrap();
    d.stop();
}

/// Item 4: after a restart of `serve --demo` on the same data, the demo
/// feature is granted at once, and the admin API refuses no feature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_demo_server_grants_the_demo_feature_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Demo::start(dir.path(), &[]);
    d.checkout_demo().await.unwrap();
    let ident = d.file("demo-identity.txt");
    d.stop();

    let d = Demo::start(dir.path(), &[]);
    let out = d.admin_ok(&["features"]);
    assert!(!out.contains("REFUSED"), "{out}");
    d.checkout_demo()
        .await
        .unwrap_or_else(|e| panic!("the first checkout after the restart: {e}"));
    assert_eq!(d.file("demo-identity.txt"), ident, "the same demo identity");
    let log = d.stop();
    assert!(!log.contains("not trusted"), "{log}");
}

/// Item 5: a trial start with a wrong extra master key (the last key seals,
/// so its canary is written) does not make that key mandatory: a start
/// with the intended keys right after works, and so does one with only the
/// original key; the demo feature is granted throughout. The instance has
/// a fixed id, as in production: its own row from the trial run is not "a
/// running instance with another key".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_start_with_a_wrong_extra_master_key_does_not_record_it_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let start = |keys: &str| {
        Demo::try_start_with(
            dir.path(),
            &["--instance-id", "solo"],
            &[("FLOATLM_MASTER_KEY", keys)],
        )
    };
    let d = start(MASTER_KEY_1).unwrap();
    let url = d.db_url();
    let licence_before = sealed_blob(&url, SealedColumn::License, "DEMO").await;
    d.stop();

    let d = start(&format!("{MASTER_KEY_1},{WRONG_KEY_2}")).unwrap();
    // The trial run's row records its keys (as a live instance would)
    // before it stops.
    wait_row_holds(&url, "solo", "k2").await;
    d.stop();
    let p = pool(&url).await;
    let canaries: Vec<String> =
        sqlx::query_scalar("SELECT key_id FROM keyring_canary ORDER BY key_id")
            .fetch_all(&p)
            .await
            .unwrap();
    p.close().await;
    assert_eq!(canaries, ["k1", "k2"], "setup: the trial wrote a k2 canary");

    let d = start(&format!("{MASTER_KEY_1},{MASTER_KEY_2}"))
        .unwrap_or_else(|e| panic!("the intended keys must be accepted after a trial: {e}"));
    d.checkout_demo().await.unwrap();
    let log = d.stop();
    assert!(log.contains("taking its place"), "{log}");
    let d = start(MASTER_KEY_1)
        .unwrap_or_else(|e| panic!("the original key alone must still start: {e}"));
    d.checkout_demo().await.unwrap();
    d.stop();
    assert_eq!(
        sealed_blob(&url, SealedColumn::License, "DEMO").await,
        licence_before,
        "the license stays sealed under k1"
    );
}

/// Item 5, with instance ids that differ per start (the default): right
/// after the trial run stops it still looks live, so the intended key is
/// refused, with a message that names the wait; the same start goes through
/// once the trial run's 10 s are over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_start_under_another_instance_id_is_forgotten_within_10_s() {
    let dir = tempfile::tempdir().unwrap();
    let start = |keys: &str| Demo::try_start(dir.path(), &[("FLOATLM_MASTER_KEY", keys)]);
    let d = start(MASTER_KEY_1).unwrap();
    let url = d.db_url();
    d.stop();
    let d = start(&format!("{MASTER_KEY_1},{WRONG_KEY_2}")).unwrap();
    let trial = d.proc.instance.clone();
    wait_row_holds(&url, &trial, "k2").await;
    d.stop();

    let intended = format!("{MASTER_KEY_1},{MASTER_KEY_2}");
    let err = match start(&intended) {
        Ok(_) => panic!("right after the trial run its key still counts"),
        Err(e) => e,
    };
    assert!(
        err.contains(&format!("if {trial} has stopped, this key is accepted in")),
        "{err}"
    );
    let t0 = std::time::Instant::now();
    let d = testkit::wait_for(
        "the intended keys to be accepted",
        Duration::from_secs(20),
        || {
            let intended = intended.clone();
            let dir = dir.path().to_path_buf();
            async move {
                let started = Demo::try_start(&dir, &[("FLOATLM_MASTER_KEY", &intended)]).ok();
                if started.is_none() {
                    // Each try is a process start: poll gently.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                started
            }
        },
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    d.checkout_demo().await.unwrap();
    d.stop();
}

/// Item 6: two instances on one MariaDB database, `a` with keys k1,k2 and
/// `b` with only k1: `rotate-key` on `a` is refused, naming `b`, and
/// re-seals nothing; once `b` holds k2 as well, the rotation goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_is_refused_while_a_live_instance_lacks_the_new_key() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let both = format!("{MASTER_KEY_1},{MASTER_KEY_2}");
    let start = |id: &str, keys: &str| {
        testkit::cluster_instance(
            dir.path(),
            &db,
            id,
            "127.0.0.1:0",
            &[],
            &[("FLOATLM_MASTER_KEY", keys)],
        )
    };
    let mut b = start("b", MASTER_KEY_1);
    let a = start("a", &both);
    // An identity created on b is sealed under k1: something to re-seal.
    let out = testkit::admin_cli(&b, &["identity", "create", "--name", "old"]);
    let cred = testkit::created_credential(&out);
    let id = cred.split_once(':').unwrap().0.to_string();
    let sealed = || sealed_blob(&db.url, SealedColumn::Identity, &id);
    let before = sealed().await;
    assert_eq!(Keyring::blob_key_id(&before).unwrap(), "k1");

    wait_row_holds(&db.url, "b", "k1").await;
    let url = format!("http://{}", a.admin);
    let rotate = || {
        floatlm(&[
            "admin",
            "--url",
            &url,
            "--token",
            testkit::CLUSTER_TOKEN,
            "rotate-key",
        ])
    };
    let (code, out, err) = rotate();
    assert_ne!(code, 0, "rotation must be refused: {out}");
    assert!(
        err.contains("instance(s) b do not hold master key 'k2'"),
        "{err}"
    );
    assert_eq!(sealed().await, before, "nothing re-sealed");

    // b restarts holding k2 too: now the rotation goes ahead.
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(30)).is_some());
    drop(b);
    let b = start("b", &both);
    wait_row_holds(&db.url, "b", "k2").await;
    let (code, out, err) = rotate();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("k2"), "{out}");
    let after = sealed().await;
    assert_eq!(
        Keyring::blob_key_id(&after).unwrap(),
        "k2",
        "re-sealed under k2"
    );
    // b still opens it: the identity lists as ok there.
    let out = testkit::admin_cli(&b, &["identity", "list"]);
    assert!(
        out.lines()
            .any(|l| l.contains(" old ") && l.trim_end().ends_with("ok")),
        "{out}"
    );
}
