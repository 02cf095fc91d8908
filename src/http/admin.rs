//! The admin API (`/admin/v1/…`), on its own listener, behind bearer tokens
//! with roles: monitor reads, operator also force-releases leases and drains
//! instances, admin does everything. `GET /metrics` (Prometheus) is here too: monitor, or anyone
//! when `metrics_public = true`.

use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

use super::ApiError;
use crate::app::{
    Access, Admission, App, Assignments, Backups, Cluster, Keys, Licenses, Scrape, Seats, Tickets,
    Usage,
};
use crate::domain::seats::{LeaseRef, Role};

/// The caller's role, from `Authorization: Bearer …`.
pub struct Caller(pub Role);

/// Needs only the access service (which knows the tokens).
impl<S> FromRequestParts<S> for Caller
where
    Arc<Access>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let access = Arc::<Access>::from_ref(state);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing Authorization: Bearer <token> (see DATA_DIR/admin.token or `floatlm admin token create`)",
                )
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authorization must be 'Bearer <token>'",
            )
        })?;
        match access.authenticate(token.trim()).await? {
            Some(role) => Ok(Caller(role)),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown or revoked admin token",
            )),
        }
    }
}

impl Caller {
    fn need(&self, role: Role) -> Result<(), ApiError> {
        if self.0 >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; the token has {}",
                    role.as_str(),
                    self.0.as_str()
                ),
            ))
        }
    }
}

type Res = Result<Json<Value>, ApiError>;

/// The admin API's routes; the state is the [`App`], from which each
/// handler takes the services it needs.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/licenses", get(licenses).post(apply_license))
        .route("/admin/v1/licenses/{id}", delete(remove_license))
        .route("/admin/v1/features", get(features))
        .route("/admin/v1/leases", get(leases))
        .route("/admin/v1/leases/{lease}", delete(release_lease))
        .route("/admin/v1/quarantine", post(quarantine))
        .route(
            "/admin/v1/identities",
            get(identities).post(create_identity),
        )
        .route("/admin/v1/identities/{id}", delete(revoke_identity))
        .route(
            "/admin/v1/identities/{id}/features",
            get(identity_features)
                .post(assign_features)
                .delete(unassign_features),
        )
        .route("/admin/v1/tokens", get(tokens).post(create_token))
        .route("/admin/v1/tokens/{id}", delete(revoke_token))
        .route("/admin/v1/cluster", get(cluster))
        .route("/admin/v1/cluster/{id}", delete(remove_instance))
        .route("/admin/v1/cluster/{id}/drain", post(drain_instance))
        .route("/admin/v1/rotate-key", post(rotate_key))
        .route("/admin/v1/verify", post(verify))
        .route("/metrics", get(metrics))
        .route("/admin/v1/usage/report", get(usage_report))
        .route("/admin/v1/backups", get(backups).post(create_backup))
}

/// Prometheus text format; docs/operations.md ("Metrics") lists the metrics.
async fn metrics(
    State(scrape): State<Arc<Scrape>>,
    caller: Result<Caller, ApiError>,
) -> Result<axum::response::Response, ApiError> {
    if !scrape.metrics_public() {
        caller?.need(Role::Monitor)?;
    }
    let body = scrape.metrics_text().await;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response())
}

/// What `admin status` shows: each part from the service that owns it.
#[allow(clippy::too_many_arguments)]
async fn status(
    State(cluster): State<Arc<Cluster>>,
    State(keys): State<Arc<Keys>>,
    State(seats): State<Arc<Seats>>,
    State(licenses): State<Arc<Licenses>>,
    State(admission): State<Arc<Admission>>,
    State(tickets): State<Arc<Tickets>>,
    State(scrape): State<Arc<Scrape>>,
    caller: Caller,
) -> Res {
    caller.need(Role::Monitor)?;
    let health = cluster.health().await;
    Ok(Json(json!({
        "instance": cluster.instance_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "backend": cluster.backend(),
        "started_at": cluster.started_at(),
        "healthy": health.is_ok(),
        "reason": health.err(),
        "draining": cluster.is_draining(),
        "key_ids": keys.key_ids(),
        "lease_ttl_s": seats.lease_ttl().as_secs_f64(),
        "lease_hold_s": seats.lease_hold().as_secs_f64(),
        "heartbeats": seats.heartbeat_counts(),
        "db_retries": scrape.db_retries().iter().map(|r| json!({
            "statement": r.statement,
            "cause": r.cause,
            "errors": r.errors,
            "retried": r.retried,
        })).collect::<Vec<_>>(),
        "integrity_mismatches": licenses.integrity_mismatches(),
        "integrity_refused": licenses.refused_features(),
        "sessions": admission.session_counts(),
        "ticket_keys": tickets.ticket_key_ids(),
        "role": caller.0,
    })))
}

