//! What a client reports about itself (user, host, groups, auth mech and
//! data, the X-LDK-Instance header) is limited (docs/protocol.md,
//! "Client-reported strings"): a hostile client sending 100 KB names or
//! terminal escapes is refused with a clear answer, and nothing of it lands
//! in the database or the log; the client library trims, replaces and
//! truncates what it sends so that a legitimate client is never refused.

use floatlm_client::{AuthInfo, Client, Options};
use floatlm_protocol::messages::{limits, ErrorCode, Request, Response};
use std::time::Duration;
use testkit::raw::{Answer, Raw};
use testkit::DemoServer;

fn login(rid: &str, auth: AuthInfo) -> Request {
    Request::Login {
        feature: "demo".into(),
        request_id: rid.into(),
        auth,
    }
}

/// The leases' `client_info` as the admin API lists them.
async fn client_infos(server: &DemoServer) -> Vec<String> {
    server
        .lease_rows()
        .await
        .iter()
        .map(|l| l["client_info"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_refused_and_leave_no_trace() {
    let server = DemoServer::start(&[]);
    let raw = Raw::connect(&server.proc.licensing, &server.identity).await;
    let huge = "x".repeat(100_000);
    // Long, but inside one envelope (64 KiB): the login limits answer.
    let long = "x".repeat(20_000);
    let escape = "\u{1b}[31mred\u{1b}[0m";
    let cases: Vec<(AuthInfo, &str)> = vec![
        (
            AuthInfo {
                user: long.clone(),
                ..AuthInfo::default()
            },
            "auth.user is 20000 characters long; at most 255",
        ),
        (
            AuthInfo {
                host: "h".repeat(256),
                ..AuthInfo::default()
            },
            "auth.host is 256 characters long",
        ),
        (
            AuthInfo {
                user: "ann".into(),
                host: escape.into(),
                ..AuthInfo::default()
            },
            "auth.host holds a control",
        ),
        (
            AuthInfo {
                user: "ann\nINFO forged log line".into(),
                ..AuthInfo::default()
            },
            "auth.user holds a control",
        ),
        (
            AuthInfo {
                user: "ann".into(),
                host: "dev\u{202E}exe.txt".into(),
                ..AuthInfo::default()
            },
            "bidirectional",
        ),
        (
            AuthInfo {
                groups: vec!["g".into(); 1000],
                ..AuthInfo::default()
            },
            "auth.groups names 1000 groups; at most 64",
        ),
        (
            AuthInfo {
                groups: vec!["g".repeat(129)],
                ..AuthInfo::default()
            },
            "auth.groups is 129 characters long; at most 128",
        ),
        (
            AuthInfo {
                data: long.clone(),
                ..AuthInfo::default()
            },
            "auth.data is 20000 characters long; at most 4096",
        ),
        (
            AuthInfo {
                mech: escape.into(),
                ..AuthInfo::default()
            },
            "auth.mech holds a control",
        ),
    ];
    for (i, (auth, says)) in cases.into_iter().enumerate() {
        match raw.call("raw", &login(&format!("h{i}"), auth)).await {
            Answer::Sealed(Response::Error {
                code: ErrorCode::BadRequest,
                message,
                ..
            }) => {
                assert!(message.contains(says), "case {i}: {message}");
                assert!(message.len() < 300, "case {i}: the answer quotes the input");
            }
            other => panic!("case {i}: expected bad_request, got {other:?}"),
        }
    }
    // 100 KB names do not fit an envelope: refused before they are opened.
    let hundred_kb = login(
        "hk",
        AuthInfo {
            user: huge.clone(),
            ..AuthInfo::default()
        },
    );
    match raw.call("raw", &hundred_kb).await {
        Answer::Plain(413, body) => assert_eq!(body["error"], "payload_too_large", "{body}"),
        other => panic!("100 KB user name: {other:?}"),
    }
    // A feature name with escapes names no feature, and is not echoed raw.
    let bad_feature = Request::Login {
        feature: format!("demo{escape}"),
        request_id: "hf".into(),
        auth: AuthInfo::default(),
    };
    match raw.call("raw", &bad_feature).await {
        Answer::Sealed(Response::Error {
            code: ErrorCode::NoLicense,
            message,
            ..
        }) => assert!(!message.contains('\u{1b}'), "{message:?}"),
        other => panic!("escaped feature name: {other:?}"),
    }
    // An X-LDK-Instance header out of bounds: a plain 400 before anything.
    let long_instance = "i".repeat(limits::INSTANCE_CHARS + 1);
    match raw
        .call(&long_instance, &login("hi", AuthInfo::default()))
        .await
    {
        Answer::Plain(400, body) => {
            assert_eq!(body["error"], "bad_request", "{body}");
            assert!(body["message"].as_str().unwrap().contains("X-LDK-Instance"));
        }
        other => panic!("long instance header: {other:?}"),
    }

    // Nothing was granted, so nothing is stored.
    assert!(client_infos(&server).await.is_empty());
    // Surrounding whitespace is trimmed, not refused.
    let ok = AuthInfo {
        user: "  ann ".into(),
        host: " dev😀\t".into(),
        ..AuthInfo::default()
    };
    match raw.call("raw", &login("ok", ok)).await {
        Answer::Sealed(Response::Granted { .. }) => {}
        other => panic!("a plain login: {other:?}"),
    }
    assert_eq!(client_infos(&server).await, vec!["ann@dev😀 (raw)"]);
    // And the log holds none of it.
    let log = server.proc.log();
    for (what, s) in [
        ("the escape", "[31mred"),
        ("the long name", &"x".repeat(1000)),
        ("the forged line", "forged log line"),
        ("the long instance", &long_instance),
    ] {
        assert!(!log.contains(s), "{what} reached the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_sends_what_the_server_accepts() {
    let server = DemoServer::start(&[]);
    let connect = |auth: AuthInfo| {
        let identity = server.identity.clone();
        async move {
            let opts = Options {
                request_timeout: Duration::from_secs(5),
                auth,
                ..Options::default()
            };
            Client::connect(&[identity.as_str()], opts).await.unwrap()
        }
    };
    // A 100 KB user name with a terminal escape: sent trimmed to 255
    // characters, the escape replaced.
    let long = connect(AuthInfo {
        user: format!(" 田中\u{1b}[2J{}", "y".repeat(100_000)),
        host: "h".into(),
        groups: vec!["g\u{7}".into(); 1000],
        data: "d".repeat(100_000),
        mech: "m".repeat(100),
    })
    .await;
    let seat1 = long.checkout("demo").await.unwrap();
    // A host with a bidirectional override and a line break.
    let bidi = connect(AuthInfo {
        user: "ann".into(),
        host: "dev\u{202E}😀\n".into(),
        ..AuthInfo::default()
    })
    .await;
    let seat2 = bidi.checkout("demo").await.unwrap();
    let infos = client_infos(&server).await;
    let user = format!("田中\u{FFFD}[2J{}", "y".repeat(limits::NAME_CHARS - 6));
    assert_eq!(user.chars().count(), limits::NAME_CHARS);
    assert!(infos.contains(&user), "{infos:?}");
    let ann = format!("ann@dev\u{FFFD}😀 ({})", bidi.instance_id());
    assert!(infos.contains(&ann), "{infos:?}");
    drop((seat1, seat2));
}
