//! Every error leaves as JSON `{"error": code, "message": text}`, plus
//! `"incident": id` when the cause is in the log under that id (database
//! failures: their text never leaves, see [`crate::incident`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppError;
use crate::domain::seats::SeatError;
use crate::incident::Incident;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The incident whose detail is in the log.
    pub incident: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            incident: None,
        }
    }

    /// 503 `unavailable`: generic text and the incident id.
    pub fn incident(i: Incident) -> Self {
        ApiError {
            incident: Some(i.id().to_string()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                i.to_string(),
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // An incident's detail is logged already, under its id.
        if self.status.is_server_error() && self.incident.is_none() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(id) = self.incident {
            body["incident"] = id.into();
        }
        let mut resp = (self.status, Json(body)).into_response();
        // For the metrics layer: requests failed, by code.
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

/// The code of a plain error answer, kept on the response for metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let msg = e.to_string();
        match e {
            AppError::BadRequest(_) => Self::new(StatusCode::BAD_REQUEST, "bad_request", msg),
            AppError::License(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "license_invalid", msg)
            }
            AppError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", msg),
            AppError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", msg),
            AppError::Unauthorized(_) => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", msg),
            AppError::Seat(s) => s.into(),
            AppError::Incident(i) => Self::incident(i),
            AppError::Internal(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg),
        }
    }
}

impl From<SeatError> for ApiError {
    fn from(e: SeatError) -> Self {
        let msg = e.to_string();
        match e {
            SeatError::NoSeat { .. } => Self::new(StatusCode::CONFLICT, "no_license", msg),
            SeatError::UnknownFeature(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_feature", msg)
            }
            SeatError::Expired(_) => Self::new(StatusCode::FORBIDDEN, "license_expired", msg),
            SeatError::Refused(..) => Self::new(StatusCode::FORBIDDEN, "license_refused", msg),
            SeatError::NotAssigned(_) => Self::new(StatusCode::FORBIDDEN, "not_assigned", msg),
            SeatError::RequestIdReused(_) => {
                Self::new(StatusCode::CONFLICT, "request_id_reused", msg)
            }
            SeatError::LeaseEnded(_) => Self::new(StatusCode::GONE, "lease_ended", msg),
        }
    }
}
