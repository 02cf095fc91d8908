//! Seat leases: the types every backend shares, and the rule that bounds
//! every promise.
//!
//! The invariant is stated on promises (docs/seats.md): an answer telling a
//! client it holds a lease promises it from the request's send time for the
//! `ttl_ms` answered, and at no instant may more than N leases of a feature
//! carry an unexpired promise. The storage backends keep the slot rows
//! (conditional, single-row updates); [`promise`] turns what a transaction or
//! a check read of a row saw into the longest promise that row backs.

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

/// Names one grant of one slot: `feature_id.slot_no.lease_gen.nonce`.
/// `lease_gen` is the fencing token: it rises on every grant of the slot.
/// `nonce` is drawn at random by every grant, so a lease id is never handed
/// out twice even when the database goes back in time (a restore, a failover
/// that lost transactions) and `lease_gen` repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseRef {
    pub feature_id: i64,
    pub slot_no: i64,
    pub lease_gen: i64,
    /// 0 only for leases granted before nonces existed (three-part ids).
    pub nonce: i64,
}

impl LeaseRef {
    /// A fresh nonce: 63 random bits (a BIGINT column), never 0.
    pub fn new_nonce() -> i64 {
        (rand::random::<u64>() >> 1).max(1) as i64
    }

    /// The seat reference a `mine` answer shows for this lease: the nonce is
    /// replaced by a one-way value of it (SHA-256, domain separated), so a
    /// session that lists its identity's leases learns nothing it could
    /// `logout` with (a logout frees a slot at once and needs the nonce);
    /// it can only `release`, which waits out the holder's promise.
    pub fn seat_ref(&self) -> LeaseRef {
        use sha2::{Digest, Sha256};
        let h = Sha256::new()
            .chain_update(b"floatlm seat ref v1\0")
            .chain_update(self.nonce.to_be_bytes())
            .finalize();
        let v = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
        LeaseRef {
            nonce: ((v >> 1).max(1)) as i64,
            ..*self
        }
    }

    /// Whether `given` names this lease, as its lease id or its [`seat_ref`].
    ///
    /// [`seat_ref`]: LeaseRef::seat_ref
    pub fn named_by(&self, given: &LeaseRef) -> bool {
        *given == *self || *given == self.seat_ref()
    }
}

impl fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.feature_id, self.slot_no, self.lease_gen)?;
        if self.nonce != 0 {
            write!(f, ".{:016x}", self.nonce)?;
        }
        Ok(())
    }
}

impl FromStr for LeaseRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "lease id '{}' is not of the form FEATURE.SLOT.GEN.NONCE",
                s.chars().take(60).collect::<String>()
            )
        };
        let mut it = s.split('.');
        let mut next = || -> Result<i64, String> {
            it.next()
                .and_then(|p| p.parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .ok_or_else(err)
        };
        let (feature_id, slot_no, lease_gen) = (next()?, next()?, next()?);
        // Three parts: a lease granted before nonces existed.
        let nonce = match it.next() {
            None => 0,
            Some(n) if n.len() == 16 => u64::from_str_radix(n, 16)
                .ok()
                .and_then(|v| i64::try_from(v).ok())
                .filter(|v| *v > 0)
                .ok_or_else(err)?,
            Some(_) => return Err(err()),
        };
        if it.next().is_some() {
            return Err(err());
        }
        Ok(LeaseRef {
            feature_id,
            slot_no,
            lease_gen,
            nonce,
        })
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
    /// How long the database keeps the lease (`lease_hold`).
    pub hold: Duration,
    /// The longest promise the answering instance gives (`lease_ttl`).
    pub promise: Duration,
    /// Instance that granted it, for the operators' view.
    pub instance_id: String,
}

/// A granted lease, with times read from the database clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub lease: LeaseRef,
    pub feature: String,
    pub granted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// True when this answer repeats an earlier grant with the same request id.
    pub replayed: bool,
    /// What the answer may promise, from the row this transaction checked.
    pub promise: Duration,
}

/// Allowance for database clock steps between the moment a row is checked
/// and the moment another transaction compares its expiry with the clock
/// (a failover to a host whose clock is ahead). Every promise ends this much
/// before the expiry the database holds; docs/seats.md gives the bound.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// A live lease as one read of its row saw it: enough to bound a promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLease {
    /// The database clock of the read.
    pub now: DateTime<Utc>,
    /// The slot is held until then (it only ever rises, except by release).
    pub expires_at: DateTime<Utc>,
    /// The longest promise any instance may give for this lease (the row's
    /// `promise_ms`; a force release waits this long past its revocation).
    pub cap: Duration,
    pub feature: String,
    /// The end of the feature's license window, if it has one.
    pub window_end: Option<DateTime<Utc>>,
}

impl LiveLease {
    /// The longest promise this read backs for an instance whose `lease_ttl`
    /// is `ttl`: never past the recorded expiry nor the license window (less
    /// the clock margin), never longer than the row's cap.
    ///
    /// The answer promises from the request's send time, which is before
    /// `now` (the request was read after it was sent), so the promise ends
    /// before `expires_at − CLOCK_MARGIN` by the database clock. A grant of
    /// this slot to anyone else needs `expires_at <= now` there, or a release.
    pub fn promise(&self, ttl: Duration) -> Duration {
        let until = self
            .window_end
            .map_or(self.expires_at, |w| w.min(self.expires_at));
        (until - self.now)
            .to_std()
            .unwrap_or_default()
            .saturating_sub(CLOCK_MARGIN)
            .min(ttl)
            .min(self.cap)
    }

