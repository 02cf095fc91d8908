//! Unit tests of the configuration: layering, validation, `config check`
//! and the config/floatlm.ini documentation test, all against [`KEYS`].

use super::values::valid_log_filter;
use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

#[test]
fn defaults_are_sane() {
    let c = Layers::default().build().unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8990");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8991");
    assert!(matches!(c.database, DatabaseConfig::Sqlite(_)));
    assert_eq!(c.lease_ttl, Duration::from_secs(60));
    assert_eq!(c.lease_hold, Duration::from_secs(120));
}

#[test]
fn lease_hold_follows_and_bounds_lease_ttl() {
    let mut l = Layers::default();
    l.env(env_of(&[("FLOATLM_LEASE_TTL", "30s")]));
    assert_eq!(l.build().unwrap().lease_hold, Duration::from_secs(60));
    l.env(env_of(&[("FLOATLM_LEASE_HOLD", "30s")]));
    assert_eq!(l.build().unwrap().lease_hold, Duration::from_secs(30));
    for bad in ["29s", "301s"] {
        l.env(env_of(&[("FLOATLM_LEASE_HOLD", bad)]));
        let e = l.build().unwrap_err().to_string();
        assert!(e.contains("lease_hold") && e.contains("lease_ttl"), "{e}");
    }
}

#[test]
fn flags_beat_env_beat_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.ini");
    std::fs::write(
        &p,
        "[server]\nlisten = 127.0.0.1:1\nadmin_listen = 127.0.0.1:2\n[leases]\nlease_ttl = 10s\n",
    )
    .unwrap();
    let mut l = Layers::default();
    l.file(&p).unwrap();
    l.env(env_of(&[
        ("FLOATLM_LISTEN", "127.0.0.1:3"),
        ("FLOATLM_LEASE_TTL", "20s"),
    ]));
    l.flag("listen", Some("127.0.0.1:4"));
    let c = l.build().unwrap();
    assert_eq!(c.listen.port(), 4);
    assert_eq!(c.admin_listen.port(), 2);
    assert_eq!(c.lease_ttl, Duration::from_secs(20));
    assert_eq!(
        c.sources["lease_ttl"],
        Source::Env("FLOATLM_LEASE_TTL".into())
    );
}

#[test]
fn errors_name_key_source_and_rule() {
    let mut l = Layers::default();
    l.env(env_of(&[("FLOATLM_LEASE_TTL", "forever")]));
    let e = l.build().unwrap_err().to_string();
    assert!(
        e.contains("lease_ttl") && e.contains("FLOATLM_LEASE_TTL") && e.contains("duration"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.ini");
    std::fs::write(&p, "[server]\nlistne = 1\n").unwrap();
    let e = Layers::default().file(&p).unwrap_err().to_string();
    assert!(e.contains("listne"), "{e}");
}

#[test]
fn mysql_needs_a_master_key_and_secrets_do_not_print() {
    let mut l = Layers::default();
    l.flag(
        "database_url",
        Some("mysql://root:hunter2@127.0.0.1:3306/floatlm"),
    );
    let e = l.build().unwrap_err().to_string();
    assert!(e.contains("master_key"), "{e}");
    assert!(!e.contains("hunter2"));
    l.flag("master_key", Some(format!("k1:{}", "A".repeat(43) + "=")));
    let c = l.build().unwrap();
    let shown = format!("{c:?}{}", c.describe());
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains(&"A".repeat(43)), "{shown}");
}

/// `master_key_file` goes through the one key loader: a missing or bad
/// file names the setting, where it was set and the file, never key bytes;
/// without a key, the keys are DATA_DIR/master.key's.
#[test]
fn master_key_files_name_the_setting_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mk");
    let mut l = Layers::default();
    l.flag("data_dir", Some(dir.path().display()));
    l.env(env_of(&[(
        "FLOATLM_MASTER_KEY_FILE",
        file.to_str().unwrap(),
    )]));
    let e = l.build().unwrap_err().to_string();
    assert!(
        e.contains("master_key_file")
            && e.contains("FLOATLM_MASTER_KEY_FILE")
            && e.contains("does not exist"),
        "{e}"
    );
    std::fs::write(&file, "k1:aGVsbG8=\n").unwrap();
    let e = l.build().unwrap_err().to_string();
    assert!(
        e.contains(file.to_str().unwrap())
            && e.contains("exactly 32 bytes")
            && !e.contains("aGVsbG8"),
        "{e}"
    );
    let key = crate::crypto::MasterKey::generate("k7").unwrap();
    std::fs::write(&file, format!("{}\n", key.to_spec().as_str())).unwrap();
    let c = l.build().unwrap();
    assert_eq!(c.load_master_keys().unwrap()[0].bytes(), key.bytes());

    let mut l = Layers::default();
    l.flag("data_dir", Some(dir.path().display()));
    let c = l.build().unwrap();
    assert!(c.master_keys.is_none());
    assert!(matches!(
        c.load_master_keys(),
        Err(crate::crypto::keyring::KeyLoadError::NoFile(p)) if p == dir.path().join("master.key")
    ));
    std::fs::copy(&file, c.master_key_path()).unwrap();
    assert_eq!(c.load_master_keys().unwrap()[0].id(), "k7");
}

