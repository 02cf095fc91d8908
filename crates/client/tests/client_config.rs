//! The client configuration file: every key from the file, every key's
//! environment variable overriding it, flags over both, where each value
//! came from, secrets masked, and the errors (unreadable, malformed,
//! unknown key, bad value) naming file, line and key.

use floatlm_client::{ClientConfig, ClientError, Options, Source};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    move |k| m.get(k).cloned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn load(file: &Path, extra: &[(&str, String)]) -> Result<ClientConfig, ClientError> {
    let mut pairs = vec![("FLOATLM_CLIENT_CONFIG", file.display().to_string())];
    pairs.extend_from_slice(extra);
    ClientConfig::load_with(env_of(&pairs))
}

fn source_of(cfg: &ClientConfig, key: &str) -> String {
    cfg.report()
        .into_iter()
        .find(|(k, _, _)| *k == key)
        .unwrap()
        .2
}

fn shown(cfg: &ClientConfig, key: &str) -> String {
    cfg.report()
        .into_iter()
        .find(|(k, _, _)| *k == key)
        .unwrap()
        .1
}

#[test]
fn every_key_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", "-----BEGIN CERTIFICATE-----\n");
    let f = write(
        dir.path(),
        "client.ini",
        &format!(
            "# comment\n; comment\n[client]\nidentity = abc:topsecret\nservers = eu:h1:7000, eu:h2:7000, us:https://h3\n\
             group = eu\nretry_interval = 2s\nretry_count = 7\nrequest_timeout = 1500ms\nca_file = {}\n\
             insecure_skip_tls_verify = false\nauth_mech = token\nauth_data = hunter2\n",
            ca.display()
        ),
    );
    let cfg = load(&f, &[]).unwrap();
    let servers = cfg.servers().unwrap();
    assert_eq!(servers.len(), 3);
    assert_eq!(servers[0].identity_id, "abc");
    assert_eq!(
        (
            servers[0].address.as_str(),
            servers[0].group.as_deref(),
            servers[0].tls
        ),
        ("h1:7000", Some("eu"), false)
    );
    assert_eq!(
        (
            servers[2].address.as_str(),
            servers[2].group.as_deref(),
            servers[2].tls
        ),
        ("h3:443", Some("us"), true)
    );
    let o = cfg.options(Options::default());
    assert_eq!(o.group.as_deref(), Some("eu"));
    assert_eq!(o.retry_interval, Duration::from_secs(2));
    assert_eq!(o.max_retries, Some(7));
    assert_eq!(o.request_timeout, Duration::from_millis(1500));
    assert_eq!(o.ca_file.as_deref(), Some(ca.as_path()));
    assert!(!o.insecure_skip_tls_verify);
    assert_eq!(
        (o.auth.mech.as_str(), o.auth.data.as_str()),
        ("token", "hunter2")
    );
    // Where each came from: file and line.
    let path = f.display().to_string();
    assert_eq!(source_of(&cfg, "identity"), format!("{path} line 4"));
    assert_eq!(source_of(&cfg, "auth_data"), format!("{path} line 13"));
    // Secrets never shown, in the report or Debug.
    assert_eq!(shown(&cfg, "identity"), "abc:****");
    assert_eq!(shown(&cfg, "auth_data"), "(set, 7 characters)");
    let all = format!("{:?} {:?}", cfg.report(), cfg);
    assert!(
        !all.contains("topsecret") && !all.contains("hunter2"),
        "{all}"
    );
    assert_eq!(cfg.file().unwrap().0, f.as_path());
}

#[test]
fn keys_at_the_top_and_whole_identity_strings_and_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.ini", "identity = abc:s@h1:8990, abc:s@https://h2\ninsecure_skip_tls_verify = yes\nretry_count = unlimited\n");
    let cfg = load(&f, &[]).unwrap();
    let s = cfg.servers().unwrap();
    assert_eq!(
        (s[0].address.as_str(), s[1].address.as_str(), s[1].tls),
        ("h1:8990", "h2:443", true)
    );
    let o = cfg.options(Options::default());
    assert!(o.insecure_skip_tls_verify);
    assert_eq!(o.max_retries, None);
    assert_eq!(
        shown(&cfg, "identity"),
        "abc:****@h1:8990, abc:****@https://h2"
    );
}

