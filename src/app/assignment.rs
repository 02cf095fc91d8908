//! Feature assignment (`assignment = manual`): which features an identity
//! may see in `info` and check out. With `auto` (the default) every
//! identity may use every feature and nothing here reads the database.

use super::*;
use crate::config::Assignment;
use crate::metrics::DenialReason;

/// Which features each identity may use (`assignment = manual`).
pub struct Assignments {
    storage: Arc<dyn Storage>,
    config: Arc<Config>,
    gate: Arc<DbGate>,
    metrics: Arc<Metrics>,
    /// The features clients are told of.
    licenses: Arc<Licenses>,
}

impl Assignments {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        config: Arc<Config>,
        gate: Arc<DbGate>,
        metrics: Arc<Metrics>,
        licenses: Arc<Licenses>,
    ) -> Assignments {
        Assignments {
            storage,
            config,
            gate,
            metrics,
            licenses,
        }
    }

    /// Whether features are assigned per identity.
    pub fn assignment(&self) -> Assignment {
        self.config.assignment
    }

    /// The features `identity` may use: None for all of them (`auto`).
    async fn assigned(&self, identity: &str) -> Result<Option<Vec<String>>, AppError> {
        if self.config.assignment == Assignment::Auto {
            return Ok(None);
        }
        Ok(Some(
            gated(&self.gate, || self.storage.assigned_features(identity)).await?,
        ))
    }

    /// Refuses a login of `feature` by `identity` that is not assigned it
    /// (manual assignment); one primary-key read per login in that mode.
    pub(super) async fn assignment_refusal(
        &self,
        identity: &str,
        feature: &str,
    ) -> Result<(), Refused> {
        // A name no license can hold is refused as unknown by the grant.
        if !crate::domain::valid_name(feature) {
            return Ok(());
        }
        match self.assigned(identity).await {
            Ok(None) => Ok(()),
            Ok(Some(list)) if list.iter().any(|f| f == feature) => Ok(()),
            Ok(Some(_)) => {
                let licensed = self
                    .licenses
                    .features_cached()
                    .await
                    .ok()
                    .filter(|all| all.iter().any(|f| f.usage.name == feature))
                    .map(|_| feature);
                self.metrics.denied(licensed, DenialReason::NotAssigned);
                Err(Refused::Seat(SeatFailure::Refused(SeatError::NotAssigned(
                    feature.to_string(),
                ))))
            }
            Err(e) => Err(Refused::Failed(e)),
        }
    }

    /// Seat counts for a client's `info`: every feature (auto), or only
    /// those assigned to `identity` (manual).
    pub async fn features_for(&self, identity: &str) -> Result<Vec<FeatureView>, AppError> {
        let all = self.licenses.features_cached().await?;
        Ok(match self.assigned(identity).await? {
            None => all.as_ref().clone(),
            Some(list) => all
                .iter()
                .filter(|f| list.contains(&f.usage.name))
                .cloned()
                .collect(),
        })
    }

    /// Assigns `features` to identity `id` (which must exist); how many were
    /// new. Names are checked like feature names in licenses; a feature
    /// need not be licensed yet.
    pub async fn assign_features(&self, id: &str, features: &[String]) -> Result<u64, AppError> {
        self.check_assignment(id, features).await?;
        Ok(gated(&self.gate, || self.storage.assign_features(id, features)).await?)
    }

    /// Takes `features` from identity `id`; how many it had.
    pub async fn unassign_features(&self, id: &str, features: &[String]) -> Result<u64, AppError> {
        self.check_assignment(id, features).await?;
        Ok(gated(&self.gate, || self.storage.unassign_features(id, features)).await?)
    }

    /// The features assigned to identity `id`.
    pub async fn assigned_features(&self, id: &str) -> Result<Vec<String>, AppError> {
        Ok(gated(&self.gate, || self.storage.assigned_features(id)).await?)
    }

    async fn check_assignment(&self, id: &str, features: &[String]) -> Result<(), AppError> {
        if features.is_empty() {
            return Err(AppError::BadRequest("name at least one feature".into()));
        }
        if let Some(bad) = features.iter().find(|f| !crate::domain::valid_name(f)) {
            return Err(AppError::BadRequest(format!(
                "'{}' is not a feature name (1-64 of A-Z a-z 0-9 _ . -)",
                bad.chars().take(64).collect::<String>()
            )));
        }
        if gated(&self.gate, || self.storage.identity(id))
            .await?
            .is_none()
        {
            return Err(AppError::NotFound(format!(
                "no identity '{}'",
                id.chars().take(64).collect::<String>()
            )));
        }
        Ok(())
    }
}
