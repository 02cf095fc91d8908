//! `POST /sentinel/ldk/v1/request` as the server sees it: arbitrary
//! X-LDK-Session, X-LDK-Instance, Content-Type and Content-Length headers
//! and bodies, through the licensing router of a real App on a temporary
//! SQLite database (body limit, header parsing, session lookup, replay
//! window, envelope opening, JSON decoding and the operation itself). No
//! network: the router is called in memory.
//!
//! Each run starts from a fresh pending session of known keys, so bodies
//! can be sealed for it (arbitrary bytes, or a request built from the
//! input) and runs do not depend on each other's replay windows. A panic
//! anywhere (also one the router would turn into a 500) is a crash.
#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Request, StatusCode};
use floatlm::app::App;
use floatlm::config::Layers;
use floatlm::domain::license::{FeatureDef, LicenseDef, VendorSigningKey};
use floatlm::sessions::{Opened, Session};
use floatlm_protocol::envelope::{self, Binding, Direction};
use floatlm_protocol::keys::SessionKeys;
use floatlm_protocol::{HEADER_INSTANCE, HEADER_SESSION, PATH_REQUEST};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tower::ServiceExt;

const SESSION: &str = "00112233445566778899aabbccddeeff";
const INSTANCE: &str = "0123456789abcdef01234567";

fn keys() -> SessionKeys {
    SessionKeys {
        c2s: [7; 32],
        s2c: [9; 32],
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    router: axum::Router,
    identity: String,
}

/// The App's data directory, removed when libFuzzer exits (statics are
/// never dropped).
static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let dir = DIR.get_or_init(|| {
        std::env::temp_dir().join(format!("floatlm-fuzz-request-{}", std::process::id()))
    });
    std::fs::create_dir_all(dir).unwrap();
    // SAFETY: registers a plain function without arguments.
    unsafe { libc::atexit(remove_dir) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let vendor = VendorSigningKey::parse("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
    let pub_path = dir.join("vendor.pub");
    std::fs::write(&pub_path, vendor.public().to_text()).unwrap();
    let mut layers = Layers::default();
    layers.flag("data_dir", Some(dir.join("data").display()));
    layers.flag("vendor_keys", Some(pub_path.display()));
    let cfg = layers.build().unwrap();
    let (app, identity) = rt.block_on(async {
        let app = App::start(cfg).await.unwrap();
        let def = LicenseDef {
            license_id: "FUZZ".into(),
            serial: 1,
            customer: "fuzz".into(),
            features: vec![FeatureDef {
                name: "demo".into(),
                seats: 3,
                version: None,
                not_before: None,
                expires: None,
            }],
        };
        app.licenses()
            .apply_license(&vendor.sign(&def).unwrap())
            .await
            .unwrap();
        let (view, _) = app.access().create_identity("fuzz", None).await.unwrap();
        (app, view.id)
    });
    let router = floatlm::http::licensing_router(&app);
    Harness {
        rt,
        app,
        router,
        identity,
    }
});

/// A header value: absent, the expected one, or arbitrary bytes.
fn header_value(u: &mut Unstructured, expected: &str) -> Result<Option<Vec<u8>>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 | 2 => Some(expected.as_bytes().to_vec()),
        _ => Some(u.arbitrary()?),
    })
}

/// A lease id: arbitrary text, or one of the right shape.
fn lease(u: &mut Unstructured) -> Result<String> {
    Ok(if u.arbitrary()? {
        format!(
            "{}.{}.{}.{:016x}",
            u.int_in_range(0..=3u8)?,
            u.int_in_range(0..=3u8)?,
            u.int_in_range(0..=3u8)?,
            u.arbitrary::<u64>()?
        )
    } else {
        u.arbitrary()?
    })
}

/// A request built from the input: each operation, with arbitrary fields.
fn operation(u: &mut Unstructured) -> Result<Vec<u8>> {
    let feature = |u: &mut Unstructured| -> Result<String> {
        Ok(if u.arbitrary()? {
            "demo".into()
        } else {
            u.arbitrary()?
        })
    };
    let v = match u.int_in_range(0..=4)? {
        0 => json!({"op": "info", "features": u.arbitrary::<Vec<String>>()?}),
        1 => json!({
            "op": "login",
            "feature": feature(u)?,
            "request_id": u.arbitrary::<String>()?,
            "auth": {
                "mech": u.arbitrary::<String>()?,
                "data": u.arbitrary::<String>()?,
                "user": u.arbitrary::<String>()?,
                "host": u.arbitrary::<String>()?,
                "groups": u.arbitrary::<Vec<String>>()?,
            },
        }),
        2 => {
            let n = u.int_in_range(0..=4)?;
            let leases = (0..n).map(|_| lease(u)).collect::<Result<Vec<_>>>()?;
            json!({"op": "heartbeat", "leases": leases})
        }
        3 => json!({"op": "logout", "lease": lease(u)?}),
        _ => {
            let (op, key, value): (String, String, String) = u.arbitrary()?;
            let mut m = serde_json::Map::new();
            m.insert("op".into(), op.into());
            m.insert(key, value.into());
            serde_json::Value::Object(m)
        }
    };
    Ok(serde_json::to_vec(&v).unwrap())
}

fn run(data: &[u8]) -> Result<()> {
    let h = &*HARNESS;
    let mut u = Unstructured::new(data);
    h.app.admission().end_session(SESSION);
    h.app.admission().insert_pending_session(
        SESSION.into(),
        Session::new(h.identity.clone(), None, Opened::Handshake, keys()),
    );
    let session = header_value(&mut u, SESSION)?;
    let instance = header_value(&mut u, INSTANCE)?;
    let content_type = header_value(&mut u, "application/octet-stream")?;
    let body = match u.int_in_range(0..=2)? {
        0 => u.arbitrary::<Vec<u8>>()?,
        kind => {
            let seq = u.arbitrary::<u64>()?;
            let plaintext = if kind == 1 {
                u.arbitrary::<Vec<u8>>()?
            } else {
                operation(&mut u)?
            };
            // Bound to what the server will read, so the envelope opens when
            // the headers are the expected ones.
            let binding = Binding {
                method: "POST",
                path: PATH_REQUEST,
                instance: instance
                    .as_deref()
                    .and_then(|i| std::str::from_utf8(i).ok())
                    .unwrap_or(""),
                session: SESSION,
            };
            envelope::seal(
                &keys().c2s,
                Direction::ClientToServer,
                seq,
                &binding,
                &plaintext,
            )
        }
    };
    let content_length = match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(body.len().to_string().into_bytes()),
        2 => Some(u.arbitrary::<u64>()?.to_string().into_bytes()),
        _ => Some(u.arbitrary::<Vec<u8>>()?),
    };
    let mut req = Request::post(PATH_REQUEST).body(Body::from(body)).unwrap();
    for (name, value) in [
        (HeaderName::from_static(HEADER_SESSION), session),
        (HeaderName::from_static(HEADER_INSTANCE), instance),
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_LENGTH, content_length),
    ] {
        // A value no HTTP parser would pass on is not sent.
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
            req.headers_mut().insert(name, v);
        }
    }
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = h.rt.block_on(h.router.clone().oneshot(req)).unwrap();
    assert_ne!(
        resp.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "the request path failed"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