#[test]
fn environment_overrides_every_key_and_flags_override_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", "x");
    let ca2 = write(dir.path(), "ca2.pem", "x");
    let f = write(
        dir.path(),
        "c.ini",
        &format!(
            "identity = abc:one\nservers = eu:h1:1\ngroup = eu\nretry_interval = 2s\nretry_count = 1\nrequest_timeout = 2s\n\
             ca_file = {}\ninsecure_skip_tls_verify = false\nauth_mech = a\nauth_data = b\n",
            ca.display()
        ),
    );
    let env = [
        ("FLOATLM_IDENTITY", "xyz:two".to_string()),
        ("FLOATLM_SERVERS", "us:h9:9, eu:h8:8".to_string()),
        ("FLOATLM_GROUP", "us".to_string()),
        ("FLOATLM_RETRY_INTERVAL", "1m".to_string()),
        ("FLOATLM_RETRY_COUNT", "9".to_string()),
        ("FLOATLM_REQUEST_TIMEOUT", "3".to_string()),
        ("FLOATLM_CA_FILE", ca2.display().to_string()),
        ("FLOATLM_INSECURE_SKIP_TLS_VERIFY", "true".to_string()),
        ("FLOATLM_AUTH_MECH", "m2".to_string()),
        ("FLOATLM_AUTH_DATA", "d2".to_string()),
    ];
    let mut cfg = load(&f, &env).unwrap();
    for (key, var) in floatlm_client::client_config_keys() {
        assert_eq!(
            source_of(&cfg, key),
            format!("environment variable {var}"),
            "{key}"
        );
    }
    let s = cfg.servers().unwrap();
    assert_eq!(
        (s[0].identity_id.as_str(), s[0].address.as_str()),
        ("xyz", "h9:9")
    );
    let o = cfg.options(Options::default());
    assert_eq!(o.group.as_deref(), Some("us"));
    assert_eq!(o.retry_interval, Duration::from_secs(60));
    assert_eq!(o.max_retries, Some(9));
    assert_eq!(o.request_timeout, Duration::from_secs(3));
    assert_eq!(o.ca_file.as_deref(), Some(ca2.as_path()));
    assert!(o.insecure_skip_tls_verify);
    assert_eq!((o.auth.mech.as_str(), o.auth.data.as_str()), ("m2", "d2"));
    // An empty variable is no override.
    let cfg2 = load(&f, &[("FLOATLM_GROUP", String::new())]).unwrap();
    assert!(source_of(&cfg2, "group").contains("line 3"));
    // Flags beat the environment.
    cfg.flag("group", "--group", Some("eu")).unwrap();
    cfg.flag("servers", "-s", Some("eu:h7:7")).unwrap();
    assert_eq!(source_of(&cfg, "group"), "flag --group");
    assert_eq!(cfg.servers().unwrap()[0].address, "h7:7");
    assert_eq!(cfg.options(Options::default()).group.as_deref(), Some("eu"));
    // Values not set anywhere keep the caller's options.
    let none = ClientConfig::load_with(env_of(&[("HOME", "/nonexistent".into())])).unwrap();
    assert!(none.file().is_none());
    assert_eq!(source_of(&none, "retry_interval"), "built-in default");
    let base = Options {
        retry_interval: Duration::from_millis(700),
        ..Options::default()
    };
    assert_eq!(
        none.options(base).retry_interval,
        Duration::from_millis(700)
    );
}

#[test]
fn default_locations_per_user_then_system() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("xdg/floatlm")).unwrap();
    let f = write(
        &dir.path().join("xdg/floatlm"),
        "client.ini",
        "group = eu\nservers = eu:h:1\nidentity = a:b\n",
    );
    let cfg = ClientConfig::load_with(env_of(&[(
        "XDG_CONFIG_HOME",
        dir.path().join("xdg").display().to_string(),
    )]))
    .unwrap();
    assert_eq!(cfg.file().unwrap().0, f.as_path());
    std::fs::create_dir_all(dir.path().join("home/.config/floatlm")).unwrap();
    let f = write(
        &dir.path().join("home/.config/floatlm"),
        "client.ini",
        "group = us\n",
    );
    let cfg = ClientConfig::load_with(env_of(&[(
        "HOME",
        dir.path().join("home").display().to_string(),
    )]))
    .unwrap();
    assert_eq!(cfg.file().unwrap().0, f.as_path());
    assert_eq!(shown(&cfg, "group"), "us");
}

fn error_of(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.ini", text);
    let e = load(&f, &[])
        .err()
        .unwrap_or_else(|| panic!("accepted: {text}"));
    assert!(matches!(e, ClientError::Config(_)), "{e:?}");
    (e.to_string(), f.display().to_string())
}

