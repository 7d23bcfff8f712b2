//! A local Kubernetes control plane assembled from upstream parts, for Bitscale's tests and demo.
//!
//! Real etcd, kube-apiserver, kube-controller-manager and kube-scheduler (v1.37), built from the
//! Kubernetes Go modules, plus KWOK playing kubelet for three CPU nodes (`bitscale.dev/pool: cpu`)
//! and two GPU nodes (`bitscale.dev/pool: gpu`, one `nvidia.com/gpu` each, tainted
//! `nvidia.com/gpu=present:NoSchedule`). A pod runner ([`runner`]) runs the pods of the
//! workspace's own images (the engine, the operator) as real processes at loopback pod IPs;
//! KWOK fakes every other pod. A real Prometheus ([`prometheus`]) scrapes the engine pods it
//! discovers through the API server.
//!
//! The cluster is shared: the first [`Cluster::shared`] (or `bitscale-e2e up`) starts it as
//! detached processes that outlive the caller, later ones reuse it, and `bitscale-e2e down`
//! stops it. Tests isolate themselves with a [`TestNamespace`] each.
//!
//! ```no_run
//! # async fn example() -> Result<(), bitscale_e2e::Error> {
//! use bitscale_e2e::{Cluster, TestNamespace};
//! let cluster = Cluster::shared().await?;
//! let client = cluster.client().await?;
//! let ns = TestNamespace::create(&client, "my-test").await?;
//! // ... create objects in ns.name, then wait with await_condition / await_list ...
//! ns.delete().await?;
//! # Ok(()) }
//! ```

mod cluster;
pub mod components;
mod error;
mod kubeconfig;
mod namespace;
pub mod nodes;
pub mod parts;
pub mod paths;
pub mod pki;
mod process;
pub mod prometheus;
pub mod runner;
mod wait;

pub use cluster::Cluster;
pub use error::Error;
pub use namespace::{PodSecurity, TEST_LABEL, TestNamespace, cleanup_test_namespaces};
pub use paths::Layout;
pub use process::{find_by_env as processes_with_env, is_running as process_is_running};
pub use wait::{await_condition, await_deleted, await_list};
