//! HTTP: the licensing listener (healthz, the protocol routes) and the
//! admin listener, each an axum router whose state is the [`App`]; each
//! handler takes only the service it needs (`State<Arc<Seats>>`, …, through
//! `FromRef`). Serving with drain on SIGTERM.

pub mod admin;
pub mod console;
pub mod error;
pub mod protocol;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::app::{App, Cluster};
use crate::metrics::Metrics;
pub use error::ApiError;

/// Response header naming the instance that answered.
pub const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-ldk-server-instance");
/// Request header the client sets to its own random id; proxies hash it.
pub const CLIENT_INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-ldk-instance");
pub const HEALTHZ_PATH: &str = "/sentinel/ldk/v1/healthz";

async fn healthz(State(cluster): State<Arc<Cluster>>) -> Response {
    let body = |status: &str, reason: Option<String>| {
        json!({
            "status": status,
            "instance": cluster.instance_id(),
            "version": env!("CARGO_PKG_VERSION"),
            "backend": cluster.backend(),
            "reason": reason,
        })
    };
    match cluster.health().await {
        Ok(()) => (StatusCode::OK, Json(body("ok", None))).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(body("unavailable", Some(why))),
        )
            .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Times every request and counts plain error answers by code
/// (`floatlm_request_duration_seconds`, `floatlm_request_errors_total`). A
/// sealed request's handler names its operation on the response.
async fn observe(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let op = crate::metrics::Operation::of_path(req.uri().path());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let op = resp.extensions().get().copied().unwrap_or(op);
    let error = resp.extensions().get().map(|e: &error::ErrorCode| e.0);
    metrics.request(op, started.elapsed(), error);
    resp
}

async fn stamp_instance(State(cluster): State<Arc<Cluster>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(cluster.instance_id()) {
        resp.headers_mut().insert(INSTANCE_HEADER, v);
    }
    resp
}

/// Layers every router shares: body limit, panics as 500 JSON, tracing,
/// instance header, metrics.
fn common(router: Router<App>, app: &App) -> Router {
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            app.cluster().clone(),
            stamp_instance,
        ))
        .layer(middleware::from_fn_with_state(
            app.metrics().clone(),
            observe,
        ))
        .layer(RequestBodyLimitLayer::new(app.max_body_bytes()))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }))
        // Failed requests are logged where they fail (ApiError); a 503 from
        // healthz during an outage is an answer, not an error to log on
        // every probe of every load balancer.
        .layer(
            TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .with_state(app.clone())
}

/// The licensing listener's router.
pub fn licensing_router(app: &App) -> Router {
    common(
        Router::new()
            .route(HEALTHZ_PATH, get(healthz))
            .route(floatlm_protocol::PATH_PING, get(protocol::ping))
            .route(floatlm_protocol::PATH_HANDSHAKE, post(protocol::handshake))
            .route(floatlm_protocol::PATH_RESUME, post(protocol::resume))
            .route(floatlm_protocol::PATH_REQUEST, post(protocol::request)),
        app,
    )
}

/// The admin listener's router: the admin API, and the web console when
/// `ui` is on; security headers on every answer, cross-site state changes
/// refused ([`console::same_origin_writes`]).
pub fn admin_router(app: &App) -> Router {
    let mut routes = admin::routes();
    if app.console_on() {
        routes = routes.merge(console::routes());
    }
    common(
        routes
            .layer(middleware::from_fn(console::same_origin_writes))
            .layer(middleware::from_fn(console::security_headers)),
        app,
    )
}

/// Serves both listeners until `shutdown` resolves, then drains: healthz
/// turns 503 at once, requests keep being served for the drain delay, then
/// the listeners stop accepting and in-flight requests finish.
pub async fn serve(
    app: Arc<App>,
    licensing: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_app = app.clone();
    tokio::spawn(async move {
        shutdown.await;
        drain_app.cluster().set_draining();
        tracing::info!(
            delay_s = drain_app.drain_delay().as_secs_f64(),
            "draining: healthz now answers 503; serving until the drain delay ends"
        );
        tokio::time::sleep(drain_app.drain_delay()).await;
        tracing::info!("drain delay over: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let maintenance = tokio::spawn(app.clone().maintenance(stop_rx.clone()));
    let db_watch = tokio::spawn(app.cluster().clone().watch_database(stop_rx.clone()));
    let backups = tokio::spawn(app.backups().clone().backup_schedule(stop_rx.clone()));
    let counts = tokio::spawn(app.licenses().clone().keep_counts_warm(stop_rx.clone()));
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let advertised = app.cluster().advertised_address(addr(&licensing));
    let heartbeat = tokio::spawn(app.clone().cluster_heartbeat(
        advertised,
        addr(&admin),
        stop_rx.clone(),
    ));
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let lic = axum::serve(
        licensing,
        licensing_router(&app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(wait(stop_rx.clone()));
    let adm = axum::serve(
        admin,
        admin_router(&app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(wait(stop_rx.clone()));
    let finish = async {
        let (a, b) = tokio::join!(lic, adm);
        let _ = maintenance.await;
        let _ = heartbeat.await;
        let _ = db_watch.await;
        let _ = backups.await;
        let _ = counts.await;
        a.and(b)
    };
    // Whatever the database does (a request or the last heartbeat waiting on
    // a node that is gone), the process ends SHUTDOWN_GRACE after the drain
    // delay: the clients' leases outlive it, and another instance serves them.
    let grace = async move {
        wait(stop_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = finish => r,
        _ = grace => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs_f64(),
                "stopping although requests or database calls are still running: the shutdown grace is over"
            );
            Ok(())
        }
    }
}

/// How long in-flight requests and background tasks may take to finish
/// after the drain delay before the process stops anyway.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
