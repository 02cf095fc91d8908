//! JSON requests and responses carried inside envelopes.

use serde::{Deserialize, Serialize};

use crate::handshake::ResumeGrant;

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
    /// The session's identity was revoked by an operator: final. The session
    /// is gone and its leases were ended; do not fail over, tell the user.
    IdentityRevoked,
    /// The session's identity is past its expiry: final, as for a revocation.
    IdentityExpired,
}

impl ErrorCode {
    /// Whether this answer ends the session's identity for good: the client
    /// stops (no failover, no resumption, no new handshake would help).
    pub fn is_identity_refusal(self) -> bool {
        matches!(
            self,
            ErrorCode::IdentityRevoked | ErrorCode::IdentityExpired
        )
    }
}

/// What a sealed response carries: the operation's [`Response`], and, in the
/// first response of a session, the session's resumption ticket. A ticket is
/// handed out only once the session proved to be live (a replayed hello
/// never gets that far), so it is not part of the ServerHello any more.
///
/// On the wire `resume` is one more member of the response object, beside
/// `result`; clients that do not know it ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedResponse {
    #[serde(flatten)]
    pub response: Response,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeGrant>,
}

impl From<Response> for SealedResponse {
    fn from(response: Response) -> Self {
        SealedResponse {
            response,
            resume: None,
        }
    }
}

/// Why "no license", machine-readable.
pub mod reason {
    pub const ALL_SEATS_TAKEN: &str = "all_seats_taken";
    pub const UNKNOWN_FEATURE: &str = "unknown_feature";
    pub const LICENSE_EXPIRED: &str = "license_expired";
    pub const LICENSE_REFUSED: &str = "license_refused";
    pub const AUTH_DENIED: &str = "auth_denied";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_rides_beside_the_result_and_old_readers_ignore_it() {
        let sealed = SealedResponse {
            response: Response::Info { features: vec![] },
            resume: Some(ResumeGrant {
                ticket: "00ff".into(),
                secret: "11".repeat(32),
                valid_for_s: 60,
            }),
        };
        let json = serde_json::to_string(&sealed).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["result"], "info");
        assert_eq!(v["resume"]["ticket"], "00ff");
        assert_eq!(
            serde_json::from_str::<SealedResponse>(&json).unwrap(),
            sealed
        );
        // A reader of plain responses (an older client) still understands it.
        assert_eq!(
            serde_json::from_str::<Response>(&json).unwrap(),
            Response::Info { features: vec![] }
        );
        // And a response without a ticket reads as one.
        let err = Response::Error {
            code: ErrorCode::IdentityRevoked,
            reason: None,
            message: "revoked".into(),
        };
        let plain = serde_json::to_string(&err).unwrap();
        assert!(plain.contains("\"identity_revoked\""), "{plain}");
        let read: SealedResponse = serde_json::from_str(&plain).unwrap();
        assert_eq!(read, SealedResponse::from(err));
        let granted = Response::Granted {
            lease: "1.0.2.00".into(),
            feature: "f".into(),
            ttl_ms: u64::MAX,
            lease_gen: -3,
            replayed: true,
        };
        let json = serde_json::to_string(&SealedResponse::from(granted.clone())).unwrap();
        assert_eq!(
            serde_json::from_str::<SealedResponse>(&json)
                .unwrap()
                .response,
            granted
        );
    }
}