#[test]
fn errors_name_file_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("group = eu\nbogus = 1\n", "line 2", "unknown key 'bogus'"),
        (
            "identity = a:b\nthis is not a key\n",
            "line 2",
            "malformed line",
        ),
        (
            "[server]\ngroup = eu\n",
            "line 1",
            "unknown section [server]",
        ),
        ("[client\n", "line 1", "malformed section header"),
        (
            "\nretry_interval = soon\n",
            "line 2",
            "key 'retry_interval': 'soon' is not a duration",
        ),
        ("retry_interval = 0s\n", "line 1", "out of range"),
        (
            "request_timeout = 900s\n",
            "line 1",
            "key 'request_timeout'",
        ),
        (
            "retry_count = -1\n",
            "line 1",
            "key 'retry_count': '-1' is not a whole number or 'unlimited'",
        ),
        (
            "insecure_skip_tls_verify = maybe\n",
            "line 1",
            "key 'insecure_skip_tls_verify'",
        ),
        (
            "ca_file = /nonexistent/ca.pem\n",
            "line 1",
            "key 'ca_file': /nonexistent/ca.pem: no such file",
        ),
        ("group = e u\n", "line 1", "key 'group'"),
        ("servers = h1\n", "line 1", "key 'servers': 'h1'"),
        ("servers = eu:h1:99999\n", "line 1", "key 'servers'"),
        ("identity = a\n", "line 1", "key 'identity'"),
        ("identity = a:b@nowhere\n", "line 1", "key 'identity'"),
    ];
    for (text, line, what) in cases {
        let (m, path) = error_of(text);
        assert!(
            m.contains(&format!("{path} {line}")) && m.contains(what),
            "{text:?}: {m}"
        );
    }
    // A bad identity's message never quotes its secret.
    let (m, _) = error_of("identity = abc:supersecret@nowhere\n");
    assert!(!m.contains("supersecret"), "{m}");
    // A bad value from the environment names the variable.
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.ini", "");
    let e = load(&f, &[("FLOATLM_RETRY_COUNT", "lots".into())])
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("environment variable FLOATLM_RETRY_COUNT: key 'retry_count'"),
        "{e}"
    );
}

#[test]
fn unreadable_or_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file (root reads any file, so a
    // permission test would pass for the wrong reason).
    let e = load(dir.path(), &[]).err().unwrap().to_string();
    assert!(
        e.contains(&format!(
            "cannot read client config file {}",
            dir.path().display()
        )),
        "{e}"
    );
    let missing = dir.path().join("nope.ini");
    let e = load(&missing, &[]).err().unwrap().to_string();
    assert!(e.contains("nope.ini") && e.contains("No such file"), "{e}");
}

#[test]
fn combinations_that_cannot_connect_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "c.ini", "servers = h1:1\n");
    let e = load(&f, &[]).unwrap().servers().err().unwrap().to_string();
    assert!(
        e.contains("line 1: key 'servers'") && e.contains("give ID:SECRET in identity"),
        "{e}"
    );
    let f = write(dir.path(), "c.ini", "identity = a:b\n");
    let e = load(&f, &[]).unwrap().servers().err().unwrap().to_string();
    assert!(
        e.contains("key 'identity'") && e.contains("without an address"),
        "{e}"
    );
    let f = write(
        dir.path(),
        "c.ini",
        "identity = a:b\nservers = eu:h:1\ngroup = us\n",
    );
    let e = load(&f, &[]).unwrap().servers().err().unwrap().to_string();
    assert!(
        e.contains("line 3: key 'group'") && e.contains("no server is tagged with group us"),
        "{e}"
    );
    let f = write(dir.path(), "c.ini", "");
    let e = load(&f, &[]).unwrap().servers().err().unwrap().to_string();
    assert!(e.contains("no server given"), "{e}");
    let _ = Source::Default;
}

/// config/client.ini (the sample) and docs/client.md name every key and its
/// variable, and the sample, uncommented, is a valid file.
#[test]
fn the_sample_file_and_the_docs_list_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sample = std::fs::read_to_string(root.join("config/client.ini")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/client.md")).unwrap();
    for (key, var) in floatlm_client::client_config_keys() {
        assert!(
            sample.contains(&format!(";{key} = ")),
            "config/client.ini lacks {key}"
        );
        assert!(sample.contains(var), "config/client.ini lacks {var}");
        assert!(
            docs.contains(&format!("| `{key}` | `{var}` |")),
            "docs/client.md lacks {key}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
    let uncommented = sample
        .lines()
        .map(|l| l.strip_prefix(';').unwrap_or(l))
        .map(|l| {
            l.replace(
                "/etc/floatlm/ca.pem",
                &dir.path().join("ca.pem").display().to_string(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let f = write(dir.path(), "client.ini", &uncommented);
    let cfg = load(&f, &[]).unwrap();
    assert_eq!(cfg.servers().unwrap().len(), 3);
}
