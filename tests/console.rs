//! The web console (`/ui/` on the admin listener, docs/operations.md "Web
//! console") in a real headless Chromium, driven over WebDriver by Debian's
//! chromedriver, against a real `floatlm serve` whose seats real clients
//! (the floatlm-client crate) hold: sign in, the Features page's counts, a
//! client's lease on the Leases page, force release from the page (and the
//! client learning it lost the seat), a monitor token without the button and
//! refused when it sends the request anyway, identities created and revoked,
//! an instance drained from the page, the Usage page's report, charts and
//! CSV download. Every page is saved as a screenshot
//! under target/console-screenshots/, and no page loads anything from another
//! origin. Also: cross-site state changes refused, the security headers, and
//! the `ui` setting.
//!
//! Needs `chromium` and `chromium-driver` (scripts/ensure.sh installs them).

use floatlm_client::{AuthInfo, Client, LossReason, Options, SeatHandle};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::{DemoServer, TestDb};

/// The longest any single wait in this file lasts.
const WAIT: Duration = Duration::from_secs(20);
/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium behind its own chromedriver on a free port; the
/// session and the driver end on drop, pass or fail.
struct Browser {
    http: reqwest::Client,
    port: u16,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run chromedriver ({e}): install it with \
                     `apt-get install -y chromium chromium-driver` (scripts/ensure.sh does)"
                )
            });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        testkit::wait_for("chromedriver to be ready", WAIT, || {
            let http = http.clone();
            let base = base.clone();
            async move {
                let v: Value = http
                    .get(format!("{base}/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1360,860",
                    "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync",
                    "--disable-component-update", "--disable-default-apps",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut browser = Browser {
            http,
            port,
            session: String::new(),
            driver,
            _profile: profile,
        };
        let v = browser.cmd("POST", "/session", caps).await;
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`, or a panic with the driver's words.
    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("http://127.0.0.1:{}/session", self.port)
        } else {
            format!(
                "http://127.0.0.1:{}/session/{}{path}",
                self.port, self.session
            )
        };
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: HTTP {status}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Waits until `script` returns something truthy; returns it.
    async fn until(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script, args.clone()).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText", json!([])).await;
                panic!("timed out after {WAIT:?} waiting for {what}; the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The element `css` matches, once it exists.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = format!(
                "http://127.0.0.1:{}/session/{}/element",
                self.port, self.session
            );
            let resp = self
                .http
                .post(url)
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .unwrap();
            if resp.status().is_success() {
                let v: Value = resp.json().await.unwrap();
                return v["value"][ELEMENT].as_str().unwrap().to_string();
            }
            if Instant::now() > deadline {
                panic!("timed out after {WAIT:?} waiting for an element {css}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// A real click (WebDriver checks that the element is visible and not
    /// covered). The page re-renders its tables as it refreshes: a button
    /// replaced between finding and clicking it is found again.
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let id = self.find(css).await;
            let url = format!(
                "http://127.0.0.1:{}/session/{}/element/{id}/click",
                self.port, self.session
            );
            let resp = self.http.post(url).json(&json!({})).send().await.unwrap();
            if resp.status().is_success() {
                return;
            }
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            let stale = v["value"]["error"] == "stale element reference";
            if !stale || Instant::now() > deadline {
                panic!("clicking {css}: {}", v["value"]);
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Saves the viewport as target/console-screenshots/NAME.png.
    async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Every URL the page has loaded or fetched (navigation and resource
    /// timing entries) is on `origin`, and none carries the token.
    async fn assert_same_origin_only(&self, origin: &str, token: &str) {
        let v = self
            .js(
                "return performance.getEntries()\
                 .filter(e => e.entryType === 'navigation' || e.entryType === 'resource')\
                 .map(e => e.name).concat([location.href])",
                json!([]),
            )
            .await;
        let urls: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u.as_str())
            .collect();
        assert!(urls.len() > 2, "too few performance entries: {urls:?}");
        for u in &urls {
            assert!(
                u.starts_with(&format!("{origin}/")),
                "the page loaded {u}, not from {origin}"
            );
            assert!(!u.contains(token), "a URL carries the token: {u}");
        }
    }

    /// Signs in on a fresh load of the console with `token`.
    async fn sign_in(&self, origin: &str, token: &str) {
        self.goto(&format!("{origin}/ui/")).await;
        self.js("sessionStorage.clear(); return true", json!([]))
            .await;
        self.goto(&format!("{origin}/ui/#features")).await;
        self.type_into("#token", token).await;
        self.click("#signin-button").await;
        self.until(
            "the Features page after signing in",
            "return document.body.dataset.loaded === 'features'",
            json!([]),
        )
        .await;
    }

    /// Opens a page by its menu link and waits for its first rendering.
    async fn open(&self, page: &str) {
        self.click(&format!("nav a[data-page='{page}']")).await;
        self.until(
            &format!("the {page} page"),
            "return document.body.dataset.loaded === arguments[0]",
            json!([page]),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (chromedriver closes Chromium), then the driver.
        if !self.session.is_empty() {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session, self.port
                );
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Creates an admin token of `role` through the API; returns its secret.
async fn token(server: &DemoServer, name: &str, role: &str) -> String {
    let v: Value = reqwest::Client::new()
        .post(format!("http://{}/admin/v1/tokens", server.proc.admin))
        .bearer_auth(&server.admin_token)
        .json(&json!({ "name": name, "role": role }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {v}"))
        .to_string()
}

async fn client(identity: &str, user: &str, host: &str) -> Client {
    let opts = Options {
        auth: AuthInfo {
            user: user.into(),
            host: host.into(),
            ..AuthInfo::default()
        },
        ..Options::default()
    };
    Client::connect(&[identity], opts).await.unwrap()
}

/// The whole walk through the console; `shots` saves screenshots.
async fn walk(server: &DemoServer, shots: bool) {
    let origin = format!("http://{}", server.proc.admin);
    let instance = server.proc.instance.clone();

    // Two seats of demo (5) held by two real clients.
    let a = client(&server.identity, "console-user-a", "console-host-a").await;
    let b = client(&server.identity, "console-user-b", "console-host-b").await;
    let seat_a: SeatHandle = a.checkout("demo").await.unwrap();
    let seat_b: SeatHandle = b.checkout("demo").await.unwrap();

    let browser = Browser::start().await;
    if shots {
        browser.goto(&format!("{origin}/ui/")).await;
        browser.find("#token").await;
        browser.screenshot("signin").await;
    }

    // Sign in as admin; Features shows 5 total, 2 used, 3 free.
    browser.sign_in(&origin, &server.admin_token).await;
    let counts = browser
        .until(
            "demo at 2 used on Features",
            "const r = document.querySelector('tr[data-feature=\"demo\"]');\
             if (!r) return null;\
             const t = [r.querySelector('td.total').textContent, r.querySelector('td.used').textContent,\
                        r.querySelector('td.free').textContent];\
             return t[1] === '2' ? t : null;",
            json!([]),
        )
        .await;
    assert_eq!(counts, json!(["5", "2", "3"]), "Features row of demo");
    assert_eq!(
        browser
            .js("return document.querySelectorAll('tr[data-feature=\"demo\"] svg rect.used').length", json!([]))
            .await,
        json!(1),
        "a bar per feature"
    );
    assert_eq!(
        browser
            .js(
                "return document.getElementById('who-role').textContent",
                json!([])
            )
            .await,
        json!("admin")
    );
    // Live: a third seat shows without a reload.
    let c = client(&server.identity, "console-user-c", "console-host-c").await;
    let seat_c = c.checkout("demo").await.unwrap();
    browser
        .until(
            "the live count 3",
            "const r = document.querySelector('tr[data-feature=\"demo\"] td.used'); return r && r.textContent === '3';",
            json!([]),
        )
        .await;
    assert!(seat_c.release().await, "releasing the third seat");
    if shots {
        browser.screenshot("features").await;
    }
    browser
        .assert_same_origin_only(&origin, &server.admin_token)
        .await;

    // Leases: both clients' leases, with their user and host; the filter.
    browser.open("leases").await;
    let lease_a = seat_a.lease();
    let lease_b = seat_b.lease();
    for (lease, host) in [(&lease_a, "console-host-a"), (&lease_b, "console-host-b")] {
        let client_info = browser
            .until(
                &format!("lease {lease} on Leases"),
                "const r = document.querySelector('tr[data-lease=\"' + arguments[0] + '\"]');\
                 return r ? r.textContent : null;",
                json!([lease]),
            )
            .await;
        assert!(
            client_info.as_str().unwrap().contains(host),
            "the row of {lease} names {host}: {client_info}"
        );
    }
    browser.type_into("#filter-text", "console-host-b").await;
    let shown = browser
        .js(
            "return [...document.querySelectorAll('#leases-rows tr[data-lease]')].map(r => r.dataset.lease)",
            json!([]),
        )
        .await;
    assert_eq!(
        shown,
        json!([lease_b]),
        "the filter on host keeps only b's lease"
    );
    browser.type_into("#filter-text", "").await;
    browser
        .until(
            "both leases after clearing the filter",
            "return document.querySelectorAll('#leases-rows tr[data-lease]').length >= 2",
            json!([]),
        )
        .await;
    if shots {
        browser.screenshot("leases").await;
    }

    // Force release a's lease from the page, with the confirmation.
    browser
        .click(&format!("button.release[data-lease='{lease_a}']"))
        .await;
    browser
        .until(
            "the confirmation dialog",
            "return document.getElementById('confirm').open",
            json!([]),
        )
        .await;
    if shots {
        browser.screenshot("leases-confirm").await;
    }
    browser.click("#confirm-ok").await;
    let loss = tokio::time::timeout(WAIT, seat_a.lost())
        .await
        .unwrap_or_else(|_| panic!("client a was not told within {WAIT:?} that it lost its seat"));
    assert!(
        matches!(loss, LossReason::Revoked),
        "client a lost its seat by force release, not: {loss:?}"
    );
    assert!(seat_b.is_valid(), "b still holds its seat");
    // The page shows it as revoked (until the seat is free) or gone.
    browser
        .until(
            "a's lease revoked or gone on Leases",
            "const r = document.querySelector('tr[data-lease=\"' + arguments[0] + '\"]');\
             return !r || r.dataset.state === 'revoked';",
            json!([lease_a]),
        )
        .await;
    browser
        .assert_same_origin_only(&origin, &server.admin_token)
        .await;

    // Identities and tokens: create one (its string shown once), revoke it.
    browser.open("identities").await;
    browser.type_into("#identity-name", "console-made").await;
    browser.click("#identity-form button[type=submit]").await;
    let made = browser
        .until(
            "the new identity string",
            "const b = document.getElementById('identity-secret');\
             return b.hidden ? null : document.getElementById('identity-secret-text').textContent;",
            json!([]),
        )
        .await;
    let made = made.as_str().unwrap().to_string();
    let made_id = made.split(':').next().unwrap().to_string();
    assert!(made.contains('@'), "an identity string: {made}");
    let d = client(&made, "console-user-d", "console-host-d").await;
    let seat_d = d
        .checkout("demo")
        .await
        .expect("the console's new identity checks out");
    browser.click("#identity-secret-close").await;
    assert_eq!(
        browser
            .js(
                "return document.getElementById('identity-secret-text').textContent",
                json!([])
            )
            .await,
        json!(""),
        "the string is gone once closed"
    );
    browser
        .type_into("#token-name", "console-monitor-made")
        .await;
    browser.click("#token-form button[type=submit]").await;
    let made_token = browser
        .until(
            "the new token",
            "const b = document.getElementById('token-secret');\
             return b.hidden ? null : document.getElementById('token-secret-text').textContent;",
            json!([]),
        )
        .await;
    assert!(
        made_token.as_str().unwrap().starts_with("flt_"),
        "{made_token}"
    );
    browser.click("#token-secret-close").await;
    browser
        .until(
            "the new identity in the list",
            "return !!document.querySelector('button.revoke-identity[data-identity=\"' + arguments[0] + '\"]')",
            json!([made_id]),
        )
        .await;
    if shots {
        browser.screenshot("identities").await;
    }
    browser
        .click(&format!(
            "button.revoke-identity[data-identity='{made_id}']"
        ))
        .await;
    browser.click("#confirm-ok").await;
    let loss = tokio::time::timeout(WAIT, seat_d.lost())
        .await
        .expect("the revoked identity's client learns it lost its seat");
    assert!(
        matches!(
            loss,
            LossReason::IdentityRefused { .. } | LossReason::Revoked
        ),
        "{loss:?}"
    );
    browser
        .until(
            "the identity shown revoked",
            "const r = document.querySelector('tr[data-identity=\"' + arguments[0] + '\"]');\
             return r && r.textContent.includes('revoked');",
            json!([made_id]),
        )
        .await;

    // A monitor: no force-release or drain button, no Identities page; the
    // request sent anyway from the console's own origin is refused.
    let monitor = token(server, "console-monitor", "monitor").await;
    browser.click("#signout").await;
    browser.sign_in(&origin, &monitor).await;
    assert_eq!(
        browser
            .js(
                "return document.getElementById('who-role').textContent",
                json!([])
            )
            .await,
        json!("monitor")
    );
    assert_eq!(
        browser
            .js(
                "return document.querySelector('nav a[data-page=\"identities\"]').hidden",
                json!([])
            )
            .await,
        json!(true),
        "a monitor has no Identities page"
    );
    browser.open("leases").await;
    browser
        .until(
            "b's lease for the monitor",
            "return !!document.querySelector('tr[data-lease=\"' + arguments[0] + '\"]')",
            json!([lease_b]),
        )
        .await;
    assert_eq!(
        browser
            .js(
                "return document.querySelectorAll('button.release').length",
                json!([])
            )
            .await,
        json!(0),
        "a monitor sees no force-release button"
    );
    if shots {
        browser.screenshot("leases-monitor").await;
    }
    let refused = browser
        .cmd(
            "POST",
            "/execute/async",
            json!({
                "script": "const done = arguments[arguments.length - 1];\
                    fetch('/admin/v1/leases/' + encodeURIComponent(arguments[0]), {method: 'DELETE',\
                      headers: {Authorization: 'Bearer ' + sessionStorage.getItem('floatlm.console.token')}})\
                    .then(r => r.json().then(j => done([r.status, j.error])), e => done(String(e)));",
                "args": [lease_b],
            }),
        )
        .await;
    assert_eq!(
        refused,
        json!([403, "forbidden"]),
        "a monitor's force release"
    );
    assert!(
        seat_b.is_valid(),
        "b still holds its seat after the monitor's try"
    );
    browser.open("instances").await;
    browser
        .until(
            "this instance on Instances",
            "return !!document.querySelector('tr[data-instance=\"' + arguments[0] + '\"]')",
            json!([instance]),
        )
        .await;
    assert_eq!(
        browser
            .js(
                "return document.querySelectorAll('button.drain, button.remove').length",
                json!([])
            )
            .await,
        json!(0),
        "a monitor sees no drain or remove button"
    );
    browser.assert_same_origin_only(&origin, &monitor).await;

    // Usage (every role): demo's row counts at least the four grants this
    // walk made (a, b, c, d), three of them at once, and a denial of an
    // unknown feature; each shows as a bar in its chart; the CSV download is
    // the same report, saved from a Blob.
    assert!(
        b.checkout("console-nosuch").await.is_err(),
        "an unknown feature is refused"
    );
    browser.open("usage").await;
    let row = browser
        .until(
            "demo's row on Usage",
            "const r = document.querySelector('#usage-rows tr[data-key=\"demo\"]');\
             return r ? [Number(r.querySelector('td.checkouts').textContent),\
                         Number(r.querySelector('td.peak').textContent)] : null;",
            json!([]),
        )
        .await;
    assert!(
        row[0].as_u64().unwrap() >= 4 && row[1].as_u64().unwrap() >= 3,
        "demo's checkouts and peak concurrency on Usage: {row}"
    );
    let bars = browser
        .until(
            "the denial of console-nosuch on Usage",
            "const r = document.querySelector('#usage-rows tr[data-key=\"console-nosuch\"] td.denials');\
             if (!r || r.textContent !== '1') return null;\
             return [...document.querySelectorAll('#usage-charts svg.chart')].map(s =>\
               [s.dataset.metric, ...['demo', 'console-nosuch'].map(k =>\
                 Number(s.querySelector('rect.value[data-key=\"' + k + '\"]').getAttribute('width')) > 0)]);",
            json!([]),
        )
        .await;
    assert_eq!(
        bars,
        json!([
            ["checkouts", true, false],
            ["seat_hours", true, false],
            ["peak_concurrency", true, false],
            ["denials", false, true]
        ]),
        "a chart per figure, demo's and console-nosuch's bars"
    );
    if shots {
        browser.screenshot("usage").await;
    }
    // Catches the Blob the page saves, then downloads.
    browser
        .js(
            "const orig = URL.createObjectURL.bind(URL);\
             window.usageBlob = null;\
             URL.createObjectURL = (b) => { window.usageBlob = b; return orig(b); };\
             return true",
            json!([]),
        )
        .await;
    browser.click("#usage-csv").await;
    browser
        .until("the CSV blob", "return !!window.usageBlob", json!([]))
        .await;
    let csv = browser
        .cmd(
            "POST",
            "/execute/async",
            json!({
                "script": "const done = arguments[arguments.length - 1];\
                    window.usageBlob.text().then(t => done([window.usageBlob.type, t]), e => done(String(e)));",
                "args": [],
            }),
        )
        .await;
    assert_eq!(csv[0], json!("text/csv"), "the blob's type: {csv}");
    let text = csv[1].as_str().unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("feature,checkouts,seat_hours,peak_concurrency,denials"),
        "the CSV's header: {text}"
    );
    let demo = lines
        .find(|l| l.starts_with("demo,"))
        .unwrap_or_else(|| panic!("no demo line in the CSV: {text}"));
    let checkouts: u64 = demo.split(',').nth(1).unwrap().parse().unwrap();
    assert!(checkouts >= 4, "demo's checkouts in the CSV: {demo}");
    // Per user: each client's user is a group of its own.
    browser
        .js(
            "const s = document.getElementById('usage-by'); s.value = 'user';\
             s.dispatchEvent(new Event('change')); return true",
            json!([]),
        )
        .await;
    browser
        .until(
            "console-user-b's row per user",
            "return !!document.querySelector('#usage-rows tr[data-key=\"console-user-b\"]')",
            json!([]),
        )
        .await;
    browser.assert_same_origin_only(&origin, &monitor).await;

    // An operator drains the instance from the page; it shows as draining.
    let operator = token(server, "console-operator", "operator").await;
    browser.click("#signout").await;
    browser.sign_in(&origin, &operator).await;
    assert_eq!(
        browser
            .js(
                "return document.querySelector('nav a[data-page=\"identities\"]').hidden",
                json!([])
            )
            .await,
        json!(true),
        "an operator has no Identities page"
    );
    browser.open("instances").await;
    browser
        .until(
            "this instance up",
            "const r = document.querySelector('tr[data-instance=\"' + arguments[0] + '\"]');\
             return r && r.dataset.state === 'up';",
            json!([instance]),
        )
        .await;
    browser
        .click(&format!("button.drain[data-instance='{instance}']"))
        .await;
    browser.click("#confirm-ok").await;
    browser
        .until(
            "the instance shown as draining",
            "const r = document.querySelector('tr[data-instance=\"' + arguments[0] + '\"]');\
             return r && r.dataset.state === 'draining';",
            json!([instance]),
        )
        .await;
    if shots {
        browser.screenshot("instances").await;
    }
    browser.assert_same_origin_only(&origin, &operator).await;
    assert!(seat_b.release().await, "b releases its seat");
    let log = server.proc.log();
    for t in [&server.admin_token, &monitor, &operator] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(
            !log.contains(secret),
            "a token's secret is in the server's log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_on_sqlite() {
    let server = DemoServer::start(&["--lease-ttl", "5s"]);
    tokio::time::timeout(Duration::from_secs(180), walk(&server, true))
        .await
        .expect("the console walk took over 180 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_on_mariadb() {
    let db = TestDb::new().await;
    let server = DemoServer::start_on(Some(&db), &["--lease-ttl", "5s"], &[]);
    tokio::time::timeout(Duration::from_secs(180), walk(&server, false))
        .await
        .expect("the console walk took over 180 s");
}

/// The security headers on the console and the API, and cross-site state
/// changes refused (what a browser sends for a form or fetch from another
/// site), while the CLI's requests (neither header) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_and_cross_site_writes() {
    let server = DemoServer::start(&[]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://{}", server.proc.admin);
    for path in ["/ui/", "/ui/app.js", "/ui/app.css", "/admin/v1/features"] {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: CSP {csp} lacks {part}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    let r = http.get(format!("{base}/ui/app.js")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));

    let verify = |extra: Vec<(&'static str, String)>| {
        let mut req = http
            .post(format!("{base}/admin/v1/verify"))
            .bearer_auth(&server.admin_token);
        for (k, v) in extra {
            req = req.header(k, v);
        }
        req.send()
    };
    let refused = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://evil.example"),
        ("origin", "null"),
    ];
    for (k, v) in refused {
        let r = verify(vec![(k, v.to_string())]).await.unwrap();
        assert_eq!(r.status(), 403, "{k}: {v}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "cross_site", "{k}: {v}: {body}");
    }
    let own = vec![
        ("sec-fetch-site", "same-origin".to_string()),
        ("origin", base.clone()),
    ];
    for extra in [vec![], own] {
        let r = verify(extra).await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let r = verify(vec![("origin", base.clone())]).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "Origin naming this host: {}",
        r.text().await.unwrap()
    );
    // Reading is never refused by the check (a GET changes nothing).
    let r = http
        .get(format!("{base}/admin/v1/features"))
        .bearer_auth(&server.admin_token)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `ui`: auto is on for a loopback admin listener (the other tests), off
/// otherwise; `false` turns it off, `true` on; any other value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_setting() {
    let off = DemoServer::start_with(&[], &[("FLOATLM_UI", "false")]);
    let r = reqwest::get(format!("http://{}/ui/", off.proc.admin))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "ui = false serves no console");
    let on = DemoServer::start_with(&[], &[("FLOATLM_UI", "true")]);
    let r = reqwest::get(format!("http://{}/ui/", on.proc.admin))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("/ui/app.js"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let check = |env: &[(&str, &str)]| {
        let out = Command::new(testkit::bin())
            .args(["config", "check"])
            .env_clear()
            .env("FLOATLM_DATA_DIR", dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let ui_line = |listen: &str| {
        let (ok, text) = check(&[("FLOATLM_ADMIN_LISTEN", listen)]);
        assert!(ok, "{text}");
        text.lines()
            .find(|l| l.starts_with("ui = "))
            .unwrap_or_else(|| panic!("no ui line in config check: {text}"))
            .to_string()
    };
    for (listen, on) in [
        ("127.0.0.1:8991", true),
        ("[::1]:8991", true),
        ("0.0.0.0:8991", false),
    ] {
        let line = ui_line(listen);
        assert!(
            line.starts_with(&format!("ui = auto ({on}")),
            "{listen}: {line}"
        );
    }
    let (ok, text) = check(&[("FLOATLM_UI", "yes")]);
    assert!(
        !ok && text.contains("ui") && text.contains("FLOATLM_UI"),
        "{text}"
    );
}