#[test]
fn config_check_shows_every_key_and_the_sample_file_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t".repeat(20)).unwrap();
    let mut l = Layers::default();
    l.flag(
        "database_url",
        Some("mysql://root:hunter2@127.0.0.1:3306/floatlm"),
    );
    l.flag("master_key", Some(format!("k1:{}", "A".repeat(43) + "=")));
    l.env(env_of(&[(
        "FLOATLM_ADMIN_TOKEN_FILE",
        token.to_str().unwrap(),
    )]));
    for c in [Layers::default().build().unwrap(), l.build().unwrap()] {
        let shown = c.describe();
        for k in KEYS.iter().filter(|k| k.file_of.is_none()) {
            let line = shown
                .lines()
                .find(|line| line.starts_with(&format!("{} = ", k.name)))
                .unwrap_or_else(|| panic!("config check omits {}:\n{shown}", k.name));
            assert!(
                !line.contains("(not set)    ;") || k.name == "admin_token",
                "{line}"
            );
        }
        assert!(!shown.contains("hunter2") && !shown.contains(&"t".repeat(20)));
    }
    let c = l.build().unwrap();
    assert!(
        c.describe().contains(
            "admin_token = [redacted]    ; from environment variable FLOATLM_ADMIN_TOKEN_FILE"
        ),
        "{}",
        c.describe()
    );
    // The sample file names every key (set or commented out), and
    // nothing else.
    let sample = include_str!("../../config/floatlm.ini");
    for k in KEYS {
        let named = sample.lines().any(|line| {
            let line = line.trim_start_matches(';').trim();
            line.split('=').next().map(str::trim) == Some(k.name) && line.contains('=')
        });
        assert!(named, "config/floatlm.ini does not mention {}", k.name);
    }
    let p = dir.path().join("sample.ini");
    std::fs::write(&p, sample).unwrap();
    Layers::default().file(&p).unwrap();
}