async fn licenses(State(licenses): State<Arc<Licenses>>, caller: Caller) -> Res {
    caller.need(Role::Monitor)?;
    Ok(Json(json!({ "licenses": licenses.licenses().await? })))
}

/// Body: the license file text as it is.
async fn apply_license(State(licenses): State<Arc<Licenses>>, caller: Caller, body: String) -> Res {
    caller.need(Role::Admin)?;
    let (outcome, v) = licenses.apply_license(&body).await?;
    Ok(Json(json!({
        "license_id": v.def.license_id,
        "serial": v.def.serial,
        "result": outcome,
        "features": v.def.features,
    })))
}

async fn remove_license(
    State(licenses): State<Arc<Licenses>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Res {
    caller.need(Role::Admin)?;
    Ok(Json(licenses.remove_license(&id).await?))
}

async fn features(State(licenses): State<Arc<Licenses>>, caller: Caller) -> Res {
    caller.need(Role::Monitor)?;
    Ok(Json(json!({ "features": licenses.features().await? })))
}

async fn leases(State(seats): State<Arc<Seats>>, caller: Caller) -> Res {
    caller.need(Role::Monitor)?;
    Ok(Json(json!({ "leases": seats.leases().await? })))
}

async fn release_lease(
    State(seats): State<Arc<Seats>>,
    caller: Caller,
    Path(lease): Path<String>,
) -> Res {
    caller.need(Role::Operator)?;
    let lease: LeaseRef = lease.parse().map_err(ApiError::bad_request)?;
    let free_at = seats.force_release(lease).await?;
    Ok(Json(json!({ "released": lease, "seat_free_at": free_at })))
}

#[derive(serde::Deserialize)]
struct QuarantineBody {
    /// Seconds; default: the longest lease_ttl any instance recorded, plus 2 s.
    #[serde(default)]
    hold_s: Option<f64>,
}

/// After the database was restored from a backup (or lost transactions in
/// a failover): hold every seat until promises given before have run out.
async fn quarantine(
    State(seats): State<Arc<Seats>>,
    caller: Caller,
    Json(body): Json<QuarantineBody>,
) -> Res {
    caller.need(Role::Admin)?;
    let hold = match body.hold_s {
        None => None,
        Some(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => {
            Some(std::time::Duration::from_secs_f64(s))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "hold_s must be a number of seconds between 0 and 86400",
            ))
        }
    };
    let (slots, until) = seats.quarantine(hold).await?;
    Ok(Json(json!({ "slots_held": slots, "seats_free_at": until })))
}

