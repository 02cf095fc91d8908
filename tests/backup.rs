//! Issue 15, backups: `floatlm admin backup create` through a running
//! instance, `floatlm backup verify`, `floatlm restore` into a fresh
//! database (and `--replace` over a used one), and scheduled backups taken
//! by exactly one instance per interval with retention. Real servers, real
//! MariaDB and SQLite, the real CLI.
//!
//! The promise: a restore never brings a lease back. A client that held a
//! lease before is told it lost it, and no seat is granted while a promise
//! given before the restore may still run (the recorded promises are
//! checked by crates/testkit/src/promise.rs).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testkit::promise::{Findings, InstanceSpec, PromiseCluster, RecClient, Recorder, Target};
use testkit::{
    admin_cli, bin, cli_license, cluster_instance, created_credential, Kind, ServerProc, TestDb,
    CLUSTER_TOKEN, MASTER_KEY_1, MASTER_KEY_2,
};

/// The same id as MASTER_KEY_1, other bytes.
const MASTER_KEY_1_OTHER: &str = "k1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
/// Short leases: a restore's default hold is 5 s + 2 s.
const TTL: &str = "5s";
const HOLD: &str = "10s";

/// Runs the CLI with `env` (and nothing else of ours); returns its output.
fn floatlm(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run floatlm")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, what: &str, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} should have been refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(says),
        "{what}: the refusal should say '{says}': {err}"
    );
}

fn key_env(key: &str) -> Vec<(&'static str, String)> {
    vec![("FLOATLM_MASTER_KEY", key.to_string())]
}

fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `floatlm admin … --json ARGS` against `p` with `token`.
fn admin_json(p: &ServerProc, token: &str, args: &[&str]) -> serde_json::Value {
    let url = format!("http://{}", p.admin);
    let mut all = vec!["admin", "--url", url.as_str(), "--token", token, "--json"];
    all.extend_from_slice(args);
    let out = ok(&floatlm(&all, &[]), &format!("admin {args:?}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("admin {args:?}: {e}: {out}"))
}

/// The secret of a token created through `p`.
fn create_token(p: &ServerProc) -> String {
    let v = admin_json(
        p,
        CLUSTER_TOKEN,
        &["token", "create", "--name", "ops", "--role", "operator"],
    );
    v["secret"].as_str().expect("token secret").to_string()
}

/// What every restored database must show through a new instance `n`:
/// the license, the identities, the token; no lease; the client that held
/// `lease` before is told it lost it (its identity still works: the
/// handshake succeeds); no seat is granted while the restore's hold runs,
/// and one is once it ends.
/// What was there before a restore, to look for after it.
struct Before<'a> {
    license: &'a str,
    identities: usize,
    /// An operator token made before the backup.
    token: &'a str,
    /// The client that held `lease` when the backup was made.
    holder: &'a RecClient,
    lease: &'a str,
    /// Another client, to ask for a seat after the restore.
    other: &'a RecClient,
}

async fn check_restored(n: &ServerProc, before: Before<'_>, restored_at: Instant) {
    let Before {
        license,
        identities,
        token,
        holder,
        lease,
        other,
    } = before;
    let lic = admin_json(n, token, &["license", "list"]);
    assert!(
        lic["licenses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["license_id"] == license),
        "license {license} restored: {lic}"
    );
    let ids = admin_json(n, CLUSTER_TOKEN, &["identity", "list"]);
    assert_eq!(
        ids["identities"].as_array().unwrap().len(),
        identities,
        "identities restored: {ids}"
    );
    // The operator token made before the backup works on the new instance.
    let leases = admin_json(n, token, &["lease", "list"]);
    let held: Vec<&serde_json::Value> = leases["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["revoked"] != true)
        .collect();
    assert!(held.is_empty(), "no lease is restored: {leases}");

    let target = Target::of(n);
    let hb = holder.heartbeat(&target, &[lease.to_string()]).await;
    assert_eq!(
        hb.alive(lease),
        Some(false),
        "the lease held before the restore must be answered lost: {}",
        hb.line(restored_at)
    );
    // The hold: nobody gets a seat until the promises given before the
    // restore have run out (5 s TTL + 2 s), then somebody does.
    let early = other.login(&target, "cad").await;
    if early.sent < restored_at + Duration::from_secs(6) {
        assert!(
            early.granted().is_none(),
            "granted during the restore's hold: {}",
            early.line(restored_at)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = other.login(&target, "cad").await;
        if let Some(l) = r.granted() {
            assert!(
                restored_at.elapsed() >= Duration::from_secs(6),
                "granted {:?} after the restore, before the hold of 7 s ended",
                restored_at.elapsed()
            );
            assert_ne!(l, lease, "a new lease id");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no seat granted within 20 s of the restore: {}",
            r.line(restored_at)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Three instances on MariaDB; a backup through one of them; the cluster
/// dies; restore into a fresh database; a new instance on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_backup_restores_into_a_fresh_database_without_its_leases() {
    let cl = PromiseCluster::start(
        &[
            InstanceSpec::new("a", TTL, HOLD),
            InstanceSpec::new("b", TTL, HOLD),
            InstanceSpec::new("c", TTL, HOLD),
        ],
        &[("cad", 1)],
        2,
    )
    .await;
    let rec = Recorder::new();
    let d = cl.dir.path();
    let (a, b) = (cl.client(&rec, "A", 0), cl.client(&rec, "B", 1));
    let token = create_token(&cl.servers[0]);
    let g = a.login(&cl.targets[0], "cad").await;
    let lease = g
        .granted()
        .unwrap_or_else(|| panic!("setup: {}", g.line(rec.t0())))
        .to_string();

    let file = d.join("cluster.fbk");
    let out = admin_cli(
        &cl.servers[1],
        &["backup", "create", "-o", &file.display().to_string()],
    );
    assert!(out.contains("backup written"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = key_env(MASTER_KEY_1);
    let v = ok(
        &floatlm(
            &["backup", "verify", &file.display().to_string(), "--json"],
            &env_refs(&key),
        ),
        "backup verify",
    );
    let m: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(m["instance"], "b", "{m}");
    assert_eq!(m["backend"], "mysql");
    assert_eq!(m["counts"]["identities"], 2, "{m}");
    assert_eq!(m["counts"]["licenses"], 1, "{m}");
    assert_eq!(m["longest_lease_ttl_ms"], 5000, "{m}");

    // The disaster: every instance dies (their promises still run).
    for s in &cl.servers {
        s.signal(libc::SIGKILL);
    }
    let db2 = TestDb::new().await;
    let mut renv = key.clone();
    renv.push(("FLOATLM_LEASE_TTL", TTL.to_string()));
    let out = ok(
        &floatlm(
            &[
                "restore",
                &file.display().to_string(),
                "--database-url",
                &db2.url,
            ],
            &env_refs(&renv),
        ),
        "restore",
    );
    let restored_at = Instant::now();
    assert!(out.contains("no lease was restored"), "{out}");
    // The format is the backends' common ground: the MariaDB backup
    // restores into SQLite too, every row.
    let lite = format!("sqlite://{}", d.join("from-mysql.db").display());
    ok(
        &floatlm(
            &[
                "restore",
                &file.display().to_string(),
                "--database-url",
                &lite,
            ],
            &env_refs(&renv),
        ),
        "restore of a MariaDB backup into SQLite",
    );
    for (table, n) in counts(&lite).await {
        // A restore ends every lease its usage records show open (leases
        // are not restorable): one `force_release` row with reason
        // `restore` each, beside every restored row.
        let added = if table == "usage_events" {
            restore_ends(&lite).await
        } else {
            0
        };
        assert_eq!(
            Some(n as u64 - added),
            m["counts"][table].as_u64(),
            "{table} restored into SQLite"
        );
    }
    assert!(
        restore_ends(&lite).await >= 1,
        "the lease held at backup time ends in the usage records"
    );
    let pubkey = d.join("vendor/vendor.pub").display().to_string();
    let n = cluster_instance(
        d,
        &db2,
        "n",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &[("FLOATLM_LEASE_TTL", TTL), ("FLOATLM_LEASE_HOLD", HOLD)],
    );
    let before = Before {
        license: "PROMISE",
        identities: 2,
        token: &token,
        holder: &a,
        lease: &lease,
        other: &b,
    };
    check_restored(&n, before, restored_at).await;
    // Never more promises than seats, across the old cluster and the new one.
    Findings::new().finish(&rec, &cl.seats);
}

/// The same on SQLite: one instance, restored into a new database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_backup_restores_into_a_new_file_without_its_leases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "SQL1", "cad", 1);
    let src = format!("sqlite://{}", d.join("src.db").display());
    let env = [("FLOATLM_LEASE_TTL", TTL), ("FLOATLM_LEASE_HOLD", HOLD)];
    let s = cluster_instance(
        d,
        &src,
        "s",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &env,
    );
    admin_cli(&s, &["apply", &lic]);
    let creds: Vec<String> = (0..2)
        .map(|i| {
            created_credential(&admin_cli(
                &s,
                &["identity", "create", "--name", &format!("id{i}")],
            ))
        })
        .collect();
    let token = create_token(&s);
    let rec = Recorder::new();
    let a = RecClient::new(&rec, "A", &creds[0]);
    let b = RecClient::new(&rec, "B", &creds[1]);
    let g = a.login(&Target::of(&s), "cad").await;
    let lease = g
        .granted()
        .unwrap_or_else(|| panic!("setup: {}", g.line(rec.t0())))
        .to_string();
    // Without -o: the suggested name, in the working directory.
    let url = format!("http://{}", s.admin);
    let out = Command::new(bin())
        .current_dir(d)
        .args([
            "admin", "--url", &url, "--token", &token, "backup", "create",
        ])
        .output()
        .unwrap();
    ok(&out, "backup create (operator token)");
    let file = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| floatlm::backup::files::is_backup_name(&n.to_string_lossy()))
        })
        .expect("a backup file named floatlm-backup-TIME.fbk");
    drop(s);

    let dst = format!("sqlite://{}", d.join("restored.db").display());
    let mut renv = key_env(MASTER_KEY_1);
    renv.push(("FLOATLM_LEASE_TTL", TTL.to_string()));
    ok(
        &floatlm(
            &[
                "restore",
                &file.display().to_string(),
                "--database-url",
                &dst,
            ],
            &env_refs(&renv),
        ),
        "restore",
    );
    let restored_at = Instant::now();
    let n = cluster_instance(
        d,
        &dst,
        "n",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &env,
    );
    let before = Before {
        license: "SQL1",
        identities: 2,
        token: &token,
        holder: &a,
        lease: &lease,
        other: &b,
    };
    check_restored(&n, before, restored_at).await;
    let mut seats = std::collections::BTreeMap::new();
    seats.insert("cad".to_string(), 1);
    Findings::new().finish(&rec, &seats);
}

/// A log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A database to restore into, for the refusal tests.
struct Target2 {
    url: String,
    _db: Option<TestDb>,
}

async fn target(kind: Kind, dir: &Path, name: &str) -> Target2 {
    match kind {
        Kind::Sqlite => Target2 {
            url: format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
            _db: None,
        },
        Kind::Mysql => {
            let db = TestDb::new().await;
            Target2 {
                url: db.url.clone(),
                _db: Some(db),
            }
        }
    }
}

/// Every restorable row of the database at `url` (read in-process).
async fn rows(url: &str) -> Vec<Vec<Vec<floatlm::storage::backup::Cell>>> {
    let storage = testkit::open_storage(url).await;
    storage
        .snapshot()
        .await
        .unwrap()
        .tables
        .into_iter()
        .map(|t| t.rows)
        .collect()
}

/// Rows per restorable table of the database at `url` (0 for a table not
/// yet created).
async fn counts(url: &str) -> Vec<(&'static str, i64)> {
    let storage = testkit::open_storage(url).await;
    storage.restorable_rows().await.unwrap()
}

/// Usage rows a restore added to end the leases it did not bring back.
async fn restore_ends(url: &str) -> u64 {
    let storage = testkit::open_storage(url).await;
    let from = chrono::DateTime::<chrono::Utc>::from_timestamp(0, 0).unwrap();
    let to = chrono::Utc::now() + chrono::Duration::days(1);
    let rows = storage.usage_window(from, to, 1_000_000).await.unwrap();
    rows.iter()
        .filter(|e| e.event == "force_release" && e.reason.as_deref() == Some("restore"))
        .count() as u64
}

/// Tampered, truncated, wrong-key, unknown-key, future-version and
/// future-schema files are refused by `backup verify` and `restore`, with
/// a clear error, and change nothing: neither an empty target nor a used
/// one (`--replace`). So are a restore over a used database without
/// `--replace` or without confirmation, and one while an instance serves it.
async fn refused_files_change_nothing(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pubkey, lic) = cli_license(d, "R1", "cad", 3);
    let src = target(kind, d, "src").await;
    let s = cluster_instance(
        d,
        &src.url,
        "s",
        "127.0.0.1:0",
        &["--vendor-key", &pubkey],
        &[],
    );
    admin_cli(&s, &["apply", &lic]);
    admin_cli(&s, &["identity", "create", "--name", "one"]);
    let good = d.join("good.fbk");
    admin_cli(&s, &["backup", "create", "-o", &good.display().to_string()]);
    let bytes = std::fs::read(&good).unwrap();
    let key = key_env(MASTER_KEY_1);
    let key = env_refs(&key);

    // A used target: the good backup restored once.
    let used = target(kind, d, "used").await;
    ok(
        &floatlm(
            &[
                "restore",
                &good.display().to_string(),
                "--database-url",
                &used.url,
                "--hold",
                "0s",
            ],
            &key,
        ),
        "first restore",
    );
    // After a key rotation (k2 appended, then sealing), the file made
    // under k1 still opens while k1 is configured.
    let both = format!("{MASTER_KEY_1},{MASTER_KEY_2}");
    ok(
        &floatlm(
            &["backup", "verify", &good.display().to_string()],
            &[("FLOATLM_MASTER_KEY", both.as_str())],
        ),
        "verify with the old key still configured",
    );
    let before = rows(&used.url).await;
    assert_eq!(before[1].len(), 1, "one license restored");
    let empty = target(kind, d, "empty").await;

    let write = |name: &str, b: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, b).unwrap();
        p.display().to_string()
    };
    let mut tampered = bytes.clone();
    let mid = bytes.len() / 2;
    tampered[mid] ^= 0x20;
    let mut future = bytes.clone();
    future[8..10].copy_from_slice(&2u16.to_be_bytes());
    let ring = floatlm::crypto::Keyring::new(vec![
        floatlm::crypto::MasterKey::parse(MASTER_KEY_1).unwrap()
    ])
    .unwrap();
    let opened =
        floatlm::backup::open(&bytes, &ring, floatlm::storage::backup::known_schema()).unwrap();
    let mut newer = opened.manifest.clone();
    newer.schema_version += 1;
    newer.digest = floatlm::crypto::sha256_hex(b"{\"tables\":[]}");
    let newer = floatlm::backup::seal(&newer, b"{\"tables\":[]}", &ring).bytes;
    let other_key = key_env(MASTER_KEY_1_OTHER);
    let unknown_key = key_env(MASTER_KEY_2);
    // (what, file, environment, what the refusal says)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a tampered byte",
            write("tampered.fbk", &tampered),
            key.clone(),
            "does not authenticate",
        ),
        (
            "a truncated file",
            write("truncated.fbk", &bytes[..bytes.len() - 100]),
            key.clone(),
            "truncated",
        ),
        (
            "the wrong master key",
            good.display().to_string(),
            env_refs(&other_key),
            "is not the key this file was made with",
        ),
        (
            "a missing master key",
            good.display().to_string(),
            env_refs(&unknown_key),
            "which is not configured",
        ),
        (
            "a future format version",
            write("future.fbk", &future),
            key.clone(),
            "written by a newer floatlm",
        ),
        (
            "a future schema",
            write("newer.fbk", &newer),
            key.clone(),
            "written by a newer floatlm",
        ),
    ];
    for (what, file, env, says) in &cases {
        refused(
            &floatlm(&["backup", "verify", file], env),
            &format!("verify of {what}"),
            says,
        );
        refused(
            &floatlm(&["restore", file, "--database-url", &empty.url], env),
            &format!("restore of {what} into an empty database"),
            says,
        );
        refused(
            &floatlm(
                &[
                    "restore",
                    file,
                    "--database-url",
                    &used.url,
                    "--replace",
                    "--yes-replace-everything",
                ],
                env,
            ),
            &format!("restore of {what} over a used database"),
            says,
        );
    }
    assert_eq!(
        rows(&used.url).await,
        before,
        "the used database is unchanged"
    );
    let left = counts(&empty.url).await;
    assert!(
        left.iter().all(|(_, n)| *n == 0),
        "the empty database is still empty: {left:?}"
    );

    // A good file, but not the way a restore may be done.
    let g = good.display().to_string();
    refused(
        &floatlm(&["restore", &g, "--database-url", &used.url], &key),
        "restore over a used database without --replace",
        "is not empty",
    );
    refused(
        &floatlm(
            &["restore", &g, "--database-url", &used.url, "--replace"],
            &key,
        ),
        "restore --replace without confirmation",
        "--yes-replace-everything",
    );
    refused(
        &floatlm(
            &[
                "restore",
                &g,
                "--database-url",
                &src.url,
                "--replace",
                "--yes-replace-everything",
            ],
            &key,
        ),
        "restore over a database an instance serves",
        "still serve",
    );
    refused(
        &floatlm(&["restore", &g], &key),
        "restore without --database-url",
        "--database-url",
    );
    assert_eq!(
        rows(&used.url).await,
        before,
        "the used database is unchanged"
    );

    // And done right: replaced, confirmed.
    ok(
        &floatlm(
            &[
                "restore",
                &g,
                "--database-url",
                &used.url,
                "--replace",
                "--yes-replace-everything",
                "--hold",
                "0s",
            ],
            &key,
        ),
        "restore --replace --yes-replace-everything",
    );
    assert_eq!(rows(&used.url).await, before, "the same state again");
}

