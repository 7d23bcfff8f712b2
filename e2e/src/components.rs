//! How each control-plane component is started: its binary, flags, and readiness probe.
//!
//! Everything listens on 127.0.0.1 only, on ports found free at start-up, and keeps its files in
//! the cluster's state directory.

use std::{
    ffi::OsString,
    net::TcpListener,
    path::{Path, PathBuf},
};

use crate::{
    Error, kubeconfig,
    nodes::KWOK_ANNOTATION,
    parts::{ETCD, HELM, KUBERNETES, KWOK},
    paths::Layout,
    pki::{IDENTITIES, Identity, Pki},
};

/// The Service ClusterIP range; [`crate::pki::KUBERNETES_SERVICE_IP`] is its first address.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The loopback range KWOK hands the IPs of the pods it fakes out of (nothing listens there).
/// Pods the pod runner runs get theirs from [`crate::Layout::pod_range`].
pub const KWOK_POD_CIDR: &str = "127.1.0.1/16";

/// The component names, in start order; they name PID and log files. Stop in reverse.
pub const START_ORDER: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "prometheus",
    "pod-runner",
];

/// The cached binaries the cluster runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub apiserver: PathBuf,
    /// kube-controller-manager.
    pub controller_manager: PathBuf,
    /// kube-scheduler.
    pub scheduler: PathBuf,
    /// kwok.
    pub kwok: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
    /// helm.
    pub helm: PathBuf,
    /// prometheus (Debian's package, cached).
    pub prometheus: PathBuf,
    /// The pod runner: a copy of `bitscale-e2e` in the state directory, so rebuilding the
    /// workspace does not change the binary of a running cluster.
    pub pod_runner: PathBuf,
}

impl Binaries {
    /// The binaries' paths in the cache (built or not).
    pub fn new(layout: &Layout) -> Self {
        Self {
            etcd: ETCD.binary(layout, "etcd"),
            apiserver: KUBERNETES.binary(layout, "kube-apiserver"),
            controller_manager: KUBERNETES.binary(layout, "kube-controller-manager"),
            scheduler: KUBERNETES.binary(layout, "kube-scheduler"),
            kwok: KWOK.binary(layout, "kwok"),
            kubectl: KUBERNETES.binary(layout, "kubectl"),
            helm: HELM.binary(layout, "helm"),
            prometheus: crate::prometheus::binary(layout),
            pod_runner: layout.cluster_dir().join("bin").join("bitscale-e2e"),
        }
    }

    /// The binary of a component in [`START_ORDER`].
    pub fn of(&self, component: &str) -> Option<&Path> {
        match component {
            "etcd" => Some(&self.etcd),
            "kube-apiserver" => Some(&self.apiserver),
            "kube-controller-manager" => Some(&self.controller_manager),
            "kube-scheduler" => Some(&self.scheduler),
            "kwok" => Some(&self.kwok),
            "prometheus" => Some(&self.prometheus),
            "pod-runner" => Some(&self.pod_runner),
            _ => None,
        }
    }
}

/// Loopback ports, each free when chosen.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// etcd clients.
    pub etcd_client: u16,
    /// etcd peers (there are none, but etcd listens anyway).
    pub etcd_peer: u16,
    /// kube-apiserver HTTPS.
    pub apiserver: u16,
    /// kube-controller-manager HTTPS (health).
    pub controller_manager: u16,
    /// kube-scheduler HTTPS (health).
    pub scheduler: u16,
    /// Prometheus HTTP.
    pub prometheus: u16,
}

impl Ports {
    /// Asks the kernel for six distinct free ports on 127.0.0.1.
    pub fn free() -> Result<Self, Error> {
        // All six listeners stay open until every port is known, so no two are the same.
        let listeners = (0..6)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::io("binding a free port on", "127.0.0.1"))?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::io("reading the port of", "127.0.0.1"))?;
        Ok(Self {
            etcd_client: ports[0],
            etcd_peer: ports[1],
            apiserver: ports[2],
            controller_manager: ports[3],
            scheduler: ports[4],
            prometheus: ports[5],
        })
    }
}

