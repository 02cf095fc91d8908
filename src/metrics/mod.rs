//! Prometheus metrics: every metric floatlm exports is defined here, once.
//!
//! [`Metrics`] owns a `prometheus-client` registry and the typed handles the
//! rest of the code counts with (one-line hooks in `app/`, `app/seats/batch.rs` and
//! `http/`). What only the scrape can know (seat counts read from the
//! database, sessions, the connection pool, the cluster view, the last
//! backup) is handed in as a [`ScrapeView`] and encoded by a collector, so it
//! is never stale by more than the scrape's own cache ([`SCRAPE_CACHE`] for
//! the database part). The App owns one `Metrics`; there are no globals.
//!
//! Label values come from closed sets: the enums below, and feature names,
//! which the licenses bound. No lease id, identity, user or host is ever a
//! label. docs/operations.md ("Metrics") lists every metric.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::seats::{Grant, SeatError};
use crate::storage::{PoolUse, SeatFailure};

/// The `Content-Type` of a scrape's answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The database part of a scrape (seat counts, cluster view) may be this
/// old: a scraper polling every 100 ms costs the database one read a second.
pub const SCRAPE_CACHE: Duration = Duration::from_secs(1);

/// Defines a closed set of label values: an enum whose variants print as the
/// given snake_case strings.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                e.write_str(self.as_str())
            }
        }
    };
}

label_values!(
    /// What a request to either listener was, for the latency histogram.
    Operation {
        Healthz => "healthz",
        Ping => "ping",
        Handshake => "handshake",
        Resume => "resume",
        Info => "info",
        Login => "login",
        Heartbeat => "heartbeat",
        Logout => "logout",
        Mine => "mine",
        /// `release` of a lease of the session's identity.
        Release => "release",
        /// A sealed request refused before its operation was known
        /// (unknown session, replay, a changed byte, a bad operation).
        Request => "request",
        Admin => "admin",
        Metrics => "metrics",
        /// Any other path (answered 404).
        Other => "other",
    }
);

impl Operation {
    /// The operation of a path, as far as the path says (a sealed request's
    /// operation is inside it: its handler reports it).
    pub fn of_path(path: &str) -> Operation {
        use floatlm_protocol as p;
        match path {
            crate::http::HEALTHZ_PATH => Operation::Healthz,
            p::PATH_PING => Operation::Ping,
            p::PATH_HANDSHAKE => Operation::Handshake,
            p::PATH_RESUME => Operation::Resume,
            p::PATH_REQUEST => Operation::Request,
            "/metrics" => Operation::Metrics,
            _ if path.starts_with("/admin/") => Operation::Admin,
            _ => Operation::Other,
        }
    }
}

impl Operation {
    /// The operation a sealed request names.
    pub fn of(req: &floatlm_protocol::messages::Request) -> Operation {
        use floatlm_protocol::messages::Request as R;
        match req {
            R::Info { .. } => Operation::Info,
            R::Login { .. } => Operation::Login,
            R::Heartbeat { .. } => Operation::Heartbeat,
            R::Logout { .. } => Operation::Logout,
            R::Mine {} => Operation::Mine,
            R::Release { .. } => Operation::Release,
        }
    }
}

label_values!(
    /// Why a login was answered "No license" (or refused otherwise).
    DenialReason {
        AllSeatsTaken => "all_seats_taken",
        UnknownFeature => "unknown_feature",
        LicenseExpired => "license_expired",
        LicenseRefused => "license_refused",
        AuthDenied => "auth_denied",
        RequestIdReused => "request_id_reused",
        LeaseEnded => "lease_ended",
        IdentityRefused => "identity_refused",
        NotAssigned => "not_assigned",
        Unavailable => "unavailable",
    }
);

label_values!(
    /// How a lease named in a heartbeat was answered.
    HeartbeatAnswer {
        /// Alive, from the check read alone (no write).
        FromRead => "from_read",
        /// Alive, after an extension written before the answer.
        Extended => "extended",
        /// Lost (released, expired, taken over, refused).
        Lost => "lost",
    }
);

label_values!(
    /// What a client's release found.
    ReleaseOutcome {
        Released => "released",
        /// The lease was not live any more (nothing to release).
        NotLive => "not_live",
    }
);

