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
    /// The leases this session's identity holds now, from any session
    /// (`floatlm seats`).
    Mine {},
    /// Release a lease of this session's identity that another session may
    /// hold (`floatlm release`): `lease` is a [`HeldSeat::lease`] of a
    /// `mine` answer or the lease id itself. Its holder loses it on its next
    /// heartbeat; the seat is free once every promise given for it has run out.
    Release { lease: String },
}

/// One lease of the identity, as `mine` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSeat {
    /// The seat reference to `release` it by. Not the lease id: the lease
    /// id's last part is replaced by a one-way value of it, so the listing
    /// gives no session the means to `logout` another session's lease.
    pub lease: String,
    pub feature: String,
    /// The OS account and host the holding client reported at login.
    pub user: String,
    pub host: String,
    /// When the lease was granted (Unix milliseconds, database clock).
    pub since_ms: i64,
    /// The latest moment any promise given for the lease can run to; the
    /// seat is free then unless its holder heartbeats (Unix milliseconds,
    /// database clock).
    pub promise_end_ms: i64,
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
    Mine {
        leases: Vec<HeldSeat>,
        /// How many more leases the identity holds than fit in this answer
        /// (one envelope, [`crate::envelope::MAX_ENVELOPE`]); absent when 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        more: u64,
    },
    /// The answer to `release`. `released` is false for a lease that is not
    /// live, not the identity's, or unknown: the three look the same.
    SeatReleased {
        lease: String,
        released: bool,
        /// When the seat is free again (Unix milliseconds, database clock),
        /// once the promise already given to its holder has run out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        free_at_ms: Option<i64>,
    },
    Error {
        code: ErrorCode,
        /// For `no_license`: one of [`reason`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        message: String,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a `mine` answer may hold in JSON, in bytes: with the rest of the
/// answer and a resumption ticket it stays inside one envelope.
pub const MINE_BUDGET: usize = 48 * 1024;

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

/// Limits on the strings a client reports about itself (`auth` of a login,
/// the X-LDK-Instance header). The server refuses a login that breaks them
/// (`bad_request`, nothing stored, nothing logged); the client library
/// makes what it sends fit with [`AuthInfo::sanitized`], so a legitimate
/// client never hears that refusal. docs/protocol.md, "Client-reported
/// strings".
pub mod limits {
    // All in characters (Unicode scalar values) after trimming surrounding
    // whitespace. Together, at four bytes a character, a login keeps well
    // inside one envelope ([`crate::envelope::MAX_ENVELOPE`], 64 KiB).

    /// `user` and `host`.
    pub const NAME_CHARS: usize = 255;
    /// `mech`.
    pub const MECH_CHARS: usize = 64;
    /// `data` (a token or ticket for the auth script).
    pub const DATA_CHARS: usize = 4096;
    /// Group names per login (the client library sends the first ones).
    pub const GROUPS: usize = 64;
    /// Each group name.
    pub const GROUP_CHARS: usize = 128;
    /// The X-LDK-Instance header: visible ASCII, no spaces.
    pub const INSTANCE_CHARS: usize = 128;

    /// Characters no reported string may hold: control characters (C0, DEL,
    /// C1: terminal escapes, line breaks that forge log lines) and the
    /// bidirectional formatting characters that make text display in
    /// another order than it reads.
    pub fn is_unsafe(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            )
    }

    /// What the client library sends for `s`: trimmed, unsafe characters
    /// replaced by U+FFFD, at most `max` characters.
    pub fn sanitize(s: &str, max: usize) -> String {
        let clean: String = s
            .trim()
            .chars()
            .map(|c| if is_unsafe(c) { '\u{FFFD}' } else { c })
            .take(max)
            .collect();
        clean.trim_end().to_string()
    }

    /// Whether the server accepts `s` (already trimmed) as a string of at
    /// most `max` characters; why not otherwise (never quoting `s`).
    pub fn check(field: &str, s: &str, max: usize) -> Result<(), String> {
        let n = s.chars().count();
        if n > max {
            return Err(format!(
                "{field} is {n} characters long; at most {max} are accepted"
            ));
        }
        if let Some(at) = s.chars().position(is_unsafe) {
            return Err(format!(
                "{field} holds a control or bidirectional formatting character (at character {at}); none are accepted"
            ));
        }
        Ok(())
    }

    /// Whether `s` may be an X-LDK-Instance value.
    pub fn valid_instance(s: &str) -> bool {
        s.len() <= INSTANCE_CHARS && s.bytes().all(|b| b.is_ascii_graphic())
    }
}

impl AuthInfo {
    /// This, made to fit [`limits`]: what the client library sends.
    pub fn sanitized(&self) -> AuthInfo {
        use limits::*;
        AuthInfo {
            mech: sanitize(&self.mech, MECH_CHARS),
            data: sanitize(&self.data, DATA_CHARS),
            user: sanitize(&self.user, NAME_CHARS),
            host: sanitize(&self.host, NAME_CHARS),
            groups: self
                .groups
                .iter()
                .map(|g| sanitize(g, GROUP_CHARS))
                .filter(|g| !g.is_empty())
                .take(GROUPS)
                .collect(),
        }
    }

