//! What only a scrape can know ([`ScrapeView`], the last backup), encoded
//! by a `prometheus-client` collector at scrape time, and the label sets
//! of those values.

use super::*;

fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: Vec<(L, M)>,
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // Ends in a period like the registered metrics' help (the registry adds it).
    let mut m = enc.encode_descriptor(name, &format!("{help}."), unit, kind)?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One metric without labels.
fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: M,
) -> Result<(), std::fmt::Error> {
    let kind = metric.metric_type();
    metric.encode(enc.encode_descriptor(name, &format!("{help}."), unit, kind)?)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

/// Label sets of the scrape-time families.
#[derive(Debug, Clone, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    backend: &'static str,
    instance_id: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct PoolOnly {
    pool: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct KindLabel {
    kind: HelloKind,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = self.view.lock().expect("lock").clone();
        let e = &mut enc;
        let (g, c) = (MetricType::Gauge, MetricType::Counter);
        family(
            e,
            "floatlm_build_info",
            "Always 1: this instance's version, storage backend and id",
            None,
            g,
            vec![(
                BuildLabels {
                    version: env!("CARGO_PKG_VERSION"),
                    backend: v.backend,
                    instance_id: v.instance_id.clone(),
                },
                gauge(1),
            )],
        )?;
        single(
            e,
            "floatlm_start_time_seconds",
            "When this instance started, Unix time",
            None,
            gauge(v.started_at),
        )?;
        single(
            e,
            "floatlm_draining",
            "1 while this instance drains after SIGTERM",
            None,
            gauge(v.draining.into()),
        )?;
        single(
            e,
            "floatlm_scrape_database_up",
            "1 when this scrape could read seat counts and the cluster view from the database",
            None,
            gauge(v.db.is_some().into()),
        )?;
        if let Some(db) = &v.db {
            let per = |f: fn(&FeatureSeats) -> i64| -> Vec<(FeatureLabel, ConstGauge<i64>)> {
                db.features
                    .iter()
                    .map(|s| {
                        (
                            FeatureLabel {
                                feature: s.feature.clone(),
                            },
                            gauge(f(s)),
                        )
                    })
                    .collect()
            };
            family(
                e,
                "floatlm_feature_seats",
                "Seats licensed and valid now, per feature (admin features: total)",
                None,
                g,
                per(|s| s.total),
            )?;
            family(
                e,
                "floatlm_feature_seats_used",
                "Seats held by live leases, per feature (admin features: used)",
                None,
                g,
                per(|s| s.used),
            )?;
            family(
                e,
                "floatlm_feature_seats_free",
                "Seats a grant could take now, per feature (admin features: free)",
                None,
                g,
                per(|s| s.free),
            )?;
            family(
                e,
                "floatlm_feature_refused",
                "1 when the integrity check refuses the feature (its grants are refused)",
                None,
                g,
                per(|s| s.refused.into()),
            )?;
            family(
                e,
                "floatlm_cluster_instances",
                "Instances in the cluster view, by state",
                None,
                g,
                db.instances
                    .iter()
                    .map(|(state, n)| (StateLabel { state }, gauge(*n)))
                    .collect(),
            )?;
        }
        let pools = |f: fn(&PoolUse) -> (&'static str, u32)| {
            v.pools
                .iter()
                .map(|p| {
                    let (state, n) = f(p);
                    (
                        PoolLabels {
                            pool: p.pool,
                            state,
                        },
                        gauge(n.into()),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut conns = pools(|p| ("idle", p.idle));
        conns.extend(pools(|p| ("in_use", p.open.saturating_sub(p.idle))));
        family(
            e,
            "floatlm_db_pool_connections",
            "Open database connections of this instance, by pool and state",
            None,
            g,
            conns,
        )?;
        family(
            e,
            "floatlm_db_pool_max_connections",
            "The most connections a pool may open",
            None,
            g,
            v.pools
                .iter()
                .map(|p| (PoolOnly { pool: p.pool }, gauge(p.max.into())))
                .collect(),
        )?;
        let retries = |f: fn(&DbRetry) -> u64| {
            v.db_retries
                .iter()
                .map(|r| {
                    (
                        RetryLabels {
                            statement: r.statement,
                            cause: r.cause,
                        },
                        counter(f(r)),
                    )
                })
                .collect::<Vec<_>>()
        };
        family(
            e,
            "floatlm_db_conflicts",
            "Transaction attempts that failed with a retryable error (cause conflict: deadlock or Galera certification conflict; not_ready: Galera node not ready; lock_wait; busy: SQLite), by statement kind",
            None,
            c,
            retries(|r| r.errors),
        )?;
        family(
            e,
            "floatlm_db_retries",
            "Of those, the attempts that were run again (the rest reached the caller as an error)",
            None,
            c,
            retries(|r| r.retried),
        )?;
        let s = &v.sessions;
        family(
            e,
            "floatlm_sessions_open",
            "Protocol sessions held by this instance: live (confirmed by a request) and pending",
            None,
            g,
            vec![
                (StateLabel { state: "live" }, gauge(s.live as i64)),
                (StateLabel { state: "pending" }, gauge(s.pending as i64)),
            ],
        )?;
        family(
            e,
            "floatlm_sessions_opened",
            "Sessions confirmed by their first request, by how they were opened",
            None,
            c,
            vec![
                (
                    KindLabel {
                        kind: HelloKind::Handshake,
                    },
                    counter(s.handshakes),
                ),
                (
                    KindLabel {
                        kind: HelloKind::Resume,
                    },
                    counter(s.resumes),
                ),
            ],
        )?;
        family(
            e,
            "floatlm_sessions_ended",
            "Sessions dropped before their client finished with them, by reason",
            None,
            c,
            vec![
                (
                    ReasonLabel {
                        reason: "identity_refused",
                    },
                    counter(s.identity_refused),
                ),
                (
                    ReasonLabel {
                        reason: "pending_evicted",
                    },
                    counter(s.pending_evicted),
                ),
            ],
        )?;
        single(
            e,
            "floatlm_tickets_issued",
            "Resumption tickets handed out",
            None,
            counter(s.tickets_issued),
        )?;
        if let Some(b) = *self.backup.lock().expect("lock") {
            single(
                e,
                "floatlm_backup_last_timestamp_seconds",
                "When the last backup this instance took finished, Unix time",
                None,
                gauge(b.last_at.timestamp()),
            )?;
            single(
                e,
                "floatlm_backup_last_success",
                "1 when the last backup this instance took succeeded",
                None,
                gauge(b.last_ok.into()),
            )?;
            if let Some(ok_at) = b.last_success_at {
                single(
                    e,
                    "floatlm_backup_last_success_timestamp_seconds",
                    "When the last successful backup this instance took finished, Unix time",
                    None,
                    gauge(ok_at.timestamp()),
                )?;
                single(
                    e,
                    "floatlm_backup_age_seconds",
                    "Seconds since the last successful backup this instance took",
                    None,
                    ConstGauge::new((Utc::now() - ok_at).num_milliseconds().max(0) as f64 / 1e3),
                )?;
            }
        }
        Ok(())
    }
}
