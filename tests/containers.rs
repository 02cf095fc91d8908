//! The container deployment: Dockerfile, docker-compose.yml, the compose
//! NGINX config, the secrets script and the `floatlm health` check they use.
//! No Docker daemon is needed; the compose file is validated by Compose.

use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{bin, Serve};

/// Asserts a command succeeded, showing its output when not.
fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `docker compose` (plugin) or `docker-compose` (Debian's package), with
/// the arguments that come after it.
fn compose() -> Command {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        let mut c = Command::new("docker");
        c.arg("compose");
        return c;
    }
    let v1 = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        v1,
        "neither `docker compose` nor `docker-compose` is installed: apt-get install -y docker-compose (scripts/test.sh installs it)"
    );
    Command::new("docker-compose")
}

#[test]
fn compose_validates_the_compose_file() {
    let out = compose()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .env("FLOATLM_VENDOR_KEYS", "")
        .output()
        .unwrap();
    assert_ok(&out, "compose config");
}

#[test]
fn the_compose_cluster_has_three_instances_a_database_and_nginx_all_health_checked() {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc.apply_merge().unwrap();
    let services = doc["services"].as_mapping().unwrap();
    for name in ["db", "floatlm-1", "floatlm-2", "floatlm-3", "nginx"] {
        let s = &doc["services"][name];
        assert!(s.is_mapping(), "service {name} is missing");
        assert!(
            s["healthcheck"]["test"].is_sequence(),
            "service {name} has no healthcheck"
        );
    }
    let mut ids = Vec::new();
    for n in 1..=3 {
        let s = &doc["services"][format!("floatlm-{n}").as_str()];
        let env = &s["environment"];
        ids.push(env["FLOATLM_INSTANCE_ID"].as_str().unwrap().to_string());
        assert_eq!(
            env["FLOATLM_DATABASE_URL_FILE"].as_str(),
            Some("/run/floatlm-secrets/database_url"),
            "every instance shares the one database"
        );
        assert_eq!(
            s["depends_on"]["db"]["condition"].as_str(),
            Some("service_healthy")
        );
        assert!(
            s["healthcheck"]["test"][1].as_str() == Some("floatlm"),
            "instances are checked by `floatlm health`"
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct instance ids");
    for dep in ["floatlm-1", "floatlm-2", "floatlm-3"] {
        assert_eq!(
            doc["services"]["nginx"]["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    assert_eq!(services.len(), 6, "secrets, db, three instances, nginx");
}

#[test]
fn the_dockerfile_builds_from_files_that_exist_and_runs_as_non_root() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let mut user = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("COPY ") {
            if rest.starts_with("--from=") || rest.starts_with(". ") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    repo(src).exists(),
                    "Dockerfile copies {src}, which is missing"
                );
            }
        }
        if let Some(u) = line.strip_prefix("USER ") {
            user = Some(u.to_string());
        }
    }
    let user = user.expect("the Dockerfile sets USER");
    assert!(!user.starts_with('0') && user != "root", "runs as {user}");
    assert!(
        text.contains("FROM rust:") && text.contains("FROM debian:"),
        "multi-stage: build with Rust, run on Debian slim"
    );
    assert!(
        text.contains("CMD [\"floatlm\", \"health\""),
        "health check"
    );
}

#[test]
fn the_dockerfile_fetches_with_every_workspace_member() {
    // Its dependency stage copies the manifests before the sources; cargo
    // refuses a workspace with a member's manifest missing.
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let fetch = &text[..text.find("cargo fetch").expect("a cargo fetch stage")];
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo("Cargo.toml")).unwrap()).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let missing: Vec<&str> = members
        .iter()
        .map(|m| m.as_str().unwrap())
        .filter(|m| *m != ".")
        .filter(|m| !fetch.contains(&format!("COPY {m}/Cargo.toml {m}/Cargo.toml")))
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile copies no manifest of {missing:?} before `cargo fetch`"
    );
}

#[test]
fn the_secrets_script_makes_a_config_that_passes_config_check_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("s");
    let run = || {
        let out = Command::new("sh")
            .arg(repo("deploy/init-secrets.sh"))
            .arg(&secrets)
            .env("FLOATLM_DB_HOST", "127.0.0.1")
            .output()
            .unwrap();
        assert_ok(&out, "deploy/init-secrets.sh");
    };
    run();
    let read = |f: &str| std::fs::read_to_string(secrets.join(f)).unwrap();
    let (key, url) = (read("master_key"), read("database_url"));
    assert!(url.starts_with("mysql://floatlm:") && url.contains("@127.0.0.1:3306/floatlm"));
    // Read-only files; as root they belong to the floatlm and mysql users.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(secrets.join("master_key")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o400);
    let out = Command::new(bin())
        .args(["config", "check"])
        .env_clear()
        .env("FLOATLM_MASTER_KEY_FILE", secrets.join("master_key"))
        .env("FLOATLM_ADMIN_TOKEN_FILE", secrets.join("admin_token"))
        .env("FLOATLM_DATABASE_URL_FILE", secrets.join("database_url"))
        .env("FLOATLM_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ok(&out, "floatlm config check");
    assert!(
        !stdout.contains(key.trim().split(':').nth(1).unwrap()),
        "key redacted"
    );
    // Running it again keeps the files (the key must never change).
    run();
    assert_eq!(read("master_key"), key);
    assert_eq!(read("database_url"), url);
}

#[test]
fn the_compose_nginx_config_passes_nginx_t() {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("nginx is not installed: apt-get install -y nginx-light (scripts/test.sh installs it)")
        });
    let dir = tempfile::tempdir().unwrap();
    // The compose service names do not resolve here: loopback stands in.
    let conf = std::fs::read_to_string(repo("deploy/nginx.conf"))
        .unwrap()
        .replace("floatlm-1:8990", "127.0.0.1:18990")
        .replace("floatlm-2:8990", "127.0.0.1:18992")
        .replace("floatlm-3:8990", "127.0.0.1:18994")
        .replace(
            "error_log /dev/stderr",
            &format!("error_log {}/e.log", dir.path().display()),
        );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let out = Command::new(nginx)
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .arg("-g")
        .arg(format!("pid {}/nginx.pid;", dir.path().display()))
        .output()
        .unwrap();
    assert_ok(&out, "nginx -t");
}

#[test]
fn floatlm_health_exits_0_for_a_serving_instance_and_1_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::in_dir(dir.path()).start();
    let out = Command::new(bin())
        .args(["health", "-s", &server.licensing])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\":\"ok\""));
    // Nothing listens on port 1.
    let out = Command::new(bin())
        .args(["health", "-s", "127.0.0.1:1", "--timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}