async fn identities(State(access): State<Arc<Access>>, caller: Caller) -> Res {
    caller.need(Role::Admin)?;
    Ok(Json(json!({ "identities": access.identities().await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewIdentity {
    name: String,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

async fn create_identity(
    State(access): State<Arc<Access>>,
    caller: Caller,
    body: Result<Json<NewIdentity>, axum::extract::rejection::JsonRejection>,
) -> Res {
    caller.need(Role::Admin)?;
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (view, ident) = access.create_identity(&req.name, req.expires_at).await?;
    Ok(Json(
        json!({ "identity": view, "identity_string": ident.reveal() }),
    ))
}

async fn revoke_identity(
    State(access): State<Arc<Access>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Res {
    caller.need(Role::Admin)?;
    let report = access.revoke_identity(&id).await?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// Body of assign / unassign: `{"features": ["cad", …]}`.
#[derive(Deserialize)]
struct FeatureList {
    features: Vec<String>,
}

async fn identity_features(
    State(assignments): State<Arc<Assignments>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Res {
    caller.need(Role::Monitor)?;
    Ok(Json(json!({
        "identity": id,
        "assignment": assignments.assignment(),
        "features": assignments.assigned_features(&id).await?,
    })))
}

async fn assign_features(
    State(assignments): State<Arc<Assignments>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<FeatureList>,
) -> Res {
    caller.need(Role::Admin)?;
    let added = assignments.assign_features(&id, &body.features).await?;
    Ok(Json(json!({
        "identity": id,
        "assignment": assignments.assignment(),
        "added": added,
        "features": assignments.assigned_features(&id).await?,
    })))
}

async fn unassign_features(
    State(assignments): State<Arc<Assignments>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<FeatureList>,
) -> Res {
    caller.need(Role::Admin)?;
    let removed = assignments.unassign_features(&id, &body.features).await?;
    Ok(Json(json!({
        "identity": id,
        "assignment": assignments.assignment(),
        "removed": removed,
        "features": assignments.assigned_features(&id).await?,
    })))
}

async fn tokens(State(access): State<Arc<Access>>, caller: Caller) -> Res {
    caller.need(Role::Admin)?;
    Ok(Json(json!({ "tokens": access.tokens().await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
}

async fn create_token(
    State(access): State<Arc<Access>>,
    caller: Caller,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Res {
    caller.need(Role::Admin)?;
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (view, token) = access.create_token(&req.name, req.role).await?;
    Ok(Json(json!({ "token": view, "secret": token.expose() })))
}

async fn revoke_token(
    State(access): State<Arc<Access>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Res {
    caller.need(Role::Admin)?;
    access.revoke_token(&id).await?;
    Ok(Json(json!({ "revoked": id })))
}

async fn cluster(State(cluster): State<Arc<Cluster>>, caller: Caller) -> Res {
    caller.need(Role::Monitor)?;
    Ok(Json(json!({ "instances": cluster.members().await? })))
}

async fn drain_instance(
    State(cluster): State<Arc<Cluster>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Res {
    caller.need(Role::Operator)?;
    cluster.drain_instance(&id).await?;
    Ok(Json(json!({ "draining": id })))
}

async fn remove_instance(
    State(cluster): State<Arc<Cluster>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Res {
    caller.need(Role::Admin)?;
    cluster.remove_instance(&id).await?;
    Ok(Json(json!({ "removed": id })))
}

async fn rotate_key(State(keys): State<Arc<Keys>>, caller: Caller) -> Res {
    caller.need(Role::Admin)?;
    Ok(Json(
        serde_json::to_value(keys.rotate_key().await?).unwrap_or_default(),
    ))
}

async fn verify(State(licenses): State<Arc<Licenses>>, caller: Caller) -> Res {
    caller.need(Role::Operator)?;
    Ok(Json(
        serde_json::to_value(licenses.verify_integrity().await?).unwrap_or_default(),
    ))
}

/// A backup file of the whole cluster's licensing state, as the response
/// body (`application/octet-stream`); its suggested name in
/// `Content-Disposition`, its manifest digest in `X-Floatlm-Backup-Digest`.
async fn create_backup(
    State(backups): State<Arc<Backups>>,
    caller: Caller,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse;
    caller.need(Role::Operator)?;
    let b = backups.create_backup().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", b.name),
            ),
            (
                header::HeaderName::from_static("x-floatlm-backup-digest"),
                b.manifest.digest.clone(),
            ),
        ],
        b.bytes,
    )
        .into_response())
}

/// `?from=&to=&by=feature|identity|user|host&format=table|csv|json`.
#[derive(Deserialize)]
struct UsageQuery {
    from: String,
    to: String,
    by: Option<String>,
    format: Option<String>,
}

async fn usage_report(
    State(usage): State<Arc<Usage>>,
    caller: Caller,
    Query(q): Query<UsageQuery>,
) -> Result<axum::response::Response, ApiError> {
    use crate::domain::usage::{self, UsageBy, UsageFormat};
    caller.need(Role::Monitor)?;
    let from = usage::parse_time("--from", &q.from).map_err(ApiError::bad_request)?;
    let to = usage::parse_time("--to", &q.to).map_err(ApiError::bad_request)?;
    let by_name = q.by.as_deref().unwrap_or("feature");
    let by: UsageBy = by_name.parse().map_err(ApiError::bad_request)?;
    let format: UsageFormat = q
        .format
        .as_deref()
        .unwrap_or("json")
        .parse()
        .map_err(ApiError::bad_request)?;
    let lines = usage.usage_report(from, to, by).await?;
    if format == UsageFormat::Json {
        return Ok(Json(json!({
            "from": from,
            "to": to,
            "by": by_name,
            "lines": lines,
        }))
        .into_response());
    }
    let ty = if format == UsageFormat::Csv {
        "text/csv; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, ty)],
        usage::render(&lines, by_name, format),
    )
        .into_response())
}

async fn backups(State(backups): State<Arc<Backups>>, caller: Caller) -> Res {
    caller.need(Role::Monitor)?;
    Ok(Json(
        serde_json::to_value(backups.backup_listing().await?).unwrap_or_default(),
    ))
}