/// Three instances take a backup every 2 s into one shared directory,
/// keeping 3: one backup per interval, each written by exactly one
/// instance, the claim of a dead instance taken over, retention honoured,
/// every kept file good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_are_taken_once_per_interval_by_one_instance() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backups = d.join("backups");
    let bdir = backups.display().to_string();
    let (pubkey, lic) = cli_license(d, "S1", "cad", 2);
    let env = [
        ("FLOATLM_BACKUP_INTERVAL", "2s"),
        ("FLOATLM_BACKUP_KEEP", "3"),
        ("FLOATLM_BACKUP_DIR", bdir.as_str()),
        ("FLOATLM_CLUSTER_HEARTBEAT", "1s"),
    ];
    let servers: Vec<ServerProc> = ["x", "y", "z"]
        .iter()
        .map(|id| cluster_instance(d, &db, id, "127.0.0.1:0", &["--vendor-key", &pubkey], &env))
        .collect();
    admin_cli(&servers[0], &["apply", &lic]);

    // A claim left by an instance that died 10 s ago before finishing (it
    // is in no instance row): the next slot but one, claimed ahead of time.
    let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let now_ms: i64 = sqlx::query_scalar("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000 AS SIGNED)")
        .fetch_one(&pool)
        .await
        .unwrap();
    let ghost_slot = now_ms.div_euclid(2000) + 2;
    sqlx::query(
        "INSERT INTO backup_claims (slot, instance_id, claimed_at)
         VALUES (?, 'ghost', NOW(6) - INTERVAL 10 SECOND)",
    )
    .bind(ghost_slot)
    .execute(&pool)
    .await
    .unwrap();

    // Until six slots after the ghost's have been written.
    let deadline = Instant::now() + Duration::from_secs(40);
    let listed = loop {
        let v = admin_json(&servers[1], CLUSTER_TOKEN, &["backup", "list"]);
        let claims = v["claims"].as_array().cloned().unwrap_or_default();
        let done = claims
            .iter()
            .filter(|c| c["outcome"] == "ok" && c["slot"].as_i64() > Some(ghost_slot))
            .count();
        if done >= 6 {
            break claims;
        }
        assert!(
            Instant::now() < deadline,
            "six scheduled backups after slot {ghost_slot} within 40 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ghost = listed
        .iter()
        .find(|c| c["slot"].as_i64() == Some(ghost_slot))
        .unwrap_or_else(|| panic!("the ghost's claim is listed: {listed:?}"));
    assert_eq!(
        ghost["outcome"], "ok",
        "the ghost's slot was taken over: {ghost}"
    );
    assert_ne!(ghost["instance_id"], "ghost");

    // Stop the instances (SIGTERM: a backup in progress finishes first),
    // then look at what they left.
    let mut servers = servers;
    for s in &servers {
        s.signal(libc::SIGTERM);
    }
    for s in &mut servers {
        assert!(
            s.wait_exit(Duration::from_secs(20)).is_some(),
            "instance {} did not stop",
            s.instance
        );
    }
    let claims: Vec<(i64, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT slot, instance_id, outcome, file FROM backup_claims ORDER BY slot DESC",
    )
    .fetch_all(&pool)
    .await
    .unwrap();

    // Each slot once, by one instance: the claim table (one row per slot by
    // its primary key), and the logs (an instance logs every backup it
    // writes).
    let mut written: Vec<String> = Vec::new();
    for s in &servers {
        for line in s
            .log()
            .lines()
            .map(strip_ansi)
            .filter(|l| l.contains("scheduled backup written"))
        {
            let slot = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("slot="))
                .unwrap_or_else(|| panic!("no slot in {line}"))
                .to_string();
            written.push(slot);
        }
    }
    let total = written.len();
    written.sort();
    written.dedup();
    assert_eq!(written.len(), total, "no slot written twice: {written:?}");
    let ok_claims = claims
        .iter()
        .filter(|c| c.2.as_deref() == Some("ok"))
        .count();
    assert_eq!(
        total, ok_claims,
        "every backup written is one ok claim: {written:?} {claims:?}"
    );
    assert!(total >= 7, "at least seven backups written: {written:?}");
    // One per interval: no slot skipped from the first to the last.
    let mut ok_slots: Vec<i64> = claims
        .iter()
        .filter(|c| c.2.as_deref() == Some("ok"))
        .map(|c| c.0)
        .collect();
    ok_slots.sort_unstable();
    let span = ok_slots.last().unwrap() - ok_slots.first().unwrap() + 1;
    assert_eq!(
        span,
        ok_slots.len() as i64,
        "a backup in every interval: {ok_slots:?}"
    );
    let by: std::collections::BTreeSet<&str> = claims.iter().map(|c| c.1.as_str()).collect();
    eprintln!("backups written by {by:?}");

    // Retention: 3 files, those of the newest claims, each one good.
    let files = floatlm::backup::files::list(&backups).unwrap();
    assert_eq!(files.len(), 3, "backup_keep = 3: {files:?}");
    let newest: Vec<&str> = claims
        .iter()
        .filter(|c| c.2.as_deref() == Some("ok"))
        .filter_map(|c| c.3.as_deref())
        .take(3)
        .collect();
    for f in &files {
        assert!(
            newest.contains(&f.name.as_str()),
            "{} is one of the newest backups {newest:?}",
            f.name
        );
        let p = backups.join(&f.name);
        ok(
            &floatlm(
                &["backup", "verify", &p.display().to_string()],
                &[("FLOATLM_MASTER_KEY", MASTER_KEY_1)],
            ),
            "verify of a scheduled backup",
        );
    }
    pool.close().await;
}

testkit::both_backends!(refused_files_change_nothing);
