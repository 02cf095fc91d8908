//! Unit tests of the metric definitions and their text.

use super::*;

#[tokio::test]
async fn names_follow_the_conventions_and_the_scrape_view_shows() {
    let m = Metrics::new();
    m.granted("cad", false);
    m.granted("cad", true);
    m.denied(Some("cad"), DenialReason::AllSeatsTaken);
    m.denied(None, DenialReason::UnknownFeature);
    m.request(
        Operation::Handshake,
        Duration::from_millis(3),
        Some("auth_failed"),
    );
    m.batch(BatchKind::Grant, 7);
    m.timed(DbCall::GrantBatch, async {}).await;
    let text = m
        .encode(ScrapeView {
            instance_id: "i-1".into(),
            backend: "sqlite",
            db: Some(Arc::new(DbView {
                features: vec![FeatureSeats {
                    feature: "cad".into(),
                    total: 5,
                    used: 2,
                    free: 3,
                    refused: false,
                }],
                instances: vec![("up", 1)],
            })),
            ..Default::default()
        })
        .await;
    for line in [
        "floatlm_grants_total{feature=\"cad\"} 1",
        "floatlm_grant_replays_total 1",
        "floatlm_denials_total{feature=\"cad\",reason=\"all_seats_taken\"} 1",
        "floatlm_denials_total{feature=\"\",reason=\"unknown_feature\"} 1",
        "floatlm_hellos_total{kind=\"handshake\",result=\"auth_failed\"} 1",
        "floatlm_request_duration_seconds_count{operation=\"handshake\"} 1",
        "floatlm_batch_size_bucket{batch=\"grant\",le=\"8\"} 1",
        "floatlm_db_call_duration_seconds_count{call=\"grant_batch\"} 1",
        "floatlm_feature_seats{feature=\"cad\"} 5",
        "floatlm_feature_seats_used{feature=\"cad\"} 2",
        "floatlm_feature_seats_free{feature=\"cad\"} 3",
        "floatlm_cluster_instances{state=\"up\"} 1",
        "floatlm_scrape_database_up 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line} in:\n{text}"
        );
    }
    assert!(!text.contains("floatlm_backup_"), "{text}");
    let at = Utc::now() - chrono::Duration::seconds(30);
    m.backup_finished(true, at);
    m.backup_finished(false, Utc::now());
    let text = m.encode(ScrapeView::default()).await;
    assert!(text.contains("floatlm_backup_last_success 0\n"), "{text}");
    assert!(
        text.contains(&format!(
            "floatlm_backup_last_success_timestamp_seconds {}\n",
            at.timestamp()
        )),
        "{text}"
    );
    assert!(text.contains("floatlm_scrape_database_up 0\n"), "{text}");
    assert!(!text.contains("floatlm_feature_seats"), "{text}");
}

#[tokio::test]
async fn docs_list_every_metric() {
    let m = Metrics::new();
    m.granted("f", false);
    m.denied(None, DenialReason::AuthDenied);
    m.released(ReleaseOutcome::Released);
    m.lease_expired("f");
    m.heartbeat_leases(HeartbeatAnswer::Lost, 1);
    m.request(Operation::Resume, Duration::ZERO, Some("ticket_refused"));
    m.batch(BatchKind::Check, 1);
    m.backup_finished(true, Utc::now());
    let text = m
        .encode(ScrapeView {
            db: Some(Arc::new(DbView {
                features: vec![FeatureSeats {
                    feature: "f".into(),
                    total: 1,
                    used: 0,
                    free: 1,
                    refused: false,
                }],
                instances: vec![("up", 1)],
            })),
            pools: vec![PoolUse {
                pool: "main",
                open: 1,
                idle: 1,
                max: 1,
            }],
            ..Default::default()
        })
        .await;
    let docs = include_str!("../../docs/operations.md");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(names.len() >= 30, "{names:?}");
    for name in names {
        assert!(
            docs.contains(&format!("| `{name}` |")),
            "docs/operations.md (\"Metrics\") does not list {name}"
        );
    }
}
