//! Seats: grants, heartbeats (a check read, then an extension when due),
//! releases, force releases and quarantine. The rules are in
//! `domain::seats`, the SQL in `storage`; see docs/seats.md. [`batch`]
//! groups concurrent seat calls into one transaction or one read.

pub mod batch;

use super::*;
use crate::auth_hook::AuthInput;
use crate::domain::seats::RequestId;
use crate::metrics::{DbCall, DenialReason, HeartbeatAnswer, ReleaseOutcome};
use crate::sessions::Session;
use floatlm_protocol::messages::{limits, AuthInfo};

/// A client's login as the transport decoded and checked it.
pub struct Login {
    pub feature: String,
    pub request_id: RequestId,
    /// What the client reports about itself, within the protocol's limits.
    pub auth: AuthInfo,
    /// The client's address as believed ([`Admission::client_addr`]).
    pub addr: String,
    /// The client's X-LDK-Instance ("" when absent).
    pub instance: String,
}

/// A seat granted at login and how long the answer promises it.
pub struct LoginGrant {
    pub grant: Grant,
    /// The promise in milliseconds, capped at the identity's own expiry.
    pub ttl_ms: u64,
}

/// Why an operation on a session is answered with an error.
pub enum Refused {
    /// The identity was revoked or expired (while the operation ran): the
    /// session ends too.
    Identity(IdentityRefusal),
    /// The auth script said no, for this reason.
    AuthDenied(String),
    /// The seat was refused (or the database failed the grant).
    Seat(SeatFailure),
    /// The database failed: the client is told "unavailable".
    Failed(AppError),
}

/// Heartbeat answers per lease since start, by how they were reached.
#[derive(Default)]
struct HeartbeatStats {
    /// Answered from the check read alone (no write).
    read_only: AtomicU64,
    /// Of those, extended in the background afterwards.
    refreshed: AtomicU64,
    /// Extended before the answer (the lease was nearly out).
    written: AtomicU64,
    /// Answered lost.
    lost: AtomicU64,
}

/// What the seat service is built from (the services it calls included).
pub(super) struct Parts {
    pub storage: Arc<dyn Storage>,
    pub config: Arc<Config>,
    pub gate: Arc<DbGate>,
    pub metrics: Arc<Metrics>,
    pub batches: Arc<batch::SeatBatchers>,
    pub licenses: Arc<Licenses>,
    pub access: Arc<Access>,
    pub assignments: Arc<Assignments>,
    pub usage: Arc<Usage>,
}

/// Seats: logins, grants, heartbeats, releases; the invariant's answers
/// are made here (docs/seats.md).
pub struct Seats {
    /// Group commit of grants, heartbeat checks, extensions and releases.
    batches: Arc<batch::SeatBatchers>,
    /// How heartbeats were answered, per lease (for `admin status`).
    heartbeat_stats: HeartbeatStats,
    /// When a heartbeat last named a lease newer than its slot (logged once a minute).
    went_back_logged: std::sync::Mutex<Option<std::time::Instant>>,
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    gate: Arc<DbGate>,
    metrics: Arc<Metrics>,
    /// Refused features, and the seat counts a change invalidates.
    licenses: Arc<Licenses>,
    /// The identity's refusal and expiry, the auth script.
    access: Arc<Access>,
    assignments: Arc<Assignments>,
    usage: Arc<Usage>,
}

impl Seats {
    pub(super) fn new(p: Parts) -> Seats {
        Seats {
            batches: p.batches,
            heartbeat_stats: HeartbeatStats::default(),
            went_back_logged: std::sync::Mutex::new(None),
            storage: p.storage,
            config: p.config,
            gate: p.gate,
            metrics: p.metrics,
            licenses: p.licenses,
            access: p.access,
            assignments: p.assignments,
            usage: p.usage,
        }
    }