/// Kubeconfigs for each identity in the state directory.
#[derive(Clone, Debug)]
pub struct Kubeconfigs {
    /// The admin's, handed to users and tests.
    pub admin: PathBuf,
    /// kube-controller-manager's.
    pub controller_manager: PathBuf,
    /// kube-scheduler's.
    pub scheduler: PathBuf,
    /// KWOK's.
    pub kwok: PathBuf,
    /// The pod runner's.
    pub pod_runner: PathBuf,
}

impl Kubeconfigs {
    /// Where the kubeconfigs live in `state_dir`.
    pub fn at(state_dir: &Path) -> Self {
        Self {
            admin: state_dir.join("kubeconfig"),
            controller_manager: state_dir.join("controller-manager.kubeconfig"),
            scheduler: state_dir.join("scheduler.kubeconfig"),
            kwok: state_dir.join("kwok.kubeconfig"),
            pod_runner: state_dir.join("pod-runner.kubeconfig"),
        }
    }

    /// Writes all of them for the API server at `server`.
    pub fn write(&self, server: &str, pki: &Pki) -> Result<(), Error> {
        for identity in &IDENTITIES {
            if let Some(path) = self.path(identity) {
                kubeconfig::write(path, server, &pki.ca.cert, &pki.client(identity))?;
            }
        }
        Ok(())
    }

    /// The kubeconfig of an identity; Prometheus has none (its config names the certificates).
    fn path(&self, identity: &Identity) -> Option<&Path> {
        match identity.name {
            "admin" => Some(&self.admin),
            "controller-manager" => Some(&self.controller_manager),
            "scheduler" => Some(&self.scheduler),
            "kwok" => Some(&self.kwok),
            "pod-runner" => Some(&self.pod_runner),
            _ => None,
        }
    }
}

/// `--name=value`, for a path or any other value.
pub(crate) fn flag(name: &str, value: impl AsRef<std::ffi::OsStr>) -> OsString {
    let mut flag = OsString::from(format!("--{name}="));
    flag.push(value);
    flag
}

/// etcd's flags: one member on loopback, data in `<state>/etcd`.
pub fn etcd_args(state_dir: &Path, ports: Ports) -> Vec<OsString> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        flag("name", "bitscale-e2e"),
        flag("data-dir", state_dir.join("etcd")),
        flag("listen-client-urls", &client),
        flag("advertise-client-urls", &client),
        flag("listen-peer-urls", &peer),
        flag("initial-advertise-peer-urls", &peer),
        flag("initial-cluster", format!("bitscale-e2e={peer}")),
        flag("initial-cluster-state", "new"),
        // The data is thrown away with the cluster; fsync only slows tests down.
        flag("unsafe-no-fsync", "true"),
        flag("log-level", "warn"),
    ]
}

