//! The Bitscale operator: reconciles `InferenceService`s into engine Deployments.
//!
//! Per object: [`controller::validate`] → [`controller::measure`] (the latest [`observe`] round
//! from Prometheus) → [`controller::plan`] ([`decision::decide`], the switch window, holds) →
//! [`build`] → [`controller::apply`] → [`controller::status`]. Every step but `apply`, the
//! observer's queries and the driver in [`controller`] is pure and unit-tested; only those talk
//! to the API server or Prometheus.
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
pub mod observe;
pub mod shutdown;

pub use controller::{Config, run, run_until};
pub use error::{Error, Result};
