//! The Bitscale operator: reconciles `InferenceService`s into engine Deployments.
//!
//! Per object: [`controller::validate`] → [`decision::decide`] → [`build`] → [`controller::apply`]
//! → [`controller::status`]. Validation, the decision, the builders and the status computation
//! are pure and unit-tested; only `apply` and the driver in [`controller`] talk to the API server.
//!
//! Entry point for embedding (tests, other binaries): [`run`]. The binary adds leader election,
//! `/metrics` and `/healthz`.

pub mod build;
pub mod controller;
pub mod crd;
pub mod decision;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod shutdown;

pub use controller::{Config, run, run_until};
pub use error::{Error, Result};