    /// A client's login: refused when the feature is not assigned to the
    /// identity (app/assignment.rs), else [`Seats::grant_login`]; a refusal
    /// is noted as a usage denial (app/usage.rs).
    pub async fn login(&self, session: &Session, login: Login) -> Result<LoginGrant, Refused> {
        let noted = (
            login.feature.clone(),
            login.auth.user.clone(),
            login.auth.host.clone(),
            login.addr.clone(),
        );
        let r = match self
            .assignments
            .assignment_refusal(&session.identity_id, &login.feature)
            .await
        {
            Ok(()) => self.grant_login(session, login).await,
            Err(refused) => Err(refused),
        };
        if let Err(why) = &r {
            self.usage
                .note_refused_login(&session.identity_id, noted, why);
        }
        r
    }

    /// A client's login on `session`: the feature name checked, the auth
    /// script run (if configured), a seat granted for `lease_hold` and
    /// promised for `lease_ttl` (capped at the identity's expiry). An
    /// identity refused while the grant ran is never told of its lease: the
    /// lease ends like an operator's force release (a resent login of it on
    /// another instance may have promised it).
    async fn grant_login(&self, session: &Session, login: Login) -> Result<LoginGrant, Refused> {
        let Login {
            feature,
            request_id,
            auth,
            addr,
            instance,
        } = login;
        let identity = session.identity_id.as_str();
        if !crate::domain::valid_name(&feature) {
            self.metrics.denied(None, DenialReason::UnknownFeature);
            return Err(Refused::Seat(SeatFailure::Refused(
                SeatError::UnknownFeature(
                    feature
                        .chars()
                        .filter(|c| !limits::is_unsafe(*c))
                        .take(64)
                        .collect(),
                ),
            )));
        }
        let input = || AuthInput {
            mech: auth.mech.clone(),
            data: auth.data.clone(),
            addr,
            user: auth.user.clone(),
            groups: auth.groups.clone(),
        };
        if let Err(why) = self.access.check_auth(input).await {
            tracing::info!(%identity, %feature, user = %auth.user, reason = %why, "login denied by the auth script");
            self.metrics.denied(None, DenialReason::AuthDenied);
            return Err(Refused::AuthDenied(why));
        }
        let req = GrantRequest {
            feature,
            request_id,
            holder: identity.to_string(),
            client_info: format!("{}@{} ({})", auth.user, auth.host, instance)
                .chars()
                .take(255)
                .collect(),
            hold: self.config.lease_hold,
            promise: self.config.lease_ttl,
            instance_id: self.config.instance_id.clone(),
        };
        let g = self.grant(&req).await.map_err(Refused::Seat)?;
        let ttl_ms = self.capped(session, g.promise.as_millis() as u64);
        match (self.access.identity_refusal(session), ttl_ms) {
            (None, Some(ttl_ms)) => Ok(LoginGrant { grant: g, ttl_ms }),
            (refusal, _) => {
                self.metrics.denied(None, DenialReason::IdentityRefused);
                self.end_refused_grant(g.lease).await;
                Err(Refused::Identity(
                    refusal.unwrap_or_else(|| expired_now(session)),
                ))
            }
        }
    }

    /// A heartbeat of `session` for `leases` (None: a lease id that did not
    /// parse): per lease, the promise in milliseconds ([`Seats::renew`], capped
    /// at the identity's expiry), or None when it is lost.
    pub async fn heartbeat(
        &self,
        session: &Session,
        leases: &[Option<LeaseRef>],
    ) -> Result<Vec<Option<u64>>, Refused> {
        let valid: Vec<LeaseRef> = leases.iter().flatten().copied().collect();
        let renewed = self
            .renew(&session.identity_id, &valid)
            .await
            .map_err(Refused::Failed)?;
        if let Some(why) = self.access.identity_refusal(session) {
            return Err(Refused::Identity(why));
        }
        let mut it = renewed.into_iter();
        Ok(leases
            .iter()
            .map(|p| match p.and_then(|_| it.next()) {
                Some(Renewal::Renewed(d)) if !d.is_zero() => {
                    self.capped(session, d.as_millis() as u64)
                }
                _ => None,
            })
            .collect())
    }

