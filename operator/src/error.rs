//! Errors of a reconcile, split into permanent ones (the object must change) and transient ones
//! (retry with backoff), each with a stable category for metrics and condition reasons.

use crate::decision::NoFeasibleVariant;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a field the API server always sets.
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),

    /// The object does not match the CRD's Rust types (for example written under an older schema).
    #[error("object does not match the InferenceService schema: {0}")]
    InvalidObject(String),

    /// `spec.placement.hardwareClasses` names classes that do not exist.
    #[error("HardwareClass not found: {}", .0.join(", "))]
    UnknownHardwareClass(Vec<String>),

    /// No HardwareClass exists at all.
    #[error("no HardwareClass exists; an administrator must create one (see examples/)")]
    NoHardwareClass,

    /// A HardwareClass has a value the operator cannot use.
    #[error("HardwareClass {name}: {reason}")]
    InvalidHardwareClass {
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// The model's size is unknown, so nothing can be sized: `spec.model.parameters` is unset and
    /// the model's name in the source carries no count.
    #[error(
        "cannot size the model: spec.model.parameters is not set and the source {0:?} names no \
         parameter count; set spec.model.parameters (such as \"135M\" or \"8B\")"
    )]
    ModelSizeUnknown(String),

    /// The spec passed the schema but cannot be used.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// No variant fits, meets the quality budget and the SLO.
    #[error("{0}")]
    NoFeasibleVariant(#[from] NoFeasibleVariant),

    /// The operator's cache of a kind stopped (its watch ended); the operator is shutting down.
    #[error("the {0} cache is unavailable")]
    CacheUnavailable(&'static str),

    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
}

impl std::error::Error for NoFeasibleVariant {}

impl Error {
    /// A stable snake_case label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::InvalidObject(_) => "invalid_object",
            Self::UnknownHardwareClass(_) => "unknown_hardware_class",
            Self::NoHardwareClass => "no_hardware_class",
            Self::InvalidHardwareClass { .. } => "invalid_hardware_class",
            Self::ModelSizeUnknown(_) => "model_size_unknown",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::NoFeasibleVariant(_) => "no_feasible_variant",
            Self::CacheUnavailable(_) => "cache_unavailable",
            Self::Kube(_) => "kube_api",
        }
    }

    /// The CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "MissingObjectKey",
            Self::InvalidObject(_) => "InvalidObject",
            Self::UnknownHardwareClass(_) => "UnknownHardwareClass",
            Self::NoHardwareClass => "NoHardwareClass",
            Self::InvalidHardwareClass { .. } => "InvalidHardwareClass",
            Self::ModelSizeUnknown(_) => "ModelSizeUnknown",
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::NoFeasibleVariant(_) => "NoFeasibleVariant",
            Self::CacheUnavailable(_) => "CacheUnavailable",
            Self::Kube(_) => "KubernetesApiError",
        }
    }

    /// Permanent errors wait for the object (or a HardwareClass) to change; retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Kube(e) => matches!(e, kube::Error::Api(s) if s.code == 422 || s.code == 400),
            Self::CacheUnavailable(_) => false,
            _ => true,
        }
    }
}

/// Result of the operator's fallible steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
