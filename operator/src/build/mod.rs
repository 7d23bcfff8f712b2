//! Build: the children an InferenceService should have, computed from the validated spec, the
//! chosen HardwareClass and the decision. Pure: no client, no clock.

mod deployment;
mod labels;
mod model;
mod pdb;
mod quality;
mod service;

use bitscale_api::v1alpha1::{Decision, EngineSpec, HardwareClass, ModelSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};

pub use self::{
    deployment::{
        ENGINE_CONTAINER, ENGINE_PORT, cpu_cores as deployment_cpu_cores, deployment, deployment_name,
    },
    labels::*,
    model::{ModelMount, model_mount},
    pdb::pod_disruption_budget,
    quality::{QUALITY_COMPONENT, QUALITY_CONTAINER, Report, parse_report, quality_job, quality_job_name},
    service::service,
};

/// The identity of the InferenceService whose children are built.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    /// Name of the InferenceService.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Controller owner reference pointing at it.
    pub reference: OwnerReference,
}

impl Owner {
    /// Metadata of a child named `name`: in the owner's namespace, labelled, controlled by it.
    pub(crate) fn child_meta(
        &self,
        name: String,
        labels: std::collections::BTreeMap<String, String>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Images the operator runs, by device.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineImages {
    /// Engine image for cpu classes.
    pub cpu: String,
    /// Engine image for cuda classes.
    pub cuda: String,
}

/// Inputs to every builder.
#[derive(Clone, Debug)]
pub struct BuildInput<'a> {
    /// The owning InferenceService.
    pub owner: &'a Owner,
    /// `spec.model`.
    pub model: &'a ModelSpec,
    /// `spec.engine`.
    pub engine: &'a EngineSpec,
    /// The HardwareClass of the decided variant.
    pub class: &'a HardwareClass,
    /// The decision.
    pub decision: &'a Decision,
    /// Default engine images.
    pub images: &'a EngineImages,
    /// `spec.slo.interTokenLatency`: the engine sizes its steps to it (`--itl-target`).
    pub itl_target: Option<std::time::Duration>,
    /// Have the pods measure the served level's quality loss at start (`--measure-quality`).
    pub measure_quality: bool,
}

/// Every child of an InferenceService. Destructured without `..` in `apply`, so a new kind
/// cannot be silently skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Deployment of the decided variant.
    pub deployment: Deployment,
    /// Service for the serving variant.
    pub service: Service,
    /// Disruption budget across all of the service's engine pods.
    pub pdb: PodDisruptionBudget,
}

/// Builds every child. `serving_variant` is the variant label the Service selects: the decided
/// variant once it is available, until then the one already serving (blue/green).
pub fn desired(input: &BuildInput<'_>, serving_variant: &str) -> Desired {
    Desired {
        deployment: deployment(input),
        service: service(input.owner, serving_variant),
        pdb: pod_disruption_budget(input.owner),
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