    /// Caps a promise at what is left of the identity's own validity: no
    /// identity holds a seat past its expiry. None: it has expired meanwhile.
    fn capped(&self, session: &Session, ttl_ms: u64) -> Option<u64> {
        match self.access.identity_time_left(session) {
            None => Some(ttl_ms),
            Some(left) if left.is_zero() => None,
            Some(left) => Some(ttl_ms.min(left.as_millis().max(1) as u64)),
        }
    }

    /// How long a lease is promised to its client (`lease_ttl`).
    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    /// How long the database keeps a seat after its last recorded renewal
    /// (`lease_hold`).
    pub fn lease_hold(&self) -> Duration {
        self.config.lease_hold
    }

    /// Grants one seat of `req.feature` (group-committed with concurrent
    /// logins). The grant's `promise` rests on the transaction that took the
    /// slot (or, for a resent request id, on a fresh read of its row).
    pub async fn grant(&self, req: &GrantRequest) -> Result<Grant, SeatFailure> {
        let r = self.grant_seat(req).await;
        self.metrics.grant_answered(&r);
        r
    }

    async fn grant_seat(&self, req: &GrantRequest) -> Result<Grant, SeatFailure> {
        // Feature names are spelled exactly as licensed (A-Z a-z 0-9 _ . -);
        // anything else names no feature, whatever a database collation says.
        if !crate::domain::valid_name(&req.feature) {
            return Err(SeatError::UnknownFeature(req.feature.chars().take(64).collect()).into());
        }
        if let Some(why) = self.licenses.refusal(&req.feature) {
            return Err(SeatError::Refused(req.feature.clone(), why).into());
        }
        let g = self.batches.grant(req.clone()).await?;
        // This instance's own clients see their change at once; others'
        // changes show within USAGE_CACHE.
        self.licenses.seats_changed();
        Ok(g)
    }