    /// The server's side: this, trimmed, if it keeps to [`limits`]; which
    /// field breaks them otherwise.
    pub fn checked(&self) -> Result<AuthInfo, String> {
        use limits::*;
        if self.groups.len() > GROUPS {
            return Err(format!(
                "auth.groups names {} groups; at most {GROUPS} are accepted",
                self.groups.len()
            ));
        }
        let field = |name: &str, s: &str, max: usize| {
            let s = s.trim();
            check(name, s, max).map(|()| s.to_string())
        };
        Ok(AuthInfo {
            mech: field("auth.mech", &self.mech, MECH_CHARS)?,
            data: field("auth.data", &self.data, DATA_CHARS)?,
            user: field("auth.user", &self.user, NAME_CHARS)?,
            host: field("auth.host", &self.host, NAME_CHARS)?,
            groups: self
                .groups
                .iter()
                .map(|g| field("auth.groups", g, GROUP_CHARS))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Why "no license", machine-readable.
pub mod reason {
    pub const ALL_SEATS_TAKEN: &str = "all_seats_taken";
    pub const UNKNOWN_FEATURE: &str = "unknown_feature";
    pub const LICENSE_EXPIRED: &str = "license_expired";
    pub const LICENSE_REFUSED: &str = "license_refused";
    pub const AUTH_DENIED: &str = "auth_denied";
    /// `assignment = manual` and the feature is not assigned to the identity.
    pub const NOT_ASSIGNED: &str = "not_assigned";
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

    #[test]
    fn the_mine_and_release_vectors_are_what_the_types_write() {
        use crate::vectors::*;
        let seat = "3.0.17.0e73df14bf5e1035";
        let requests = [
            (MINE_REQUEST_JSON, Request::Mine {}),
            (
                RELEASE_REQUEST_JSON,
                Request::Release { lease: seat.into() },
            ),
        ];
        for (text, req) in requests {
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), req);
            assert_eq!(serde_json::to_string(&req).unwrap(), text);
        }
        let responses = [
            (
                MINE_RESPONSE_JSON,
                Response::Mine {
                    leases: vec![HeldSeat {
                        lease: seat.into(),
                        feature: "demo".into(),
                        user: "alice".into(),
                        host: "ws-12".into(),
                        since_ms: 1_767_225_600_000,
                        promise_end_ms: 1_767_225_720_000,
                    }],
                    more: 0,
                },
            ),
            (
                RELEASE_RESPONSE_JSON,
                Response::SeatReleased {
                    lease: seat.into(),
                    released: true,
                    free_at_ms: Some(1_767_225_665_000),
                },
            ),
        ];
        for (text, resp) in responses {
            assert_eq!(serde_json::from_str::<Response>(text).unwrap(), resp);
            assert_eq!(serde_json::to_string(&resp).unwrap(), text);
        }
        // Not released: no free_at_ms on the wire.
        let not = Response::SeatReleased {
            lease: seat.into(),
            released: false,
            free_at_ms: None,
        };
        assert!(!serde_json::to_string(&not).unwrap().contains("free_at"));
        // Members not listed are refused, as for every request.
        assert!(serde_json::from_str::<Request>(r#"{"op":"mine","all":true}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"release"}"#).is_err());
    }

    #[test]
    fn reported_strings_are_limited() {
        let long = "x".repeat(100_000);
        let hostile = AuthInfo {
            mech: "tok\u{1b}[31m".into(),
            data: long.clone(),
            user: format!("  {long}  "),
            host: "dev\u{202E}gnp.exe\n".into(),
            groups: vec!["g".into(); 1000],
        };
        let err = hostile.checked().unwrap_err();
        assert!(err.contains("auth.groups") && err.len() < 200, "{err}");
        let clean = hostile.sanitized();
        assert_eq!(clean.user.chars().count(), limits::NAME_CHARS);
        assert_eq!(clean.mech, "tok\u{FFFD}[31m");
        assert_eq!(clean.host, "dev\u{FFFD}gnp.exe");
        assert_eq!(clean.groups.len(), limits::GROUPS);
        // What the client library sends, the server accepts unchanged.
        assert_eq!(clean.checked().unwrap(), clean);
        let named = AuthInfo {
            user: "田中".into(),
            host: " dev😀 ".into(),
            ..AuthInfo::default()
        };
        assert_eq!(named.checked().unwrap().host, "dev😀");
        assert_eq!(named.sanitized().host, "dev😀");
        let one = |user: &str| {
            AuthInfo {
                user: user.into(),
                ..AuthInfo::default()
            }
            .checked()
        };
        assert!(one(&"é".repeat(255)).is_ok());
        assert!(one(&"é".repeat(256)).unwrap_err().contains("at most 255"));
        assert!(one("a\u{7}b").unwrap_err().contains("control"));
        assert!(limits::valid_instance("0123abcdef"));
        // The largest login the limits allow fits one envelope.
        let wide = |n: usize| "😀".repeat(n);
        let max = Request::Login {
            feature: "f".repeat(64),
            request_id: "r".repeat(96),
            auth: AuthInfo {
                mech: wide(limits::MECH_CHARS),
                data: wide(limits::DATA_CHARS),
                user: wide(limits::NAME_CHARS),
                host: wide(limits::NAME_CHARS),
                groups: vec![wide(limits::GROUP_CHARS); limits::GROUPS],
            },
        };
        let json = serde_json::to_vec(&max).unwrap();
        assert!(
            json.len() + 64 < crate::envelope::MAX_ENVELOPE,
            "{}",
            json.len()
        );
        assert!(!limits::valid_instance("a b") && !limits::valid_instance(&"a".repeat(129)));
    }

    proptest::proptest! {
        #[test]
        fn whatever_the_client_library_sends_the_server_accepts(
            user in ".{0,300}", host in "\\PC{0,300}", groups in proptest::collection::vec(".*", 0..300)
        ) {
            let clean = AuthInfo { user, host, groups, ..AuthInfo::default() }.sanitized();
            proptest::prop_assert_eq!(clean.checked(), Ok(clean.clone()));
        }
    }
}