/// kube-apiserver's flags: RBAC (and Node) authorization, Pod Security admission, generated TLS.
pub fn apiserver_args(state_dir: &Path, ports: Ports, pki: &Pki) -> Vec<OsString> {
    vec![
        flag("etcd-servers", format!("http://127.0.0.1:{}", ports.etcd_client)),
        flag("bind-address", "127.0.0.1"),
        flag("advertise-address", "127.0.0.1"),
        // The `kubernetes` Service's endpoints may not be loopback, and nothing in-cluster needs them.
        flag("endpoint-reconciler-type", "none"),
        flag("secure-port", ports.apiserver.to_string()),
        flag("cert-dir", state_dir.join("kube-apiserver")),
        flag("tls-cert-file", &pki.apiserver.cert),
        flag("tls-private-key-file", &pki.apiserver.key),
        flag("client-ca-file", &pki.ca.cert),
        // Request-header authentication (for aggregated API servers) trusts only a CN the harness
        // never issues; configuring it keeps the controllers from logging a missing CA bundle.
        flag("requestheader-client-ca-file", &pki.ca.cert),
        flag("requestheader-allowed-names", "front-proxy-client"),
        flag("requestheader-username-headers", "X-Remote-User"),
        flag("requestheader-group-headers", "X-Remote-Group"),
        flag("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        flag("authorization-mode", "Node,RBAC"),
        // PodSecurity is on by default; naming it makes sure a changed default cannot drop it.
        flag("enable-admission-plugins", "NodeRestriction,PodSecurity"),
        flag(
            "service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ),
        flag("service-account-key-file", &pki.service_account.cert),
        flag("service-account-signing-key-file", &pki.service_account.key),
        flag("service-cluster-ip-range", SERVICE_CIDR),
        // Pod Security, not this flag, decides per namespace whether privileged pods are allowed.
        flag("allow-privileged", "true"),
        flag("profiling", "false"),
    ]
}

/// kube-controller-manager's flags: its own identity per controller, no leader election.
pub fn controller_manager_args(
    state_dir: &Path,
    ports: Ports,
    pki: &Pki,
    kubeconfigs: &Kubeconfigs,
) -> Vec<OsString> {
    let kubeconfig = &kubeconfigs.controller_manager;
    vec![
        flag("kubeconfig", kubeconfig),
        flag("authentication-kubeconfig", kubeconfig),
        flag("authorization-kubeconfig", kubeconfig),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.controller_manager.to_string()),
        // Otherwise it writes a self-signed serving certificate to /var/run/kubernetes.
        flag("cert-dir", state_dir.join("kube-controller-manager")),
        flag("leader-elect", "false"),
        flag("use-service-account-credentials", "true"),
        flag("root-ca-file", &pki.ca.cert),
        flag("service-account-private-key-file", &pki.service_account.key),
        flag("cluster-signing-cert-file", &pki.ca.cert),
        flag("cluster-signing-key-file", &pki.ca.key),
        flag("service-cluster-ip-range", SERVICE_CIDR),
        flag("profiling", "false"),
    ]
}

/// kube-scheduler's flags.
pub fn scheduler_args(state_dir: &Path, ports: Ports, kubeconfigs: &Kubeconfigs) -> Vec<OsString> {
    let kubeconfig = &kubeconfigs.scheduler;
    vec![
        flag("kubeconfig", kubeconfig),
        flag("authentication-kubeconfig", kubeconfig),
        flag("authorization-kubeconfig", kubeconfig),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.scheduler.to_string()),
        flag("cert-dir", state_dir.join("kube-scheduler")),
        flag("leader-elect", "false"),
        flag("profiling", "false"),
    ]
}

/// The stages KWOK plays (its defaults, skipping the pod runner's pods), written to
/// `<state>/kwok/stages.yaml` by [`kwok_args`]'s caller.
pub fn kwok_stages() -> String {
    include_str!("../kwok/stages.yaml")
        .replace("BITSCALE_RUNNER_PODS", crate::runner::images::KWOK_SKIP_QUERY)
}

/// The directory KWOK runs in; also its HOME, so a user's `~/.kwok/kwok.yaml` is not read.
pub fn kwok_home(state_dir: &Path) -> PathBuf {
    state_dir.join("kwok")
}

/// kwok's flags: manage only nodes annotated [`KWOK_ANNOTATION`], pod IPs from [`KWOK_POD_CIDR`].
pub fn kwok_args(state_dir: &Path, kubeconfigs: &Kubeconfigs) -> Vec<OsString> {
    vec![
        flag("kubeconfig", &kubeconfigs.kwok),
        flag("config", kwok_home(state_dir).join("stages.yaml")),
        flag("manage-all-nodes", "false"),
        flag(
            "manage-nodes-with-annotation-selector",
            format!("{}={}", KWOK_ANNOTATION.0, KWOK_ANNOTATION.1),
        ),
        flag("cidr", KWOK_POD_CIDR),
        flag("node-lease-duration-seconds", "40"),
    ]
}

/// The pod runner's flags (`bitscale-e2e pod-runner …`).
pub fn pod_runner_args(
    state_dir: &Path,
    kubeconfigs: &Kubeconfigs,
    bin_dir: &Path,
    pod_range: [u8; 2],
) -> Vec<OsString> {
    vec![
        OsString::from("pod-runner"),
        flag("state-dir", state_dir),
        flag("kubeconfig", &kubeconfigs.pod_runner),
        flag("bin-dir", bin_dir),
        flag("pod-range", format!("{}.{}", pod_range[0], pod_range[1])),
    ]
}