    /// Renews `leases` of `holder`. Every answer rests on a read of the
    /// lease's row made for this heartbeat (one statement for all concurrent
    /// heartbeats, no lock, no write), so a release through any instance, a
    /// force release or a restore is seen by the next heartbeat; this
    /// instance's memory is never the evidence.
    ///
    /// A lease whose recorded expiry still covers a full `lease_ttl` is
    /// answered from the read alone. One with at least half a TTL left is
    /// answered with what is left and extended in the background. The rest
    /// are extended first (a conditional write, batched) and answered from
    /// that write. Leases of a feature whose license window closed or that
    /// the integrity check refuses are answered lost.
    pub async fn renew(&self, holder: &str, leases: &[LeaseRef]) -> Result<Vec<Renewal>, AppError> {
        let ttl = self.config.lease_ttl;
        let checks = self
            .batches
            .check(holder, leases)
            .await
            .map_err(|e| database_failed(&self.gate, "a heartbeat's lease check failed", &e))?;
        let (refused, untrusted) = self.licenses.refusals();
        let mut out: Vec<Option<Renewal>> = Vec::with_capacity(leases.len());
        let (mut urgent, mut due) = (Vec::new(), Vec::new());
        for (lease, check) in leases.iter().zip(checks) {
            let live = match check {
                Check::Live(live)
                    if !live.window_closed()
                        && (!refused.contains_key(&live.feature)
                            || untrusted.contains(&live.feature)) =>
                {
                    live
                }
                Check::WentBack => {
                    // Once per minute at most: a client that keeps
                    // heartbeating a lease lost to a restore would flood it.
                    let mut last = self.went_back_logged.lock().expect("lock");
                    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        *last = Some(std::time::Instant::now());
                        tracing::warn!(%lease, "a heartbeat names a lease newer than its slot: the database was restored or lost transactions (run `floatlm admin quarantine` after a restore), or the client made the lease id up");
                    }
                    out.push(Some(Renewal::Lost));
                    continue;
                }
                _ => {
                    out.push(Some(Renewal::Lost));
                    continue;
                }
            };
            let left = live.left();
            if left >= ttl / 2 {
                if left < ttl || live.cap < ttl {
                    due.push(*lease);
                }
                out.push(Some(Renewal::Renewed(live.promise(ttl))));
            } else {
                urgent.push((*lease, live));
                out.push(None);
            }
        }
        let stats = &self.heartbeat_stats;
        let answered_live = out
            .iter()
            .filter(|o| matches!(o, Some(Renewal::Renewed(_))))
            .count();
        stats
            .read_only
            .fetch_add(answered_live as u64, Ordering::Relaxed);
        if !due.is_empty() {
            let queued = self.batches.refresh(holder, &due);
            stats.refreshed.fetch_add(queued as u64, Ordering::Relaxed);
            self.metrics.background_extensions(queued);
        }
        if !urgent.is_empty() {
            let targets: Vec<LeaseRef> = urgent.iter().map(|(l, _)| *l).collect();
            // A write that cannot be made now (the row is locked by a stalled
            // instance, the database just failed) leaves the read as the
            // evidence: it backs a shorter promise, which is still true.
            let written = match self.batches.extend(holder, &targets).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, leases = targets.len(), "could not extend nearly expired leases; answering from their reads");
                    vec![Extension::Busy; targets.len()]
                }
            };
            stats
                .written
                .fetch_add(urgent.len() as u64, Ordering::Relaxed);
            let hold =
                chrono::Duration::from_std(self.config.lease_hold).unwrap_or(chrono::Duration::MAX);
            let mut answers = urgent
                .into_iter()
                .zip(written)
                .map(|((_, read), ext)| match ext {
                    // The write matched: the lease was live at `now` and is held
                    // at least `lease_hold` past it, with a cap of at least
                    // `lease_ttl`.
                    Extension::Extended(now) => Renewal::Renewed(
                        LiveLease {
                            now,
                            expires_at: now + hold,
                            cap: read.cap.max(ttl),
                            ..read
                        }
                        .promise(ttl),
                    ),
                    Extension::Busy => Renewal::Renewed(read.promise(ttl)),
                    Extension::Lost => Renewal::Lost,
                });
            for o in out.iter_mut().filter(|o| o.is_none()) {
                *o = answers.next();
            }
        }
        let out: Vec<Renewal> = out
            .into_iter()
            .map(|o| o.unwrap_or(Renewal::Lost))
            .collect();
        let lost = out.iter().filter(|r| **r == Renewal::Lost).count();
        stats.lost.fetch_add(lost as u64, Ordering::Relaxed);
        let m = &self.metrics;
        m.heartbeat_leases(HeartbeatAnswer::FromRead, answered_live);
        let extended = out.len().saturating_sub(answered_live + lost);
        m.heartbeat_leases(HeartbeatAnswer::Extended, extended);
        m.heartbeat_leases(HeartbeatAnswer::Lost, lost);
        Ok(out)
    }

    /// How heartbeats were answered since start, per lease.
    pub fn heartbeat_counts(&self) -> serde_json::Value {
        let s = &self.heartbeat_stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "answered_from_read": n(&s.read_only),
            "extended_in_background": n(&s.refreshed),
            "extended_before_answer": n(&s.written),
            "lost": n(&s.lost),
        })
    }

    /// Releases `holder`'s `lease`; false when it was not live any more.
    pub async fn release(&self, holder: &str, lease: LeaseRef) -> Result<bool, AppError> {
        let released = self
            .batches
            .release(holder, lease)
            .await
            .map_err(|e| database_failed(&self.gate, "a release failed", &e))?
            .is_some();
        self.metrics.released(match released {
            true => ReleaseOutcome::Released,
            false => ReleaseOutcome::NotLive,
        });
        self.licenses.seats_changed();
        Ok(released)
    }

    /// The live leases of identity `holder`, from any of its sessions
    /// (`mine`): only the identity's own, never another's.
    pub async fn mine(
        &self,
        holder: &str,
    ) -> Result<Vec<crate::domain::seats::LeaseInfo>, AppError> {
        Ok(self.storage.held_by(holder).await?)
    }

    /// Releases a lease of identity `holder` that another session may
    /// hold (`release`); `given` is its lease id or its seat reference
    /// ([`LeaseRef::seat_ref`]). Like an operator's force release, the
    /// holder learns it lost the seat on its next heartbeat and the seat is
    /// free once every promise already given for it has run out: the
    /// holder's client may still be running. Returns when the seat is free
    /// (database clock); None when `given` names no live lease of this
    /// identity (another identity's lease answers the same).
    pub async fn release_mine(
        &self,
        holder: &str,
        given: LeaseRef,
    ) -> Result<Option<DateTime<Utc>>, AppError> {
        // The slot's current lease, if it is this identity's and `given`
        // names it; the release below matches that full lease id and holder
        // again, so a lease that ended or was re-granted since is untouched.
        let Some(lease) = self
            .storage
            .held_by(holder)
            .await?
            .into_iter()
            .map(|l| l.lease)
            .find(|l| l.named_by(&given))
        else {
            return Ok(None);
        };
        let free_at = self
            .metrics
            .timed(
                DbCall::ForceRelease,
                self.storage.release_own(holder, lease),
            )
            .await?;
        self.licenses.seats_changed();
        if let Some(at) = free_at {
            self.metrics.force_released();
            tracing::info!(%lease, identity = %holder, free_at = %at, "lease released by a session of its own identity");
        }
        Ok(free_at)
    }

    /// Every live lease of the cluster (for operators).
    pub async fn leases(&self) -> Result<Vec<crate::domain::seats::LeaseInfo>, AppError> {
        Ok(self.storage.leases().await?)
    }

    /// An operator's release of any lease: its holder is told it lost the
    /// seat on its next heartbeat; the seat is free again once every promise
    /// already given for it has run out. Returns when (database clock).
    pub async fn force_release(&self, lease: LeaseRef) -> Result<DateTime<Utc>, AppError> {
        let free_at = self
            .metrics
            .timed(DbCall::ForceRelease, self.storage.force_release(lease))
            .await?;
        self.licenses.seats_changed();
        match free_at {
            Some(at) => {
                self.metrics.force_released();
                tracing::info!(%lease, free_at = %at, "lease force-released by an operator");
                Ok(at)
            }
            None => Err(AppError::NotFound(format!(
                "lease {lease} is not live (already released, expired or re-granted)"
            ))),
        }
    }

    /// After the database went back in time: ends every lease and holds
    /// every seat for `hold`, so no seat is granted while a promise given
    /// before may still run. The default hold is the longest `lease_ttl` any
    /// instance recorded (and this one's), plus the clock margin and a second
    /// of slack. Returns the slots held and until when (database clock).
    pub async fn quarantine(
        &self,
        hold: Option<Duration>,
    ) -> Result<(u64, DateTime<Utc>), AppError> {
        let hold = match hold {
            Some(h) => h,
            None => {
                let longest = self
                    .storage
                    .instances()
                    .await?
                    .iter()
                    .map(|i| Duration::from_millis(i.lease_ttl_ms.max(0) as u64))
                    .fold(self.config.lease_ttl, Duration::max);
                longest + CLOCK_MARGIN + Duration::from_secs(1)
            }
        };
        let n = self.storage.quarantine(hold).await?;
        let until =
            self.storage.now().await? + chrono::Duration::from_std(hold).unwrap_or_default();
        self.licenses.seats_changed();
        tracing::warn!(
            slots = n,
            hold_s = hold.as_secs_f64(),
            %until,
            "quarantine: every lease ended, every seat held by nobody until the promises given before have run out"
        );
        Ok((n, until))
    }

    /// Ends a lease granted to an identity that was refused while the grant
    /// ran (its client is never told of it), like an operator would.
    pub async fn end_refused_grant(&self, lease: LeaseRef) {
        match self.storage.force_release(lease).await {
            Ok(_) => self.licenses.seats_changed(),
            Err(e) => {
                tracing::warn!(%lease, error = %e, "could not end the lease of a refused identity; it runs out by itself")
            }
        }
    }
}

/// The refusal of an identity that expired just now (between the request's
/// check and its answer).
fn expired_now(session: &Session) -> IdentityRefusal {
    let at = session.identity_expires.unwrap_or_else(Utc::now);
    IdentityRefusal::expired(&session.identity_id, at)
}
