//! `floatlm client config check` and the CLI's use of the client file: each
//! value with its source (file and line, variable, flag, default), secrets
//! masked, errors naming file, line and key (exit 2); `query` and
//! `checkout` connect as the file says, and `checkout` shows each server's
//! group and the group in use.

use std::process::Command;
use testkit::{bin, DemoServer};

fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("FLOATLM_IDENTITY")
        .env("HOME", "/nonexistent")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line_of<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[test]
fn config_check_shows_values_sources_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("client.ini");
    std::fs::write(
        &ini,
        "[client]\nidentity = abc:topsecret\nservers = eu:h1:7000, us:https://h3\ngroup = eu\nauth_data = hunter2\n",
    )
    .unwrap();
    let p = ini.display().to_string();
    let (code, out, err) = cli(
        &["client", "config", "check", "--ca-file", &p],
        &[
            ("FLOATLM_CLIENT_CONFIG", &p),
            ("FLOATLM_RETRY_INTERVAL", "5s"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "client file: {p} (named by FLOATLM_CLIENT_CONFIG)"
        )),
        "{out}"
    );
    assert!(
        line_of(&out, "identity").contains("abc:****")
            && line_of(&out, "identity").ends_with(&format!("{p} line 2"))
    );
    assert!(line_of(&out, "servers").contains("eu:h1:7000, us:https://h3"));
    assert!(line_of(&out, "group").ends_with(&format!("{p} line 4")));
    assert!(
        line_of(&out, "retry_interval").ends_with("environment variable FLOATLM_RETRY_INTERVAL")
    );
    assert!(line_of(&out, "ca_file").ends_with("flag --ca-file"));
    assert!(
        line_of(&out, "retry_count").contains("unlimited")
            && line_of(&out, "retry_count").ends_with("built-in default")
    );
    assert!(line_of(&out, "auth_data").contains("(set, 7 characters)"));
    assert!(
        !out.contains("topsecret") && !out.contains("hunter2"),
        "{out}"
    );
    assert!(
        out.contains("eu       h1:7000  identity abc  (own group)"),
        "{out}"
    );
    assert!(
        out.contains("https://h3:443") && out.contains("other group"),
        "{out}"
    );
    assert!(out.contains("client configuration is valid"));

    // Errors: exit 2, file, line and key named.
    std::fs::write(&ini, "group = eu\nretry_count = many\n").unwrap();
    let (code, _, err) = cli(
        &["client", "config", "check"],
        &[("FLOATLM_CLIENT_CONFIG", &p)],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{p} line 2: key 'retry_count'")),
        "{err}"
    );
    std::fs::write(&ini, "colour = blue\n").unwrap();
    let (code, _, err) = cli(&["query"], &[("FLOATLM_CLIENT_CONFIG", &p)]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{p} line 1: unknown key 'colour'")),
        "{err}"
    );
    let (code, _, err) = cli(
        &["client", "config", "check"],
        &[("FLOATLM_CLIENT_CONFIG", "/nonexistent/c.ini")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read client config file /nonexistent/c.ini"),
        "{err}"
    );
    // No file, no identity: says where it looked.
    let (code, out, err) = cli(&["client", "config", "check"], &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains("client file: none") && err.contains("no server given"),
        "{out} {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_checkout_from_the_client_file_show_the_group() {
    let demo = DemoServer::start(&[]);
    let (cred, addr) = demo.identity.rsplit_once('@').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("client.ini");
    std::fs::write(
        &ini,
        format!("identity = {cred}\nservers = eu:{addr}\ngroup = eu\nretry_interval = 5s\n"),
    )
    .unwrap();
    let p = ini.display().to_string();
    let (code, out, err) = cli(&["query", "demo"], &[("FLOATLM_CLIENT_CONFIG", &p)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("demo"), "{out}");
    let (code, _, err) = cli(
        &["checkout", "demo", "--hold", "0.2"],
        &[("FLOATLM_CLIENT_CONFIG", &p)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("server {addr} group eu: ok (in use)")),
        "{err}"
    );
    assert!(err.contains("affinity group eu; group in use: eu"), "{err}");
    // FLOATLM_IDENTITY alone still works (no file), as before the file.
    let (code, _, err) = cli(&["query"], &[("FLOATLM_IDENTITY", &demo.identity)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(demo.used().await, 0);
}
