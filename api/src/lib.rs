//! Bitscale's Kubernetes API: the `InferenceService` a user applies and the `HardwareClass`es an
//! administrator offers. Types only: no client, no runtime, so the engine, the operator and the e2e
//! suite can all share them.

// kube's `printcolumn(name = …, type_ = …)` repeats keys across columns by design; clippy reads
// them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod quantization;
pub mod telemetry;
#[cfg(feature = "kube")]
pub mod v1alpha1;

pub use quantization::{QuantLevel, UnknownQuantLevel};

/// The API group of every Bitscale resource.
pub const GROUP: &str = "bitscale.dev";
