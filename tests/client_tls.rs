//! HTTPS in the client: a real NGINX terminates TLS (the shipped
//! nginx/floatlm-tls.conf, with a certificate from a CA this test makes with
//! openssl) in front of a real `floatlm serve`. The library and the CLI
//! (`ping`, `query`, `checkout`) reach it with that CA as `ca_file` (flag,
//! client file, variable); a certificate of another CA is refused with an
//! error naming the problem; the insecure option works and warns.

use floatlm_client::{Client, ClientError, Options, INSECURE_WARNING};
use std::process::Command;
use std::time::Duration;
use testkit::nginx::{start_nginx_tls, test_ca};
use testkit::{bin, DemoServer};

fn opts() -> Options {
    Options {
        request_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_millis(500),
        ..Options::default()
    }
}

/// `floatlm ARGS` with ENV and no client file of the machine's: (exit code, stdout, stderr).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_through_nginx_with_ca_file_wrong_ca_and_insecure() {
    let demo = DemoServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert, key) = test_ca(d, "good");
    let (other_ca, _, _) = test_ca(d, "other");
    let (_nginx, proxy) =
        start_nginx_tls(std::slice::from_ref(&demo.proc.licensing), d, &cert, &key);
    let cred = demo.identity.rsplit_once('@').unwrap().0.to_string();
    let https = format!("https://{proxy}");
    let ident = format!("{cred}@{https}");

    // The library with the CA as ca_file: checkout, query and release over TLS.
    let client = Client::connect(
        &[&ident],
        Options {
            ca_file: Some(ca.clone()),
            ..opts()
        },
    )
    .await
    .expect("TLS connect with the right CA");
    assert!(client.server_status()[0].tls);
    let seat = client.checkout("demo").await.expect("checkout over TLS");
    assert_eq!(demo.used().await, 1);
    let q = client.query(&["demo"]).await.unwrap();
    assert_eq!((q[0].total, q[0].used), (5, 1));
    seat.release().await;
    assert_eq!(demo.used().await, 0);

    // A certificate from another CA: refused, and the error names the
    // certificate problem (rustls: UnknownIssuer).
    for options in [
        Options {
            ca_file: Some(other_ca.clone()),
            ..opts()
        },
        // No ca_file: the system and built-in roots do not know the test CA.
        opts(),
    ] {
        let e = Client::connect(&[&ident], options)
            .await
            .err()
            .expect("a wrong CA is refused");
        let m = e.to_string();
        eprintln!("refused: {m}");
        assert!(matches!(e, ClientError::Unreachable(_)), "{e:?}");
        assert!(
            m.contains("TLS certificate problem") && m.contains("UnknownIssuer"),
            "{m}"
        );
    }

    // A ca_file that is not a certificate: a configuration error naming it.
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = Client::connect(
        &[&ident],
        Options {
            ca_file: Some(junk.clone()),
            ..opts()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(e, ClientError::Config(ref m) if m.contains(&junk.display().to_string())),
        "{e:?}"
    );

    // The insecure option: verification off (the wrong-CA server answers).
    let insecure = Client::connect(
        &[&ident],
        Options {
            insecure_skip_tls_verify: true,
            ..opts()
        },
    )
    .await
    .expect("insecure_skip_tls_verify accepts any certificate");
    insecure.query(&[]).await.unwrap();

    // The CLI: ping, query and checkout with --ca-file.
    let ca_s = ca.display().to_string();
    let (code, out, err) = cli(&["ping", "-s", &https, "--ca-file", &ca_s], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("instance "), "{out}");
    let (code, out, err) = cli(&["query", "-s", &ident, "--ca-file", &ca_s, "demo"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("demo") && out.contains('5'), "{out}");
    let (code, _, err) = cli(
        &[
            "checkout",
            "-s",
            &ident,
            "--ca-file",
            &ca_s,
            "demo",
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("holding a seat of 'demo'"), "{err}");

    // The same from the client file, and from the environment.
    let ini = d.join("client.ini");
    std::fs::write(
        &ini,
        format!("[client]\nidentity = {cred}\nservers = {https}\nca_file = {ca_s}\n"),
    )
    .unwrap();
    let ini_s = ini.display().to_string();
    let (code, _, err) = cli(
        &["checkout", "demo", "--hold", "0.2"],
        &[("FLOATLM_CLIENT_CONFIG", &ini_s)],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["ping"], &[("FLOATLM_CLIENT_CONFIG", &ini_s)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["query", "-s", &ident], &[("FLOATLM_CA_FILE", &ca_s)]);
    assert_eq!(code, 0, "{err}");

    // The CLI with the wrong CA: exit 1, the certificate problem on stderr.
    let other_s = other_ca.display().to_string();
    let (code, _, err) = cli(&["query", "-s", &ident, "--ca-file", &other_s], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("TLS certificate problem") && err.contains("UnknownIssuer"),
        "{err}"
    );
    let (code, _, err) = cli(&["ping", "-s", &https, "--ca-file", &other_s], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // --insecure-skip-tls-verify (and the file key) work and warn every time.
    let (code, _, err) = cli(&["query", "-s", &ident, "--insecure-skip-tls-verify"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(INSECURE_WARNING), "{err}");
    std::fs::write(
        &ini,
        format!("identity = {ident}\ninsecure_skip_tls_verify = true\n"),
    )
    .unwrap();
    let (code, _, err) = cli(&["query"], &[("FLOATLM_CLIENT_CONFIG", &ini_s)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("WARNING: insecure_skip_tls_verify is on"),
        "{err}"
    );
    assert_eq!(demo.used().await, 0);
}
