//! A rolling upgrade to this change. docs/operations.md: "Instances of
//! adjacent versions run side by side against one database, so upgrade one
//! instance at a time with no downtime … older instances keep working with
//! the new tables present." There are no release notes saying otherwise.
//!
//! The old instance is the commit before the seat-promise change (0cf4dc6),
//! built by `scripts/attack-build-old.sh` as `target/debug/floatlm-old`.
//! It runs first (as in an upgrade); the upgraded instance starts on the
//! same database and applies migration 0005 (lease_nonce, promise_ms, and
//! drops lease_revocations, which the old instance reads).
//!
//! * The old instance renews with `expires_at = now + its lease_hold` (no
//!   GREATEST), so it shortens an expiry the new instance promised from.
//! * The old instance's lease ids have three parts; the new ones four, which
//!   the old instance cannot parse: a client that fails over from a new to
//!   an old instance is told its healthy lease is gone.

mod common;

use common::promise::{Findings, Recorder, Target};
use common::{admin_cli, cluster_instance, created_credential, floatlm_ok, ServerProc, TestDb};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OLD_BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/debug/floatlm-old");

/// `floatlm-old serve …` with the arguments `cluster_instance` gives.
fn old_instance(
    dir: &std::path::Path,
    db: &TestDb,
    id: &str,
    pubkey: &str,
    env: &[(&str, &str)],
) -> ServerProc {
    assert!(
        std::path::Path::new(OLD_BIN).exists(),
        "{OLD_BIN} is missing: run scripts/attack-build-old.sh first (about a minute)"
    );
    let data = dir.join(id).display().to_string();
    let stderr_log = dir.join(format!("server-{id}.log"));
    let mut cmd = Command::new(OLD_BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--database-url",
        &db.url,
        "--instance-id",
        id,
        "--drain-delay",
        "0s",
        "--vendor-key",
        pubkey,
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("FLOATLM_MASTER_KEY", common::MASTER_KEY_1)
    .env("FLOATLM_ADMIN_TOKEN", common::CLUSTER_TOKEN)
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&stderr_log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(" listening licensing=") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "old instance did not start: {}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            )
        });
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    ServerProc {
        licensing: field("licensing="),
        admin: field("admin="),
        instance: id.to_string(),
        child,
        stderr_log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_instance_in_a_rolling_upgrade_shortens_what_a_new_one_promised() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vdir = d.join("vendor").display().to_string();
    floatlm_ok(&["vendor", "keygen", "--out", &vdir]);
    let def = d.join("l.toml");
    std::fs::write(&def, "license_id = \"UP\"\nserial = 1\ncustomer = \"t\"\n[[feature]]\nname = \"cad\"\nseats = 1\n").unwrap();
    let lic = d.join("l.lic").display().to_string();
    floatlm_ok(&[
        "vendor",
        "sign",
        "--key",
        &format!("{vdir}/vendor.key"),
        &def.display().to_string(),
        "-o",
        &lic,
    ]);
    let pubkey = format!("{vdir}/vendor.pub");

    // The old instance runs first; the upgraded one joins (and migrates).
    let old = old_instance(
        d,
        &db,
        "old",
        &pubkey,
        &[("FLOATLM_LEASE_TTL", "5s"), ("FLOATLM_LEASE_HOLD", "5s")],
    );
    let new = cluster_instance(
        d,
        &db,
        "new",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &[("FLOATLM_LEASE_TTL", "30s"), ("FLOATLM_LEASE_HOLD", "60s")],
    );
    admin_cli(&new, &["apply", &lic]);
    let cred = |n: &str| created_credential(&admin_cli(&new, &["identity", "create", "--name", n]));
    let (cc, dc) = (cred("c"), cred("d"));
    let (o, n) = (Target::of(&old), Target::of(&new));

    let rec = Recorder::new();
    let t0 = rec.t0();
    let c = common::promise::RecClient::new(&rec, "C", &cc);
    let dd = common::promise::RecClient::new(&rec, "D", &dc);
    let mut f = Findings::new();

    let g = c.login(&o, "cad").await;
    let lease = g
        .granted()
        .unwrap_or_else(|| panic!("setup: {}", g.line(t0)))
        .to_string();
    let h1 = c.heartbeat(&n, std::slice::from_ref(&lease)).await;
    eprintln!("{}", h1.line(t0));
    let h2 = c.heartbeat(&o, std::slice::from_ref(&lease)).await;
    eprintln!("{}", h2.line(t0));
    // C stops here (a crash). D asks through the new instance.
    let until = Instant::now() + Duration::from_secs(15);
    let mut got = None;
    while Instant::now() < until {
        let r = dd.login(&n, "cad").await;
        if r.granted().is_some() {
            got = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(r) = &got {
        eprintln!("{}", r.line(t0));
        // D fails over to the old instance: its healthy lease must stay alive.
        let dl = r.granted().unwrap().to_string();
        let hb = dd.heartbeat(&o, std::slice::from_ref(&dl)).await;
        f.expect(
            hb.alive(&dl) == Some(true),
            format!(
                "D's lease {dl} is live; the old instance must not answer it dead: {}",
                hb.line(t0)
            ),
        );
    }
    let seats: BTreeMap<String, usize> = [("cad".to_string(), 1)].into();
    f.finish(&rec, &seats);
    drop((old, new));
}
