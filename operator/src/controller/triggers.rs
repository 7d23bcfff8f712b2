//! Which watch events start a reconcile.
//!
//! Every write to an object reaches the controller as a watch event, most of them irrelevant: the
//! operator's own status write comes back on the InferenceService, the disruption controller
//! rewrites each PDB's status, the Deployment controller reports progress a few times per
//! rollout. Each costs a full reconcile. Here every watched kind passes through a filter that
//! lets an object through only when the part of it a reconcile reads has changed (or it was
//! deleted, so a missing child is recreated), and keeps a cache of the objects for the
//! reconciler to read instead of asking the API server.

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
};

use bitscale_api::v1alpha1::InferenceService;
use futures::{Stream, StreamExt, TryStreamExt, future::ready};
use k8s_openapi::api::{
    apps::v1::Deployment, batch::v1::Job, core::v1::Service, policy::v1::PodDisruptionBudget,
};
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{WatchStreamExt, watcher},
};

use crate::controller::children::Sink;

/// The part of an object a reconcile depends on, as a hash; `None` passes every event.
pub type Relevant<K> = fn(&K) -> Option<u64>;

/// A process-local hash (for comparing, never for storing).
pub(crate) fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What of an object the cache need not keep: cut before it is stored.
pub type Trim<K> = fn(&mut K);

/// Watches `api` into `cache` (the cache the reconciler reads, each object cut by `trim`) and
/// yields the objects whose [`Relevant`] part changed since their last event, plus every deleted
/// object (after calling `deleted` with it).
pub fn changes<K>(
    api: kube::Api<K>,
    config: watcher::Config,
    mut cache: impl Sink<K> + Send + 'static,
    (relevant, trim): (Relevant<K>, Trim<K>),
    deleted: impl Fn(&K) + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    watcher(api, config)
        .default_backoff()
        // Nothing reads who wrote which field; at 1,000 objects per kind that bookkeeping was
        // most of the cache's memory.
        .modify(move |object| {
            object.managed_fields_mut().clear();
            trim(object);
        })
        .inspect_ok(move |event| cache.take(event))
        .filter_map(move |event| {
            ready(match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    let key = object.uid().unwrap_or_else(|| object.name_any());
                    match relevant(&object) {
                        Some(now) if seen.insert(key, now) == Some(now) => None,
                        _ => Some(Ok(object)),
                    }
                }
                Ok(watcher::Event::Delete(object)) => {
                    seen.remove(&object.uid().unwrap_or_else(|| object.name_any()));
                    deleted(&object);
                    Some(Ok(object))
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(error) => Some(Err(error)),
            })
        })
}

/// An InferenceService matters when its spec (generation) changes; its status is the
/// operator's own output.
pub fn inference_service(object: &DeserializeGuard<InferenceService>) -> Option<u64> {
    object.meta().generation.map(|g| hash(&g))
}

/// A Deployment matters when its spec changes or its rollout progresses: the fields
/// `status::Observed` reads, the variant label the blue/green switch reads, and whether its
/// controller reports the rollout stalled.
pub fn deployment(object: &Deployment) -> Option<u64> {
    let status = object.status.as_ref();
    let stall = crate::controller::children::stall(object);
    Some(hash(&(
        object.metadata.generation,
        object.labels().get(crate::build::LABEL_VARIANT),
        status.and_then(|s| s.observed_generation),
        status.and_then(|s| s.replicas),
        status.and_then(|s| s.updated_replicas),
        status.and_then(|s| s.available_replicas),
        stall.map(|s| (s.reason, s.given_up)),
    )))
}

/// Keeps everything.
pub fn keep_all<K>(_: &mut K) {}

/// A cached Job keeps its metadata and status: its pod template is never read.
pub fn trim_job(object: &mut Job) {
    if let Some(spec) = object.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// A quality-profiling Job matters when it finishes.
pub fn job(object: &Job) -> Option<u64> {
    let finished: Vec<(&str, &str)> = object
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Complete" || c.type_ == "Failed")
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    Some(hash(&finished))
}

/// A Service has no generation; any revision may be an edit to undo.
pub fn service(object: &Service) -> Option<u64> {
    object.resource_version().map(|v| hash(&v))
}

/// A PodDisruptionBudget matters when its spec changes, not when the disruption controller
/// recounts healthy pods.
pub fn pod_disruption_budget(object: &PodDisruptionBudget) -> Option<u64> {
    object.metadata.generation.map(|g| hash(&g))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{apps::v1::DeploymentStatus, policy::v1::PodDisruptionBudgetStatus};

    use super::*;

    #[test]
    fn deployment_progress_matters_and_unrelated_status_does_not() {
        let mut d = Deployment::default();
        d.metadata.generation = Some(1);
        let before = deployment(&d);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        let observed = deployment(&d);
        assert_ne!(before, observed);
        if let Some(s) = d.status.as_mut() {
            s.collision_count = Some(1);
        }
        assert_eq!(
            observed,
            deployment(&d),
            "collisionCount is not read by a reconcile"
        );
        if let Some(s) = d.status.as_mut() {
            s.available_replicas = Some(1);
        }
        assert_ne!(observed, deployment(&d));
    }

    #[test]
    fn a_stalled_rollout_matters() {
        let mut d = Deployment::default();
        d.metadata.generation = Some(1);
        let before = deployment(&d);
        d.status = Some(DeploymentStatus {
            conditions: Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_ne!(before, deployment(&d));
    }

    #[test]
    fn pdb_status_does_not_matter() {
        let mut p = PodDisruptionBudget::default();
        p.metadata.generation = Some(2);
        let before = pod_disruption_budget(&p);
        p.status = Some(PodDisruptionBudgetStatus {
            current_healthy: Some(3),
            ..Default::default()
        });
        assert_eq!(before, pod_disruption_budget(&p));
        p.metadata.generation = Some(3);
        assert_ne!(before, pod_disruption_budget(&p));
    }
}
