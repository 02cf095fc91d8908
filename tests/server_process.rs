//! The real binary: start-up, healthz, drain, admin API over HTTP, CLI, and
//! configuration errors. Servers listen on 127.0.0.1 port 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::{wait_for, Kind, Serve, ServerProc, TestDb, MASTER_KEY_1};

/// A server on `kind` with data in `dir/data`; `extra` flags on top.
fn spawn(kind: Kind, dir: &Path, db: Option<&TestDb>, extra: &[&str]) -> ServerProc {
    Serve::in_dir(dir)
        .args(&["--log-level", "info"])
        .on(kind, db)
        .args(extra)
        .start()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn healthz(addr: &str) -> Option<(u16, serde_json::Value)> {
    let r = http()
        .get(format!("http://{addr}/sentinel/ldk/v1/healthz"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_started_together_on_a_fresh_database_both_become_healthy() {
    let db = TestDb::new().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (p1, p2) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(Kind::Mysql, d1.path(), Some(&db), &[]));
        let b = s.spawn(|| spawn(Kind::Mysql, d2.path(), Some(&db), &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    for p in [&p1, &p2] {
        let (status, body) = wait_for("healthz 200", Duration::from_secs(30), || async {
            healthz(&p.licensing).await.filter(|(s, _)| *s == 200)
        })
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["instance"], p.instance.as_str());
        assert_eq!(body["backend"], "mysql");
    }
    assert_ne!(p1.instance, p2.instance);
    // Exactly one of them generated the first admin token.
    let tokens = [d1.path(), d2.path()]
        .iter()
        .filter(|d| d.join("data/admin.token").exists())
        .count();
    assert_eq!(tokens, 1);
}

async fn drain_finishes_in_flight_requests(kind: Kind) {
    let db = TestDb::for_kind(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(kind, dir.path(), db.as_ref(), &["--drain-delay", "1s"]);
    let token = admin_token(dir.path());
    assert_eq!(healthz(&p.licensing).await.unwrap().0, 200);

    // A request in flight: headers and half the body sent before SIGTERM.
    let body = "x".repeat(4000);
    let mut conn = TcpStream::connect(&p.admin).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "POST /admin/v1/licenses HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..2000]
    )
    .unwrap();
    conn.flush().unwrap();

    p.signal(libc::SIGTERM);
    let (status, b) = wait_for(
        "healthz 503 after SIGTERM",
        Duration::from_secs(10),
        || async { healthz(&p.licensing).await.filter(|(s, _)| *s == 503) },
    )
    .await;
    assert_eq!(status, 503);
    assert!(b["reason"].as_str().unwrap().contains("draining"), "{b}");
    // Still serving other requests during the drain delay.
    let st = http()
        .get(format!("http://{}/admin/v1/status", p.admin))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(st.status(), 200);
    assert_eq!(
        st.json::<serde_json::Value>().await.unwrap()["draining"],
        true
    );

    // After the delay the listeners close; the in-flight request still finishes.
    let lic = p.licensing.clone();
    wait_for(
        "licensing listener to close",
        Duration::from_secs(15),
        || {
            let lic = lic.clone();
            async move { TcpStream::connect(&lic).err().map(|_| ()) }
        },
    )
    .await;
    conn.write_all(&body.as_bytes()[2000..]).unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 422"),
        "in-flight request got: {resp}"
    );
    assert!(resp.contains("license_invalid"), "{resp}");
    let code = p
        .wait_exit(Duration::from_secs(15))
        .expect("server exits after draining");
    assert_eq!(code.code(), Some(0), "log:\n{}", p.log());
}

async fn admin_api_roles_errors_and_headers(kind: Kind) {
    let db = TestDb::for_kind(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(kind, dir.path(), db.as_ref(), &["--demo"]);
    let admin = admin_token(dir.path());
    let c = http();
    let url = |path: &str| format!("http://{}{path}", p.admin);

    let r = c
        .post(url("/admin/v1/tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "grafana", "role": "monitor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let monitor = r.json::<serde_json::Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(url("/admin/v1/tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "ops", "role": "operator"}))
        .send()
        .await
        .unwrap();
    let operator = r.json::<serde_json::Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();

    let r = c
        .get(url("/admin/v1/features"))
        .bearer_auth(&monitor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ldk-server-instance"], p.instance.as_str());
    let f = r.json::<serde_json::Value>().await.unwrap();
    assert_eq!(f["features"][0]["name"], "demo");
    assert_eq!(f["features"][0]["total"], 5);

    let check = |r: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(r.status().as_u16(), status);
        assert!(r.headers().contains_key("x-ldk-server-instance"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], code, "{v}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    };
    check(
        c.post(url("/admin/v1/licenses"))
            .bearer_auth(&monitor)
            .body("x")
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    check(
        c.delete(url("/admin/v1/leases/1.0.1"))
            .bearer_auth(&monitor)
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    check(
        c.delete(url("/admin/v1/leases/1.0.1"))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    check(
        c.delete(url("/admin/v1/leases/garbage"))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    check(
        c.get(url("/admin/v1/identities"))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    check(
        c.get(url("/admin/v1/features")).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    check(
        c.get(url("/admin/v1/features"))
            .bearer_auth("flt_nope_nope")
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    check(
        c.post(url("/admin/v1/identities"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    check(
        c.post(url("/admin/v1/tokens"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"name": "x", "role": "root"}))
            .send()
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    check(c.get(url("/nope")).send().await.unwrap(), 404, "not_found").await;
    check(
        c.post(url("/admin/v1/licenses"))
            .bearer_auth(&admin)
            .body("{\"format\":1}")
            .send()
            .await
            .unwrap(),
        422,
        "license_invalid",
    )
    .await;
    // A body over the limit is refused from its declared length, before it
    // is read; the server may close the connection while a client is still
    // writing, so only the head is sent here (a client writing the whole
    // 2 MiB can see a broken pipe instead of the 413).
    let head = oversized_head(&p.admin, &admin, 2 * 1024 * 1024);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let h = c
        .get(format!("http://{}/sentinel/ldk/v1/healthz", p.licensing))
        .send()
        .await
        .unwrap();
    assert_eq!(h.headers()["x-ldk-server-instance"], p.instance.as_str());
    // Revoked tokens stop working.
    let list: serde_json::Value = c
        .get(url("/admin/v1/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "grafana")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        c.delete(url(&format!("/admin/v1/tokens/{id}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    check(
        c.get(url("/admin/v1/features"))
            .bearer_auth(&monitor)
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    // The demo identity string is there and names this server.
    let ident = std::fs::read_to_string(dir.path().join("data/demo-identity.txt")).unwrap();
    assert!(
        ident
            .trim()
            .parse::<floatlm::domain::identity::IdentityString>()
            .is_ok(),
        "{ident}"
    );
}

fn floatlm(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(testkit::bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli_vendor_and_admin_round_trip(kind: Kind) {
    let db = TestDb::for_kind(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, out, err) = floatlm(
        &[
            "vendor",
            "keygen",
            "--out",
            &d.join("vendor").display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("vendor.pub"));
    let (code, _, err) = floatlm(
        &[
            "vendor",
            "keygen",
            "--out",
            &d.join("vendor").display().to_string(),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("refusing to overwrite"), "{err}");
    std::fs::write(d.join("def.toml"), "license_id = \"ACME\"\nserial = 1\ncustomer = \"ACME\"\n[[feature]]\nname = \"cad\"\nseats = 3\n").unwrap();
    let lic = d.join("acme.lic").display().to_string();
    let (code, out, err) = floatlm(
        &[
            "vendor",
            "sign",
            "--key",
            &d.join("vendor/vendor.key").display().to_string(),
            &d.join("def.toml").display().to_string(),
            "-o",
            &lic,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed license ACME"), "{out}");

    let pubkey = d.join("vendor/vendor.pub").display().to_string();
    let p = spawn(kind, d, db.as_ref(), &["--vendor-key", &pubkey]);
    let url = format!("http://{}", p.admin);
    let data = d.join("data").display().to_string();
    let admin = |args: &[&str]| {
        let mut a = vec!["admin", "--url", &url, "--data-dir", &data];
        a.extend_from_slice(args);
        floatlm(&a, &[])
    };
    let (code, out, err) = admin(&["apply", &lic]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created"), "{out}");
    let (_, out, _) = admin(&["apply", &lic]);
    assert!(out.contains("unchanged"), "{out}");
    let (_, out, _) = admin(&["features"]);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["cad", "3", "0", "3"]),
        "{out}"
    );
    let (code, out, err) = admin(&["identity", "create", "--name", "ci", "--expires", "30d"]);
    assert_eq!(code, 0, "{err}");
    let ident = out.lines().last().unwrap();
    assert!(ident.ends_with(&format!("@{}", p.licensing)), "{out}");
    let (_, out, _) = admin(&["--json", "identity", "list"]);
    assert!(
        out.contains("\"ci\"") && !out.contains(ident.split(['@', ':']).nth(1).unwrap()),
        "list never shows secrets: {out}"
    );
    let (code, out, _) = admin(&["verify"]);
    assert_eq!(code, 0);
    assert!(out.contains("integrity ok"), "{out}");
    let (code, _, err) = admin(&["apply", &d.join("def.toml").display().to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("not a floatlm license"), "{err}");
    let (code, _, err) = floatlm(
        &["admin", "--url", &url, "--token", "flt_bad", "features"],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown or revoked admin token"), "{err}");
}

/// Two instances on one database see each other; an operator drains one
/// from the other; a dead one shows as down and can be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_drain_and_remove() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        testkit::cluster_instance(
            dir.path(),
            &db,
            name,
            "127.0.0.1:0",
            &[],
            &[("FLOATLM_CLUSTER_HEARTBEAT", "300ms")],
        )
    };
    let a = start("lic-a");
    let mut b = start("lic-b");
    let c = http();
    let cluster = |admin: String| {
        let c = c.clone();
        async move {
            c.get(format!("http://{admin}/admin/v1/cluster"))
                .bearer_auth(testkit::CLUSTER_TOKEN)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let state_of = |v: &serde_json::Value, id: &str| {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .map(|i| i["state"].as_str().unwrap().to_string())
    };
    let v = wait_for(
        "both instances in the cluster view",
        Duration::from_secs(15),
        || async {
            let v = cluster(a.admin.clone()).await;
            (state_of(&v, "lic-a").as_deref() == Some("up")
                && state_of(&v, "lic-b").as_deref() == Some("up"))
            .then_some(v)
        },
    )
    .await;
    let b_row = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "lic-b")
        .unwrap()
        .clone();
    assert_eq!(b_row["address"], b.licensing.as_str());
    assert_eq!(b_row["admin_address"], b.admin.as_str());
    // Drain b through a's admin API: b's healthz turns 503, a stays healthy.
    let r = c
        .post(format!("http://{}/admin/v1/cluster/lic-b/drain", a.admin))
        .bearer_auth(testkit::CLUSTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, body) = wait_for(
        "lic-b to start draining",
        Duration::from_secs(15),
        || async { healthz(&b.licensing).await.filter(|(s, _)| *s == 503) },
    )
    .await;
    assert!(
        body["reason"].as_str().unwrap().contains("draining"),
        "{body}"
    );
    assert_eq!(healthz(&a.licensing).await.unwrap().0, 200);
    // A live instance cannot be removed; a dead one can.
    let r = c
        .delete(format!("http://{}/admin/v1/cluster/lic-b", a.admin))
        .bearer_auth(testkit::CLUSTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    b.signal(libc::SIGKILL);
    b.wait_exit(Duration::from_secs(10)).unwrap();
    wait_for("lic-b to show as down", Duration::from_secs(15), || async {
        (state_of(&cluster(a.admin.clone()).await, "lic-b").as_deref() == Some("down"))
            .then_some(())
    })
    .await;
    let r = c
        .delete(format!("http://{}/admin/v1/cluster/lic-b", a.admin))
        .bearer_auth(testkit::CLUSTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(state_of(&cluster(a.admin.clone()).await, "lic-b").is_none());
    let out = Command::new(testkit::bin())
        .args([
            "admin",
            "--url",
            &format!("http://{}", a.admin),
            "--token",
            testkit::CLUSTER_TOKEN,
            "cluster",
            "status",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("lic-a") && l.contains(" up ")),
        "{text}"
    );
}

#[test]
fn configuration_errors_name_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (code, _, err) = floatlm(&["serve", "--data-dir", &d, "--lease-ttl", "forever"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("lease_ttl") && err.contains("--lease-ttl") && err.contains("duration"),
        "{err}"
    );
    let (code, _, err) = floatlm(
        &["serve", "--data-dir", &d],
        &[("FLOATLM_LISTEN", "everywhere")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("FLOATLM_LISTEN") && err.contains("IP:PORT"),
        "{err}"
    );
    let ini = dir.path().join("f.ini");
    std::fs::write(
        &ini,
        "[server]\nlisten = 127.0.0.1:0\n[leases]\nlease_tll = 30s\n",
    )
    .unwrap();
    let (code, _, err) = floatlm(&["config", "check", "-c", &ini.display().to_string()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("lease_tll"), "{err}");
    let (code, _, err) = floatlm(
        &[
            "serve",
            "--data-dir",
            &d,
            "--database-url",
            "mysql://root:s3cret@127.0.0.1:3306/x",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("master_key") && !err.contains("s3cret"),
        "{err}"
    );
    let (code, out, err) = floatlm(
        &[
            "config",
            "check",
            "--data-dir",
            &d,
            "--database-url",
            "mysql://root:s3cret@127.0.0.1:3306/x",
        ],
        &[
            ("FLOATLM_MASTER_KEY", MASTER_KEY_1),
            ("FLOATLM_LEASE_TTL", "45s"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("s3cret") && !out.contains(&MASTER_KEY_1[3..]),
        "secrets redacted: {out}"
    );
    assert!(
        out.contains("lease_ttl = 45s") && out.contains("FLOATLM_LEASE_TTL"),
        "{out}"
    );
    let (code, _, err) = floatlm(
        &[
            "serve",
            "--data-dir",
            &d,
            "--vendor-key",
            "/nonexistent/v.pub",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("vendor_keys") && err.contains("/nonexistent/v.pub"),
        "{err}"
    );
}

/// `floatlm serve --data-dir DIR --listen 127.0.0.1:0 --admin-listen
/// 127.0.0.1:0 ARGS` with ENV, expected to refuse its configuration:
/// returns its exit code and stderr; panics if it is still running after
/// 20 s (it started) or was killed by a signal.
fn serve_refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let data = dir.join("data").display().to_string();
    let mut all = vec![
        "serve",
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let mut child = Command::new(testkit::bin())
        .args(&all)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "floatlm {all:?} {env:?} started instead of refusing its configuration: {}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("floatlm {all:?} ended by a signal ({status}): {err}"));
    (code, err)
}

/// Issue 12: values too large for a duration, and a log level that is not
/// one, are configuration errors naming the setting and where it came from
/// (exit 2), not a panic (101) or a server started with something else.
#[test]
fn out_of_range_durations_and_unknown_log_levels_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ini = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let huge_ttl = ini("ttl.ini", "[leases]\nlease_ttl = 99999999999999999999s\n");
    let verbose = ini("log.ini", "[logging]\nlog_level = verbose\n");
    /// What, the flags, the environment, what stderr must say.
    type Case<'a> = (
        &'a str,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        &'a [&'a str],
    );
    let cases: [Case; 5] = [
        (
            "FLOATLM_DRAIN_DELAY=1e20",
            vec![],
            vec![("FLOATLM_DRAIN_DELAY", "1e20")],
            &[
                "drain_delay",
                "FLOATLM_DRAIN_DELAY",
                "'1e20'",
                "not a duration",
            ],
        ),
        (
            "lease_ttl = 99999999999999999999s in a config file",
            vec!["-c", &huge_ttl],
            vec![],
            &[
                "lease_ttl",
                "ttl.ini",
                "99999999999999999999s",
                "not a duration",
            ],
        ),
        (
            "log_level = verbose in a config file",
            vec!["-c", &verbose],
            vec![],
            &["log_level", "log.ini", "'verbose' is not a log level"],
        ),
        (
            "FLOATLM_LOG_LEVEL=verbose",
            vec![],
            vec![("FLOATLM_LOG_LEVEL", "verbose")],
            &[
                "log_level",
                "FLOATLM_LOG_LEVEL",
                "'verbose' is not a log level",
            ],
        ),
        (
            "--log-level verbose",
            vec!["--log-level", "verbose"],
            vec![],
            &["log_level", "--log-level", "'verbose' is not a log level"],
        ),
    ];
    for (what, args, env, says) in cases {
        let (code, err) = serve_refused(d, &args, &env);
        assert!(
            code != 0 && code != 101,
            "{what}: exit {code} (want a configuration error, not success or a panic): {err}"
        );
        assert_eq!(code, 2, "{what}: a configuration error exits 2: {err}");
        assert!(
            err.contains("configuration error") && says.iter().all(|s| err.contains(s)),
            "{what}: stderr names the setting, its source and the problem ({says:?}): {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

testkit::both_backends!(
    drain_finishes_in_flight_requests,
    admin_api_roles_errors_and_headers,
    cli_vendor_and_admin_round_trip
);

/// An instance started with the wrong master key never becomes healthy: it
/// refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_the_wrong_master_key_refuses_to_start() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let good = spawn(Kind::Mysql, dir.path(), Some(&db), &[]);
    assert_eq!(healthz(&good.licensing).await.unwrap().0, 200);
    let err = match Serve::in_dir(dir.path())
        .data_dir(&dir.path().join("other"))
        .mysql(&db)
        .env("FLOATLM_MASTER_KEY", testkit::MASTER_KEY_2)
        .spawn()
    {
        Ok(_) => panic!("an instance with another master key must not start"),
        Err(e) => e,
    };
    assert!(
        err.contains("master key refused") && err.contains("sealed with master key(s) k1"),
        "{err}"
    );
}

/// Sends only the head of a POST declaring `len` body bytes and returns the
/// status line the server answers with.
fn oversized_head(addr: &str, token: &str, len: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /admin/v1/licenses HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}
