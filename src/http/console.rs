//! The web console (`/ui/` on the admin listener, docs/operations.md "Web
//! console"): its assets, embedded in the binary at build time, served with a
//! strict Content-Security-Policy; and the cross-site request check every
//! state-changing admin request passes, console or not.
//!
//! The console is plain HTML, one hand-written script and one style sheet. It
//! calls the same JSON API as the CLI with the token as a bearer token, which
//! it keeps in `sessionStorage` only (never in a URL, a cookie or a log).

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::ApiError;
use crate::app::App;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");
const ICON: &str = include_str!("ui/icon.svg");

/// Everything from this origin, nothing inline, no frames, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The console's routes (only mounted when `ui` is on).
pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary: always ask again (they are small).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Security headers on every admin-listener answer: the console's pages and
/// the JSON API alike (a JSON answer must not be framed or sniffed either).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// Refuses a state-changing request (anything but GET, HEAD, OPTIONS) that a
/// browser says comes from another site.
///
/// The bearer token is the real CSRF defence: a browser never attaches an
/// `Authorization` header on its own, and only the console's script (same
/// origin, holding the token in `sessionStorage`) can set it; a cross-origin
/// page cannot read the token and cannot send a custom header without a
/// CORS preflight, which this listener never grants. This check is a second
/// wall: `Sec-Fetch-Site` (every current browser sends it) must be
/// `same-origin` or `none`; without it, an `Origin` header must name the
/// host the request was sent to. Clients that are not browsers (the CLI,
/// curl, scripts) send neither header and pass.
pub async fn same_origin_writes(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        if let Err(why) = check_origin(req.headers()) {
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                "refused a cross-site admin request: {why}"
            );
            return ApiError::new(StatusCode::FORBIDDEN, "cross_site", why).into_response();
        }
    }
    next.run(req).await
}

fn check_origin(h: &HeaderMap) -> Result<(), String> {
    if let Some(site) = h.get("sec-fetch-site") {
        return match site.to_str().unwrap_or("") {
            "same-origin" | "none" => Ok(()),
            other => Err(format!(
                "a browser sent this state change from another site (Sec-Fetch-Site: {}); \
                 use the console served by this listener or the CLI",
                other.chars().take(40).collect::<String>()
            )),
        };
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(format!(
            "Origin {} is not this listener ({}); use the console served by this \
             listener or the CLI",
            origin.chars().take(80).collect::<String>(),
            host.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cross_site_writes_are_refused_and_others_pass() {
        assert!(check_origin(&headers(&[])).is_ok(), "the CLI sends neither");
        assert!(check_origin(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(check_origin(&headers(&[("sec-fetch-site", "none")])).is_ok());
        assert!(check_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(check_origin(&headers(&[("sec-fetch-site", "same-site")])).is_err());
        let same = [
            ("origin", "http://127.0.0.1:8991"),
            ("host", "127.0.0.1:8991"),
        ];
        assert!(check_origin(&headers(&same)).is_ok());
        let other = [
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8991"),
        ];
        assert!(check_origin(&headers(&other)).is_err());
        assert!(check_origin(&headers(&[("origin", "null"), ("host", "a:1")])).is_err());
    }

    #[test]
    fn no_asset_reaches_for_another_origin_or_runs_inline() {
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", SCRIPT),
            ("app.css", STYLE),
        ] {
            // The SVG namespace is a name, not a place the browser fetches.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for bad in [
                "http://",
                "https://",
                "//cdn",
                "@import",
                "innerHTML",
                "eval(",
            ] {
                assert!(!text.contains(bad), "{name} contains {bad}");
            }
        }
        assert!(!INDEX.contains("<script>"), "inline script in index.html");
        assert!(!INDEX.contains("<style"), "inline style in index.html");
        assert!(
            !INDEX.contains(" style="),
            "inline style attribute in index.html"
        );
        for handler in ["onclick=", "onload=", "onsubmit=", "onchange=", "oninput="] {
            assert!(!INDEX.contains(handler), "inline {handler} in index.html");
        }
    }
}
