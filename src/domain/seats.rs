//! Seat leases: the types every backend shares.
//!
//! The invariant itself lives in the storage backends' SQL (conditional,
//! single-row updates on slot rows); this module names the pieces.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// The id a client puts on every state-changing request (session id plus a
/// sequence number): a retry with the same id gets the first answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty()
            || s.len() > 96
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
        {
            return Err("request id must be 1-96 characters of A-Z a-z 0-9 : . _ -".into());
        }
        Ok(RequestId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        RequestId::new(s)
    }
}

impl From<RequestId> for String {
    fn from(r: RequestId) -> String {
        r.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names one grant of one slot: `feature_id.slot_no.lease_gen`.
/// `lease_gen` is the fencing token: it rises on every grant of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseRef {
    pub feature_id: i64,
    pub slot_no: i64,
    pub lease_gen: i64,
}

impl fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.feature_id, self.slot_no, self.lease_gen)
    }
}

impl FromStr for LeaseRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "lease id '{}' is not of the form FEATURE.SLOT.GEN",
                s.chars().take(40).collect::<String>()
            )
        };
        let mut it = s.split('.');
        let mut next = || -> Result<i64, String> {
            it.next()
                .and_then(|p| p.parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .ok_or_else(err)
        };
        let r = LeaseRef {
            feature_id: next()?,
            slot_no: next()?,
            lease_gen: next()?,
        };
        if it.next().is_some() {
            return Err(err());
        }
        Ok(r)
    }
}

impl Serialize for LeaseRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A request for one seat of `feature`.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub feature: String,
    pub request_id: RequestId,
    /// Who holds the lease (identity id); renew and release must match it.
    pub holder: String,
    /// Free text about the client (host, user), shown to operators.
    pub client_info: String,
    pub ttl: Duration,
    /// Instance that granted it, for the operators' view.
    pub instance_id: String,
}

/// A granted lease, with times read from the database clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease: LeaseRef,
    pub feature: String,
    pub granted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// True when this answer repeats an earlier grant with the same request id.
    pub replayed: bool,
}

/// The outcome of renewing one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed(DateTime<Utc>),
    /// Released, expired, re-granted to someone else, or not this holder's.
    Lost,
}

#[derive(Debug, Error)]
pub enum SeatError {
    #[error("No license: all {total} seats of feature '{feature}' are in use")]
    NoSeat { feature: String, total: i64 },
    #[error("No license: feature '{0}' is not licensed on this server")]
    UnknownFeature(String),
    #[error("No license: every license for feature '{0}' has expired or is not yet valid")]
    Expired(String),
    #[error(
        "No license: feature '{0}' is refused because its license failed the integrity check ({1})"
    )]
    Refused(String, String),
    #[error("request id '{0}' was already used for a different request")]
    RequestIdReused(String),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// A seat count row for operators and `floatlm query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureUsage {
    pub name: String,
    /// Seats licensed and currently valid (license window open).
    pub total: i64,
    /// Live leases, including those on seats being retired after a shrink.
    pub used: i64,
    /// Seats a grant could take right now.
    pub free: i64,
}

/// One live lease, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub lease: LeaseRef,
    pub feature: String,
    pub license_id: String,
    pub holder: String,
    pub client_info: String,
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The slot is being retired after the license shrank; it will not be re-granted.
    pub retiring: bool,
}

/// Roles of admin tokens, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only.
    Monitor,
    /// Read, and force-release leases.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "monitor" => Ok(Role::Monitor),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}': use monitor, operator or admin"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ref_round_trip() {
        let r = LeaseRef {
            feature_id: 3,
            slot_no: 4,
            lease_gen: 99,
        };
        assert_eq!(r.to_string().parse::<LeaseRef>().unwrap(), r);
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "-1.2.3"] {
            assert!(bad.parse::<LeaseRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(RequestId::new("s1:42").is_ok());
        assert!(RequestId::new("").is_err());
        assert!(RequestId::new("a b").is_err());
        assert!(RequestId::new("x".repeat(97)).is_err());
    }
}