#[test]
fn secrets_have_a_file_key_and_never_print() {
    for k in KEYS.iter().filter(|k| k.secret) {
        assert!(
            KEYS.iter().any(|f| f.file_of == Some(k.name)),
            "secret {} has no *_file key",
            k.name
        );
        assert!(k.default.is_none(), "secret {} has a default", k.name);
    }
    for of in KEYS.iter().filter_map(|k| k.file_of) {
        assert!(
            keys::spec(of).secret,
            "{of} has a *_file key but is no secret"
        );
    }
    let mut l = Layers::default();
    l.flag(
        "database_url",
        Some("mysql://root:s3cr3t-db@127.0.0.1:3306/floatlm"),
    );
    l.flag("master_key", Some(format!("k1:{}E=", "A".repeat(42))));
    l.flag("admin_token", Some("s3cr3t-admin-token-xyz"));
    let c = l.build().unwrap();
    let shown = format!("{c:?}{}", c.describe());
    for secret in ["s3cr3t-db", &"A".repeat(42), "s3cr3t-admin-token-xyz"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
    assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
    assert_eq!(parse_duration("-1s"), None);
    assert_eq!(parse_duration("99999999999999999999s"), None);
    assert_eq!(parse_duration("1e20"), None);
    assert_eq!(parse_duration("inf"), None);
}

#[test]
fn log_levels_are_levels() {
    for ok in [
        "info",
        "DEBUG",
        "floatlm=debug,sqlx=warn",
        "warn,floatlm=trace",
        "off",
    ] {
        assert!(valid_log_filter(ok), "{ok}");
    }
    for bad in [
        "verbose",
        "",
        "floatlm=loud",
        "=info",
        "info,,",
        "loud,info",
    ] {
        assert!(!valid_log_filter(bad), "{bad}");
    }
    assert_eq!(
        redact_url("mysql://u:p@h:1/d"),
        "mysql://u:[redacted]@h:1/d"
    );
}

/// Writes `text` as an INI file and reads it into fresh layers.
fn from_file(text: &str) -> Result<Layers, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.ini");
    std::fs::write(&p, text).unwrap();
    let mut l = Layers::default();
    l.file(&p).map(|()| l)
}

#[test]
fn a_repeated_database_url_lists_the_nodes_of_one_cluster() {
    let mut l = from_file(
        "[database]\n\
         database_url = mysql://floatlm:hunter2@db1:3306/floatlm?ssl-mode=disabled\n\
         database_url = mysql://floatlm:hunter2@db2:3307/floatlm?ssl-mode=disabled\n\
         database_url = mariadb://floatlm:hunter2@db3/floatlm?ssl-mode=disabled\n",
    )
    .unwrap();
    l.flag("master_key", Some(format!("k1:{}", "A".repeat(43) + "=")));
    let c = l.build().unwrap();
    let DatabaseConfig::Mysql(url) = &c.database else {
        panic!("not MySQL: {:?}", c.database);
    };
    assert_eq!(
        url.expose(),
        "mysql://floatlm:hunter2@db1:3306,db2:3307,db3/floatlm?ssl-mode=disabled"
    );
    let shown = c.describe();
    let line = shown
        .lines()
        .find(|l| l.starts_with("database_url = "))
        .unwrap();
    assert!(
        line.starts_with(
            "database_url = mysql://floatlm:[redacted]@db1:3306,db2:3307,db3/floatlm?ssl-mode=disabled    ; from config file "
        ),
        "{line}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn repeated_database_urls_must_differ_only_in_their_hosts() {
    for (second, says) in [
        ("mysql://other:hunter2@db2/floatlm", "user or password"),
        ("mysql://floatlm:hunter3@db2/floatlm", "user or password"),
        ("mysql://floatlm:hunter2@db2/another", "database or options"),
        (
            "mysql://floatlm:hunter2@db2/floatlm?ssl-mode=required",
            "database or options",
        ),
        ("sqlite:///tmp/x.db", "not a mysql:// URL"),
        ("mysql://floatlm:hunter2@db1/floatlm", "named twice"),
    ] {
        let e = from_file(&format!(
            "database_url = mysql://floatlm:hunter2@db1/floatlm\ndatabase_url = {second}\n"
        ))
        .err()
        .unwrap_or_else(|| panic!("{second} was accepted"))
        .to_string();
        assert!(
            e.contains("database_url") && e.contains("config file") && e.contains(says),
            "{second}: {e}"
        );
        assert!(!e.contains("hunter"), "{e}");
    }
}

#[test]
fn other_keys_may_be_set_once_only() {
    let e = from_file("[leases]\nlease_ttl = 10s\nlease_ttl = 20s\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("lease_ttl") && e.contains("set 2 times") && e.contains("set it once"),
        "{e}"
    );
}