label_values!(
    /// The group-commit queues of `app/seats/batch.rs`.
    BatchKind {
        Grant => "grant",
        Check => "check",
        Extend => "extend",
        Refresh => "refresh",
        Release => "release",
    }
);

label_values!(
    /// Database calls timed from the app and batch layers.
    DbCall {
        GrantBatch => "grant_batch",
        CheckBatch => "check_batch",
        ExtendBatch => "extend_batch",
        ReleaseBatch => "release_batch",
        ForceRelease => "force_release",
        FeatureRows => "feature_rows",
        Instances => "instances",
    }
);

label_values!(
    /// How a session was opened.
    HelloKind {
        Handshake => "handshake",
        Resume => "resume",
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FeatureLabel {
    feature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DenialLabels {
    /// Empty unless the feature is a licensed one (a client can name anything).
    feature: String,
    reason: DenialReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AnswerLabel {
    answer: HeartbeatAnswer,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: ReleaseOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: Operation,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    operation: Operation,
    /// An `ApiError` code: a fixed string of the code, never input.
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HelloLabels {
    kind: HelloKind,
    /// `ok`, or the error code the hello was refused with.
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BatchLabel {
    batch: BatchKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabel {
    call: DbCall,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and database latencies: 0.5 ms to about 8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Requests per batch: 1 to 4096.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Seats of one feature, as `floatlm admin features` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSeats {
    pub feature: String,
    pub total: i64,
    pub used: i64,
    pub free: i64,
    /// The integrity check refuses it (its grants are refused).
    pub refused: bool,
}

/// The database part of a scrape, cached for [`SCRAPE_CACHE`].
#[derive(Debug, Clone, Default)]
pub struct DbView {
    pub features: Vec<FeatureSeats>,
    /// Instances in the cluster view by state (`up`, `draining`, `down`).
    pub instances: Vec<(&'static str, i64)>,
}

/// Sessions of this instance (from `Sessions::counts`).
#[derive(Debug, Clone, Default)]
pub struct SessionView {
    pub live: u64,
    pub pending: u64,
    pub handshakes: u64,
    pub resumes: u64,
    pub identity_refused: u64,
    pub pending_evicted: u64,
    pub tickets_issued: u64,
}

/// Everything a scrape reads besides the counters: filled by the App.
#[derive(Debug, Clone, Default)]
pub struct ScrapeView {
    pub instance_id: String,
    pub backend: &'static str,
    pub started_at: i64,
    pub draining: bool,
    /// None when the database could not be read for this scrape (then the
    /// seat and cluster gauges are absent and `floatlm_scrape_database_up` is 0).
    pub db: Option<Arc<DbView>>,
    pub pools: Vec<PoolUse>,
    pub sessions: SessionView,
    /// Transactions that failed with a conflict (deadlock, Galera
    /// certification), a node not ready, a lock wait or SQLite busy, per
    /// statement kind, since the process started.
    pub db_retries: Vec<DbRetry>,
}

/// Conflicts and retries of one statement kind and cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbRetry {
    /// The storage method (`grant`, `grant_batch`, `check`, `release`, …).
    pub statement: &'static str,
    /// `conflict`, `not_ready`, `lock_wait` or `busy`.
    pub cause: &'static str,
    /// Attempts that failed so.
    pub errors: u64,
    /// Of those, attempts that were run again.
    pub retried: u64,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct RetryLabels {
    statement: &'static str,
    cause: &'static str,
}

/// The last backup this instance reported ([`Metrics::backup_finished`]).
#[derive(Debug, Clone, Copy)]
struct BackupState {
    last_at: DateTime<Utc>,
    last_ok: bool,
    last_success_at: Option<DateTime<Utc>>,
}

/// What the collector encodes at scrape time.
#[derive(Debug, Default)]
struct Scraped {
    view: Mutex<ScrapeView>,
    backup: Mutex<Option<BackupState>>,
}

/// The registry and the handles the code counts with.
pub struct Metrics {
    registry: Registry,
    scraped: Arc<Scraped>,
    /// Serialises scrapes: each encodes the view it set.
    scrape: tokio::sync::Mutex<()>,
    /// The database part of a scrape, read at most once per [`SCRAPE_CACHE`].
    pub(crate) db_cache: crate::cache::Cached<Arc<DbView>>,
    grants: Family<FeatureLabel, Counter>,
    grant_replays: Counter,
    denials: Family<DenialLabels, Counter>,
    releases: Family<OutcomeLabel, Counter>,
    force_releases: Counter,
    usage_denials: Counter,
    expiries: Family<FeatureLabel, Counter>,
    heartbeat_leases: Family<AnswerLabel, Counter>,
    background_extensions: Counter,
    requests: Histograms<OperationLabel>,
    request_errors: Family<ErrorLabels, Counter>,
    hellos: Family<HelloLabels, Counter>,
    batches: Histograms<BatchLabel>,
    db_calls: Histograms<CallLabel>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            scraped: Arc::default(),
            scrape: tokio::sync::Mutex::new(()),
            db_cache: crate::cache::Cached::new(SCRAPE_CACHE),
            grants: Family::default(),
            grant_replays: Counter::default(),
            denials: Family::default(),
            releases: Family::default(),
            force_releases: Counter::default(),
            usage_denials: Counter::default(),
            expiries: Family::default(),
            heartbeat_leases: Family::default(),
            background_extensions: Counter::default(),
            requests: Family::new_with_constructor(latency_histogram),
            request_errors: Family::default(),
            hellos: Family::default(),
            batches: Family::new_with_constructor(batch_histogram),
            db_calls: Family::new_with_constructor(latency_histogram),
        };
        r.register(
            "floatlm_grants",
            "Seats granted by this instance (new leases, not resent logins), by feature",
            m.grants.clone(),
        );
        r.register(
            "floatlm_grant_replays",
            "Resent logins answered with the lease an earlier one was granted",
            m.grant_replays.clone(),
        );
        r.register(
            "floatlm_denials",
            "Logins refused, by reason; feature is set only for licensed features",
            m.denials.clone(),
        );
        r.register(
            "floatlm_releases",
            "Releases (logouts) by what they found",
            m.releases.clone(),
        );
        r.register(
            "floatlm_force_releases",
            "Leases ended by an operator (admin lease release)",
            m.force_releases.clone(),
        );
        r.register(
            "floatlm_usage_denials_recorded",
            "Denials this instance wrote as usage records (seat events are written by the database's trigger)",
            m.usage_denials.clone(),
        );
        r.register(
            "floatlm_lease_expiries",
            "Leases this instance saw expire unreleased, by feature (see docs/operations.md: not yet fed)",
            m.expiries.clone(),
        );
        r.register(
            "floatlm_heartbeat_leases",
            "Leases named in heartbeats, by how they were answered",
            m.heartbeat_leases.clone(),
        );
        r.register(
            "floatlm_lease_background_extensions",
            "Leases queued for an extension after their heartbeat was answered from a read",
            m.background_extensions.clone(),
        );
        r.register_with_unit(
            "floatlm_request_duration",
            "Time to answer a request, by operation",
            Unit::Seconds,
            m.requests.clone(),
        );
        r.register(
            "floatlm_request_errors",
            "Requests answered with a plain error (not sealed), by operation and error code",
            m.request_errors.clone(),
        );
        r.register(
            "floatlm_hellos",
            "Handshakes and resumptions answered, by result (ok or the error code)",
            m.hellos.clone(),
        );
        r.register(
            "floatlm_batch_size",
            "Requests per group-commit batch, by queue",
            m.batches.clone(),
        );
        r.register_with_unit(
            "floatlm_db_call_duration",
            "Time of a database call (one transaction or statement) made by the app or batch layer",
            Unit::Seconds,
            m.db_calls.clone(),
        );
        r.register_collector(Box::new(m.scraped.clone()));
        Metrics { registry: r, ..m }
    }

    // ------------------------------------------------------------------ hooks

    pub fn granted(&self, feature: &str, replayed: bool) {
        if replayed {
            self.grant_replays.inc();
        } else {
            self.grants
                .get_or_create(&FeatureLabel {
                    feature: feature.to_string(),
                })
                .inc();
        }
    }

    /// A refused login. `licensed_feature` is the feature's name when the
    /// server knows it is licensed, else None (a client may name anything).
    pub fn denied(&self, licensed_feature: Option<&str>, reason: DenialReason) {
        self.denials
            .get_or_create(&DenialLabels {
                feature: licensed_feature.unwrap_or_default().to_string(),
                reason,
            })
            .inc();
    }

    /// A login's answer from the seats service: a grant, or a refusal.
    pub fn grant_answered(&self, r: &Result<Grant, SeatFailure>) {
        let (feature, reason) = match r {
            Ok(g) => return self.granted(&g.feature, g.replayed),
            // These name a feature the licenses hold.
            Err(SeatFailure::Refused(SeatError::NoSeat { feature, .. })) => {
                (Some(feature), DenialReason::AllSeatsTaken)
            }
            Err(SeatFailure::Refused(SeatError::Expired(f))) => {
                (Some(f), DenialReason::LicenseExpired)
            }
            Err(SeatFailure::Refused(SeatError::Refused(f, _))) => {
                (Some(f), DenialReason::LicenseRefused)
            }
            // The rest may name anything a client sent.
            Err(SeatFailure::Refused(SeatError::UnknownFeature(_))) => {
                (None, DenialReason::UnknownFeature)
            }
            Err(SeatFailure::Refused(SeatError::RequestIdReused(_))) => {
                (None, DenialReason::RequestIdReused)
            }
            Err(SeatFailure::Refused(SeatError::LeaseEnded(_))) => (None, DenialReason::LeaseEnded),
            Err(SeatFailure::Refused(SeatError::NotAssigned(f))) => {
                (Some(f), DenialReason::NotAssigned)
            }
            Err(SeatFailure::Storage(_)) => (None, DenialReason::Unavailable),
        };
        self.denied(feature.map(String::as_str), reason);
    }

    pub fn released(&self, outcome: ReleaseOutcome) {
        self.releases.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn force_released(&self) {
        self.force_releases.inc();
    }

    /// `n` denials written as usage records.
    pub fn usage_denials_recorded(&self, n: u64) {
        self.usage_denials.inc_by(n);
    }

    /// A lease found expired without a release (for the code that can tell
    /// an expiry from a release: the storage when it reuses a slot).
    pub fn lease_expired(&self, feature: &str) {
        self.expiries
            .get_or_create(&FeatureLabel {
                feature: feature.to_string(),
            })
            .inc();
    }

    pub fn heartbeat_leases(&self, answer: HeartbeatAnswer, n: usize) {
        if n > 0 {
            self.heartbeat_leases
                .get_or_create(&AnswerLabel { answer })
                .inc_by(n as u64);
        }
    }

    pub fn background_extensions(&self, n: usize) {
        self.background_extensions.inc_by(n as u64);
    }

    /// A request answered after `took`; `error` is the plain error's code.
    pub fn request(&self, operation: Operation, took: Duration, error: Option<&'static str>) {
        self.requests
            .get_or_create(&OperationLabel { operation })
            .observe(took.as_secs_f64());
        if let Some(code) = error {
            self.request_errors
                .get_or_create(&ErrorLabels { operation, code })
                .inc();
        }
        let kind = match operation {
            Operation::Handshake => HelloKind::Handshake,
            Operation::Resume => HelloKind::Resume,
            _ => return,
        };
        self.hellos
            .get_or_create(&HelloLabels {
                kind,
                result: error.unwrap_or("ok"),
            })
            .inc();
    }

    pub fn batch(&self, batch: BatchKind, requests: usize) {
        self.batches
            .get_or_create(&BatchLabel { batch })
            .observe(requests as f64);
    }

    /// Runs `call` and records how long it took.
    pub async fn timed<T>(&self, call: DbCall, op: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = op.await;
        self.db_calls
            .get_or_create(&CallLabel { call })
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// Records a backup this instance finished at `at` (`ok`: it was
    /// written and verified). The backup code calls it; until a backup
    /// finishes the backup gauges are absent.
    pub fn backup_finished(&self, ok: bool, at: DateTime<Utc>) {
        let mut b = self.scraped.backup.lock().expect("lock");
        let last_success_at = if ok {
            Some(at)
        } else {
            b.and_then(|b| b.last_success_at)
        };
        *b = Some(BackupState {
            last_at: at,
            last_ok: ok,
            last_success_at,
        });
    }

    // ----------------------------------------------------------------- scrape

    /// The text of one scrape, with `view` as the scrape-time values.
    pub async fn encode(&self, view: ScrapeView) -> String {
        let _one = self.scrape.lock().await;
        *self.scraped.view.lock().expect("lock") = view;
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // Writing into a String fails only if an encoder refuses a value.
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

/// Encodes one metric family from `(labels, value)` rows; nothing when empty.
mod collector;
#[cfg(test)]
mod tests;
