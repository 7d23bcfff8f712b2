//! Prometheus for the local cluster, built from its Go module like the other parts
//! ([`crate::parts::PROMETHEUS`]), discovering engine pods through the local API server with the
//! relabeling the Helm chart ships ([`bitscale_api::telemetry`]).
//!
//! Built, not Debian's package: Debian's build (bookworm 2.42) leaves out Kubernetes service
//! discovery (`field kubernetes_sd_configs not found`), which is the point here. The build keeps
//! only that discovery plugin, so it compiles in minutes, once, into the cache.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use crate::{components::flag, paths::Layout, pki::Pki};

/// How often Prometheus scrapes the engines: short, so tests see a new pod within seconds.
pub const SCRAPE_INTERVAL: &str = "2s";

/// Where the cached binary lives.
pub fn binary(layout: &Layout) -> PathBuf {
    crate::parts::PROMETHEUS.binary(layout, "prometheus")
}

/// The directory Prometheus keeps its config and data in.
pub fn home(state_dir: &Path) -> PathBuf {
    state_dir.join("prometheus")
}

/// The file `up` records Prometheus's URL in.
pub fn url_file(state_dir: &Path) -> PathBuf {
    home(state_dir).join("url")
}

/// Prometheus's URL, if this cluster has started it.
pub fn url(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(url_file(state_dir))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The configuration: one job discovering pods through the API server at `api_server`,
/// authenticated as the `prometheus` identity.
pub fn config(api_server: &str, pki: &Pki) -> String {
    let identity = pki.client(&crate::pki::PROMETHEUS);
    let sd = format!(
        "api_server: {api_server}\ntls_config:\n  ca_file: {}\n  cert_file: {}\n  key_file: {}\n",
        pki.ca.cert.display(),
        identity.cert.display(),
        identity.key.display()
    );
    format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n{}",
        bitscale_api::telemetry::scrape_job_yaml(SCRAPE_INTERVAL, &sd)
    )
}

/// Prometheus's flags: loopback only, data in the state directory.
pub fn args(state_dir: &Path, port: u16) -> Vec<OsString> {
    let home = home(state_dir);
    vec![
        flag("config.file", home.join("prometheus.yml")),
        flag("storage.tsdb.path", home.join("data")),
        flag("web.listen-address", format!("127.0.0.1:{port}")),
        flag("storage.tsdb.retention.time", "1d"),
        flag("log.level", "warn"),
    ]
}

/// RBAC for the `prometheus` identity: read pods (and what pod discovery also lists) cluster-wide.
pub fn rbac() -> [serde_json::Value; 2] {
    let name = "bitscale-e2e:prometheus";
    [
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": name },
            "rules": [{ "apiGroups": [""], "resources": ["pods", "nodes", "services", "endpoints"],
                        "verbs": ["get", "list", "watch"] }],
        }),
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": { "name": name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                           "name": crate::pki::PROMETHEUS.user }],
        }),
    ]
}