    /// How long the recorded expiry is ahead of this read, less the clock
    /// margin: what a promise could have if nothing else capped it.
    pub fn left(&self) -> Duration {
        (self.expires_at - self.now)
            .to_std()
            .unwrap_or_default()
            .saturating_sub(CLOCK_MARGIN)
    }

    /// Whether the feature's license window has closed (by this read's clock).
    pub fn window_closed(&self) -> bool {
        self.window_end.is_some_and(|w| w <= self.now)
    }
}

/// What one read of a lease's slot row says about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Live(LiveLease),
    /// Released, expired, re-granted, revoked, or not this holder's.
    Lost,
    /// The slot's `lease_gen` is below the lease's: the database went back
    /// in time (restored from a backup, or a failover lost transactions).
    WentBack,
}

/// The outcome of renewing one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Promise the client this long from its request's send time.
    Renewed(Duration),
    /// Released, expired, re-granted to someone else, or not this holder's.
    Lost,
}

/// Why a seat request was refused: only refusals by the seat rules. A
/// database failure is storage's to say (`storage::SeatFailure` wraps both).
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
    /// `assignment = manual` and the feature is not assigned to the
    /// identity that asked.
    #[error("No license: feature '{0}' is not assigned to this identity")]
    NotAssigned(String),
    /// A resent login whose lease is no longer held: the answer repeats only
    /// what is still true.
    #[error("lease {0} of this request has ended (released, expired or taken over): log in again with a new request id")]
    LeaseEnded(LeaseRef),
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
    /// None for a seat held by nobody (see [`crate::storage::Storage::quarantine`]).
    pub granted_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    /// The slot is being retired after the license shrank; it will not be re-granted.
    pub retiring: bool,
    /// An operator force-released it: no holder is served any more, and the
    /// seat is free at `expires_at`, once every promise already given ended.
    pub revoked: bool,
}

/// Roles of admin tokens, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only.
    Monitor,
    /// Read, force-release leases and drain instances.
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
    fn a_seat_ref_names_its_lease_and_cannot_be_logged_out() {
        let lease: LeaseRef = "3.0.17.5c1e2a9b0d4f7163".parse().unwrap();
        let seat = lease.seat_ref();
        // The value docs/protocol.md's vectors show.
        assert_eq!(seat.to_string(), "3.0.17.0e73df14bf5e1035");
        assert_eq!(seat.to_string().parse::<LeaseRef>().unwrap(), seat);
        assert!(lease.named_by(&lease) && lease.named_by(&seat));
        assert_ne!(seat, lease);
        // A seat reference of a seat reference names nothing.
        assert!(!lease.named_by(&seat.seat_ref()));
        let regranted = LeaseRef {
            lease_gen: 18,
            nonce: LeaseRef::new_nonce(),
            ..lease
        };
        assert!(!regranted.named_by(&lease) && !regranted.named_by(&seat));
    }

    #[test]
    fn lease_ref_round_trip() {
        let r = LeaseRef {
            feature_id: 3,
            slot_no: 4,
            lease_gen: 99,
            nonce: LeaseRef::new_nonce(),
        };
        assert_eq!(r.to_string().split('.').count(), 4);
        assert_eq!(r.to_string().parse::<LeaseRef>().unwrap(), r);
        // Leases granted before nonces existed keep their three-part ids.
        let old: LeaseRef = "1.2.3".parse().unwrap();
        assert_eq!((old.lease_gen, old.nonce), (3, 0));
        assert_eq!(old.to_string(), "1.2.3");
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "1.2.3.0000000000000000",
            "1.2.3.ffffffffffffffff",
            "1.2.3.000000000000000g",
            "1.2.3.0000000000000001.5",
            "a.b.c",
            "-1.2.3",
        ] {
            assert!(bad.parse::<LeaseRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_promise_never_reaches_the_expiry_the_window_or_the_cap() {
        let now = Utc::now();
        let live = |expires_s: i64, window_s: Option<i64>, cap_s: u64| LiveLease {
            now,
            expires_at: now + chrono::Duration::seconds(expires_s),
            cap: Duration::from_secs(cap_s),
            feature: "f".into(),
            window_end: window_s.map(|w| now + chrono::Duration::seconds(w)),
        };
        let ttl = Duration::from_secs(60);
        assert_eq!(live(120, None, 60).promise(ttl), ttl);
        assert_eq!(live(30, None, 60).promise(ttl), Duration::from_secs(29));
        assert_eq!(
            live(120, Some(11), 60).promise(ttl),
            Duration::from_secs(10)
        );
        assert_eq!(live(120, None, 5).promise(ttl), Duration::from_secs(5));
        assert_eq!(live(-5, None, 60).promise(ttl), Duration::ZERO);
        assert!(live(120, Some(0), 60).window_closed());
        assert!(!live(120, Some(1), 60).window_closed());
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(RequestId::new("s1:42").is_ok());
        assert!(RequestId::new("").is_err());
        assert!(RequestId::new("a b").is_err());
        assert!(RequestId::new("x".repeat(97)).is_err());
    }
}
