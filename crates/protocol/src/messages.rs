//! JSON requests and responses carried inside envelopes.

use serde::{Deserialize, Serialize};

/// What the client tells the auth script about itself (`floatlm serve --auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthInfo {
    /// From the client's FLOATLM_AUTH_MECH.
    #[serde(default)]
    pub mech: String,
    /// From the client's FLOATLM_AUTH_DATA.
    #[serde(default)]
    pub data: String,
    /// The client's OS account.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Seat counts; all features when `features` is empty.
    Info {
        #[serde(default)]
        features: Vec<String>,
    },
    /// Check out one seat. A retry with the same request id gets the first answer.
    Login {
        feature: String,
        request_id: String,
        #[serde(default)]
        auth: AuthInfo,
    },
    /// Renew several leases at once.
    Heartbeat { leases: Vec<String> },
    /// Release one lease.
    Logout { lease: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureInfo {
    pub name: String,
    pub total: i64,
    pub used: i64,
    pub free: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub lease: String,
    pub alive: bool,
    /// The promise: the client may use the seat until its own send time of
    /// this heartbeat plus this many milliseconds (0 when lost).
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Info {
        features: Vec<FeatureInfo>,
    },
    Granted {
        lease: String,
        feature: String,
        /// The promise: the client may use the seat until its own send time
        /// of this request plus this many milliseconds.
        ttl_ms: u64,
        lease_gen: i64,
        replayed: bool,
    },
    Heartbeat {
        leases: Vec<LeaseStatus>,
    },
    Released {
        lease: String,
        released: bool,
    },
    Error {
        code: ErrorCode,
        /// For `no_license`: one of [`reason`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        message: String,
    },
}

/// Error codes inside sealed responses (see docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No seat: all taken, unknown feature, expired, denied by the auth script.
    NoLicense,
    BadRequest,
    Unavailable,
    /// A resent login (same request id) whose lease has ended: released,
    /// expired, force-released or granted to someone else. Log in again with
    /// a new request id.
    LeaseEnded,
}

/// Why "no license", machine-readable.
pub mod reason {
    pub const ALL_SEATS_TAKEN: &str = "all_seats_taken";
    pub const UNKNOWN_FEATURE: &str = "unknown_feature";
    pub const LICENSE_EXPIRED: &str = "license_expired";
    pub const LICENSE_REFUSED: &str = "license_refused";
    pub const AUTH_DENIED: &str = "auth_denied";
}
