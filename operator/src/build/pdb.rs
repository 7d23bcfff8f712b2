//! The PodDisruptionBudget across an InferenceService's engine pods.

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{Owner, labels::*};

/// Allows one engine pod at a time to be evicted, across all variants of the service.
pub fn pod_disruption_budget(owner: &Owner) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.child_meta(owner.name.clone(), common_labels(&owner.name)),
        spec: Some(PodDisruptionBudgetSpec {
            // maxUnavailable rather than minAvailable: a single replica can still be drained.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(instance_selector(&owner.name)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}
