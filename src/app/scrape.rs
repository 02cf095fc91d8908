//! What `GET /metrics` reads at scrape time: seat counts and the cluster view
//! from the database (through the same services as `admin features` and
//! `admin cluster status`, cached for `metrics::SCRAPE_CACHE` so scrapes
//! cannot hammer the database), and this instance's sessions and pools.
//! The metric definitions are in `crate::metrics`.

use super::*;
use crate::metrics::{DbCall, DbRetry, DbView, FeatureSeats, ScrapeView, SessionView};

/// A scrape waits this long for the database, then answers without the
/// database's part (`floatlm_scrape_database_up 0`).
const SCRAPE_DB_WAIT: Duration = Duration::from_secs(2);

/// What one scrape of `GET /metrics` reads, besides the metrics kept as
/// they happen.
pub struct Scrape {
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// The session table, counted.
    sessions: Arc<Sessions>,
    /// Seat counts as `admin features` shows them.
    licenses: Arc<Licenses>,
    /// Instances by state, this one's start and whether it drains.
    cluster: Arc<Cluster>,
}

impl Scrape {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        sessions: Arc<Sessions>,
        licenses: Arc<Licenses>,
        cluster: Arc<Cluster>,
    ) -> Scrape {
        Scrape {
            storage,
            config,
            metrics,
            sessions,
            licenses,
            cluster,
        }
    }

    /// Whether `GET /metrics` answers without a token (`metrics_public`).
    pub fn metrics_public(&self) -> bool {
        self.config.metrics_public
    }

    /// The Prometheus text of one scrape.
    pub async fn metrics_text(&self) -> String {
        let db = match tokio::time::timeout(
            SCRAPE_DB_WAIT,
            self.metrics.db_cache.get(|| self.scrape_db()),
        )
        .await
        {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metrics: the database part of a scrape failed");
                None
            }
            Err(_) => None,
        };
        let c = self.sessions.counts();
        let view = ScrapeView {
            instance_id: self.config.instance_id.clone(),
            backend: match self.storage.backend() {
                Backend::Sqlite => "sqlite",
                Backend::Mysql => "mysql",
            },
            started_at: self.cluster.started_at().timestamp(),
            draining: self.cluster.is_draining(),
            db,
            pools: self.storage.pool_use(),
            db_retries: self.db_retries(),
            sessions: SessionView {
                live: c.active as u64,
                pending: c.pending as u64,
                handshakes: c.handshakes,
                resumes: c.resumes,
                identity_refused: c.identity_refused,
                pending_evicted: c.pending_evicted,
                tickets_issued: c.tickets_issued,
            },
        };
        self.metrics.encode(view).await
    }

    /// Conflicts and retries per statement kind, as storage counted them
    /// (`/metrics` and `admin status`).
    pub fn db_retries(&self) -> Vec<DbRetry> {
        crate::storage::RETRY_STATS
            .snapshot()
            .into_iter()
            .map(|(statement, cause, n)| DbRetry {
                statement,
                cause: cause.as_str(),
                errors: n.errors,
                retried: n.retried,
            })
            .collect()
    }

    /// Seat counts as `admin features` shows them, and instances by state.
    async fn scrape_db(&self) -> Result<Arc<DbView>, AppError> {
        let m = &self.metrics;
        let features = m
            .timed(DbCall::FeatureRows, self.licenses.features())
            .await?;
        let members = m.timed(DbCall::Instances, self.cluster.members()).await?;
        let instances = ["up", "draining", "down"]
            .into_iter()
            .map(|state| {
                let n = members.iter().filter(|i| i.state == state).count();
                (state, n as i64)
            })
            .collect();
        Ok(Arc::new(DbView {
            features: features
                .into_iter()
                .map(|f| FeatureSeats {
                    feature: f.usage.name,
                    total: f.usage.total,
                    used: f.usage.used,
                    free: f.usage.free,
                    refused: f.refused.is_some(),
                })
                .collect(),
            instances,
        }))
    }
}
