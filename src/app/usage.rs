//! Usage records: every login answered with a refusal is noted here and
//! written in batches (best effort: no seat changed, so nothing is promised
//! by it); seat events are written by the database in the same statement as
//! the seat change (migrations/*/0010_usage_events.sql). Also the report
//! (`admin usage report`) and the upkeep: the sweep of leases that expired
//! unseen and the purge past `usage_retention`, both in bounded chunks.

use super::*;
use crate::domain::usage::{self, Denial, UsageBy, UsageLine};
use crate::metrics::DenialReason;

/// Denials kept in memory before a flush; past it, new ones are dropped
/// (and counted in the log): a flood of refusals must not grow memory.
const DENIAL_BUFFER: usize = 50_000;
/// Rows per INSERT of denials, per sweep and per purge statement.
pub const USAGE_CHUNK: u32 = 1_000;
/// Chunks per upkeep round, so one round is bounded whatever the rate.
const CHUNKS_PER_ROUND: usize = 100;
/// Rows a report may read.
const REPORT_ROWS: u32 = 5_000_000;

/// The usage-record name of a refusal; None for a database failure (not a
/// refusal by the rules, and the database could not take the row anyway).
fn denial_reason(r: &Refused) -> Option<&'static str> {
    let reason = match r {
        Refused::Identity(_) => DenialReason::IdentityRefused,
        Refused::AuthDenied(_) => DenialReason::AuthDenied,
        Refused::Seat(SeatFailure::Refused(e)) => match e {
            SeatError::NoSeat { .. } => DenialReason::AllSeatsTaken,
            SeatError::Expired(_) => DenialReason::LicenseExpired,
            SeatError::Refused(..) => DenialReason::LicenseRefused,
            SeatError::UnknownFeature(_) => DenialReason::UnknownFeature,
            SeatError::RequestIdReused(_) => DenialReason::RequestIdReused,
            SeatError::LeaseEnded(_) => DenialReason::LeaseEnded,
            SeatError::NotAssigned(_) => DenialReason::NotAssigned,
        },
        Refused::Seat(SeatFailure::Storage(_)) | Refused::Failed(_) => return None,
    };
    Some(reason.as_str())
}

fn clip(s: &str, n: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(n).collect()
}

/// What a login said of itself, kept for its usage record should it be
/// refused: (feature, user, host, address).
pub(super) type LoginNote = (String, String, String, String);

/// Usage records: denials noted and written in batches, the upkeep of the
/// usage tables, and the report.
pub struct Usage {
    /// Refused logins not yet written as usage records.
    denials: std::sync::Mutex<Vec<Denial>>,
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    clock: Arc<Clock>,
}

impl Usage {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        clock: Arc<Clock>,
    ) -> Usage {
        Usage {
            denials: Default::default(),
            storage,
            config,
            metrics,
            clock,
        }
    }

    /// Notes a login of `identity` answered with `why` as a usage denial
    /// (a database failure is no denial, and is not noted).
    pub(super) fn note_refused_login(&self, identity: &str, noted: LoginNote, why: &Refused) {
        if let Some(reason) = denial_reason(why) {
            let (feature, user, host, addr) = noted;
            self.note_denial(Denial {
                at: self.clock.db_now(),
                feature: feature
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                    .take(64)
                    .collect(),
                identity: identity.to_string(),
                user: clip(&user, 255),
                host: clip(&host, 255),
                address: clip(&addr, 64),
                instance: self.config.instance_id.clone(),
                reason: reason.to_string(),
            });
        }
    }

    fn note_denial(&self, d: Denial) {
        let mut buf = self.denials.lock().expect("lock");
        if buf.len() < DENIAL_BUFFER {
            buf.push(d);
        } else {
            tracing::warn!("usage denial buffer full: a denial is not recorded");
        }
    }

    /// Writes the denials noted so far, in chunks of one INSERT each; a
    /// failed chunk is dropped (best effort, logged).
    pub async fn flush_denials(&self) {
        let batch = std::mem::take(&mut *self.denials.lock().expect("lock"));
        for chunk in batch.chunks(USAGE_CHUNK as usize) {
            match self.storage.record_denials(chunk).await {
                Ok(()) => self.metrics.usage_denials_recorded(chunk.len() as u64),
                Err(e) => {
                    tracing::warn!(error = %e, lost = chunk.len(), "could not record usage denials")
                }
            }
        }
    }

    /// One round of usage upkeep: denials flushed, expired leases swept
    /// into `expiry` events, rows past `usage_retention` purged; each step
    /// at most CHUNKS_PER_ROUND chunks.
    pub async fn usage_upkeep(&self) {
        self.flush_denials().await;
        for _ in 0..CHUNKS_PER_ROUND {
            match self.storage.sweep_expired(USAGE_CHUNK).await {
                Ok(n) if n < u64::from(USAGE_CHUNK) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not sweep expired leases into usage records");
                    break;
                }
            }
        }
        let Ok(keep) = chrono::Duration::from_std(self.config.usage_retention) else {
            return;
        };
        let before = self.clock.db_now() - keep;
        for _ in 0..CHUNKS_PER_ROUND {
            match self.storage.purge_usage(before, USAGE_CHUNK).await {
                Ok(n) if n < u64::from(USAGE_CHUNK) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not purge old usage records");
                    break;
                }
            }
        }
    }

    /// The usage report of [from, to) grouped `by` (checkouts, seat-hours,
    /// peak concurrency, denials). Denials noted on this instance are
    /// written first, so a report sees them.
    pub async fn usage_report(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        by: UsageBy,
    ) -> Result<Vec<UsageLine>, AppError> {
        if to <= from {
            return Err(AppError::BadRequest(format!(
                "usage report: --to ({to}) must be after --from ({from})"
            )));
        }
        self.flush_denials().await;
        let events = self.storage.usage_window(from, to, REPORT_ROWS).await?;
        Ok(usage::report(&events, from, to, self.clock.db_now(), by))
    }
}
