//! Starting, finding, and stopping the one local cluster of this machine.
//!
//! Start and stop run under `<cache>/cluster.lock`, so parallel tests and a concurrent `up` or
//! `down` see either no cluster or a complete one. A cluster is reused only if every component's
//! PID is still ours and the API server is ready; anything less is torn down and started afresh.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::conditions,
};
use tokio::sync::OnceCell;

use crate::{
    Error,
    components::{self, Binaries, Kubeconfigs, Ports, START_ORDER},
    error::tail,
    nodes::{self, NODES},
    parts,
    paths::{self, Layout},
    pki,
    process::{self, Daemon},
    prometheus, runner,
    wait::{await_condition, await_list},
};

/// How long each component may take to become ready. Generous: CI machines are slow and shared.
const ETCD_TIMEOUT: Duration = Duration::from_secs(60);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);
const COMPONENT_TIMEOUT: Duration = Duration::from_secs(60);
const NODES_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a running cluster's API server may take to answer before it counts as broken.
const REUSE_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness probes are repeated.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long a component may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
/// KWOK with three CPU nodes and two GPU nodes, all Ready.
#[derive(Clone, Debug)]
pub struct Cluster {
    layout: Layout,
    binaries: Binaries,
    kubeconfig: PathBuf,
}

static SHARED: OnceCell<Cluster> = OnceCell::const_new();

impl Cluster {
    /// Starts the shared local cluster if none is up (under a file lock; it stays up for later tests
    /// and for `down`), or reuses a running one; waits for nodes Ready.
    ///
    /// The first call on a machine builds the binaries (see [`crate::parts`]), which takes a while.
    pub async fn shared() -> Result<Cluster, Error> {
        SHARED
            .get_or_try_init(|| async { Self::up(Layout::from_env()?).await })
            .await
            .cloned()
    }

    /// Builds what is missing, then reuses the running cluster or starts a new one.
    pub async fn up(layout: Layout) -> Result<Cluster, Error> {
        let build_layout = layout.clone();
        tokio::task::spawn_blocking(move || parts::ensure_all_built(&build_layout)).await??;
        let _lock = lock(&layout).await?;
        let cluster = Self::at(layout);
        if cluster.is_running().await {
            eprintln!("bitscale-e2e: reusing the running cluster");
            // Nodes may have been deleted by a test, or not yet be Ready after a restart of KWOK.
            cluster.ensure_nodes().await?;
            return Ok(cluster);
        }
        teardown(&cluster.layout)?;
        cluster.start().await?;
        Ok(cluster)
    }

    /// Stops every process of the cluster by its PID and removes its state directory.
    ///
    /// Returns the components that were running. Safe to call when no cluster exists.
    pub async fn down(layout: Layout) -> Result<Vec<String>, Error> {
        let _lock = lock(&layout).await?;
        tokio::task::spawn_blocking(move || teardown(&layout)).await?
    }

    /// The cluster of `layout`, whether or not it runs.
    pub fn at(layout: Layout) -> Self {
        let binaries = Binaries::new(&layout);
        let kubeconfig = Kubeconfigs::at(&layout.cluster_dir()).admin;
        Self {
            layout,
            binaries,
            kubeconfig,
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client for the admin (member of `system:masters`).
    pub async fn client(&self) -> Result<Client, Error> {
        let path = &self.kubeconfig;
        let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
            path: path.clone(),
            source,
        })?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: path.clone(),
                source,
            })?;
        Ok(Client::try_from(config)?)
    }

    /// `kubectl` (the cached v1.37 build) with `--kubeconfig` set to the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(&self.binaries.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// `helm` (the cached build) with `--kubeconfig` set, and its config, cache and data kept in
    /// the cluster's state directory so a user's repositories and plugins do not leak in.
    pub fn helm(&self) -> Command {
        let home = self.layout.cluster_dir().join("helm");
        let mut command = Command::new(&self.binaries.helm);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"));
        command
    }

    /// The directory holding the cached `kubectl`, `kube-apiserver`, `kube-controller-manager` and
    /// `kube-scheduler`.
    pub fn bin_dir(&self) -> PathBuf {
        parts::KUBERNETES.bin_dir(&self.layout)
    }

    /// The cached binaries, by component.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The state directory: certificates, kubeconfigs, etcd data, `logs/`, `pids/`.
    pub fn state_dir(&self) -> PathBuf {
        self.layout.cluster_dir()
    }

    /// The running components with their PIDs, in start order; missing ones are left out.
    pub fn running_components(&self) -> Vec<Daemon> {
        let state_dir = self.layout.cluster_dir();
        START_ORDER
            .iter()
            .filter_map(|name| process::find(&state_dir, name, self.binaries.of(name)?))
            .collect()
    }

    /// Whether every component runs and the API server answers ready.
    pub async fn is_running(&self) -> bool {
        if self.running_components().len() != START_ORDER.len() || !self.kubeconfig.exists() {
            return false;
        }
        let Ok(client) = self.client().await else {
            return false;
        };
        matches!(
            tokio::time::timeout(REUSE_PROBE_TIMEOUT, readyz(&client)).await,
            Ok(Ok(()))
        )
    }

    async fn start(&self) -> Result<(), Error> {
        let started = Instant::now();
        let state_dir = self.layout.cluster_dir();
        std::fs::create_dir_all(&state_dir).map_err(Error::io("creating", &state_dir))?;
        let pki = pki::generate(&state_dir.join("pki"))?;
        let ports = Ports::free()?;
        let kubeconfigs = Kubeconfigs::at(&state_dir);
        kubeconfigs.write(&format!("https://127.0.0.1:{}", ports.apiserver), &pki)?;
        let kwok_home = components::kwok_home(&state_dir);
        std::fs::create_dir_all(&kwok_home).map_err(Error::io("creating", &kwok_home))?;
        let stages = kwok_home.join("stages.yaml");
        std::fs::write(&stages, components::kwok_stages()).map_err(Error::io("writing", &stages))?;
        let bins = &self.binaries;

        eprintln!("bitscale-e2e: starting etcd on 127.0.0.1:{}", ports.etcd_client);
        let etcd = process::spawn(
            &state_dir,
            "etcd",
            &bins.etcd,
            &components::etcd_args(&state_dir, ports),
            &[],
        )?;
        let http = reqwest::Client::builder()
            // Only for health probes of loopback components serving self-signed certificates.
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()?;
        let etcd_health = format!("http://127.0.0.1:{}/health", ports.etcd_client);
        wait_ready(&etcd, ETCD_TIMEOUT, || {
            probe_http(&http, &etcd_health, "\"true\"")
        })
        .await?;

        eprintln!(
            "bitscale-e2e: starting kube-apiserver on https://127.0.0.1:{}",
            ports.apiserver
        );
        let apiserver = process::spawn(
            &state_dir,
            "kube-apiserver",
            &bins.apiserver,
            &components::apiserver_args(&state_dir, ports, &pki),
            &[],
        )?;
        let client = self.client().await?;
        wait_ready(&apiserver, APISERVER_TIMEOUT, || async {
            readyz(&client).await.map_err(|e| e.to_string())
        })
        .await?;

        eprintln!("bitscale-e2e: starting kube-controller-manager, kube-scheduler and kwok");
        let controller_manager = process::spawn(
            &state_dir,
            "kube-controller-manager",
            &bins.controller_manager,
            &components::controller_manager_args(&state_dir, ports, &pki, &kubeconfigs),
            &[],
        )?;
        let scheduler = process::spawn(
            &state_dir,
            "kube-scheduler",
            &bins.scheduler,
            &components::scheduler_args(&state_dir, ports, &kubeconfigs),
            &[],
        )?;
        let kwok = process::spawn(
            &state_dir,
            "kwok",
            &bins.kwok,
            &components::kwok_args(&state_dir, &kubeconfigs),
            &[("HOME", &kwok_home)],
        )?;
        let cm_health = format!("https://127.0.0.1:{}/healthz", ports.controller_manager);
        wait_ready(&controller_manager, COMPONENT_TIMEOUT, || {
            probe_http(&http, &cm_health, "ok")
        })
        .await?;
        let scheduler_health = format!("https://127.0.0.1:{}/healthz", ports.scheduler);
        wait_ready(&scheduler, COMPONENT_TIMEOUT, || {
            probe_http(&http, &scheduler_health, "ok")
        })
        .await?;

        nodes::register(&client).await?;
        // KWOK has no health endpoint here; its proof of life is nodes turning Ready.
        let node_api: Api<Node> = Api::all(client.clone());
        wait_ready(&kwok, NODES_TIMEOUT, || async {
            let list = node_api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let ready = list.items.iter().filter(|n| nodes::is_ready(n)).count();
            if ready >= NODES.len() {
                Ok(())
            } else {
                Err(format!("{ready} of {} nodes Ready", NODES.len()))
            }
        })
        .await?;
        // The ServiceAccount controller runs; pods in `default` can be created.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        await_condition(accounts, "default", conditions::is_created(), COMPONENT_TIMEOUT).await?;
        let api_server = format!("https://127.0.0.1:{}", ports.apiserver);
        self.start_prometheus(&client, &http, &api_server, ports.prometheus, &pki)
            .await?;
        self.start_pod_runner(&kubeconfigs)?;
        eprintln!(
            "bitscale-e2e: cluster up in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Creates missing nodes and waits until all are Ready.
    async fn ensure_nodes(&self) -> Result<(), Error> {
        let client = self.client().await?;
        nodes::register(&client).await?;
        let node_api: Api<Node> = Api::all(client);
        await_list(
            &node_api,
            &ListParams::default(),
            |list| list.iter().filter(|n| nodes::is_ready(n)).count() >= NODES.len(),
            NODES_TIMEOUT,
        )
        .await?;
        Ok(())
    }
}

async fn lock(layout: &Layout) -> Result<paths::FileLock, Error> {
    let path = layout.cluster_lock();
    tokio::task::spawn_blocking(move || paths::lock(&path)).await?
}

/// Stops every process the pod runner started for this cluster and is still running.
fn stop_pod_processes(state_dir: &Path) {
    let marker = state_dir.to_string_lossy();
    for pid in process::find_by_env(runner::pod::MARKER_ENV, &marker) {
        eprintln!("bitscale-e2e: stopping pod process {pid}");
        process::stop("pod process", pid, Duration::from_secs(2));
    }
}

/// Stops whatever of the cluster still runs (newest component first) and removes its state.
fn teardown(layout: &Layout) -> Result<Vec<String>, Error> {
    let state_dir = layout.cluster_dir();
    let mut running = process::find_all(&state_dir);
    // Reverse start order: KWOK and the controllers go before the API server, and etcd last.
    running.sort_by_key(|(name, _)| std::cmp::Reverse(START_ORDER.iter().position(|n| n == name)));
    for (name, pid) in &running {
        eprintln!("bitscale-e2e: stopping {name} (pid {pid})");
        process::stop(name, *pid, STOP_GRACE);
    }
    // The pod runner stops its pods' processes when it stops; whatever it left (it was killed,
    // or had already crashed) is found by the marker in their environment.
    stop_pod_processes(&state_dir);
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).map_err(Error::io("removing", &state_dir))?;
    }
    Ok(running.into_iter().map(|(name, _)| name).collect())
}

impl Cluster {
    /// Prometheus's URL (`http://127.0.0.1:<port>`), once `up` has started it.
    pub fn prometheus_url(&self) -> Option<String> {
        prometheus::url(&self.state_dir())
    }

    /// Stops Prometheus (SIGTERM), as a fault a test injects; [`Self::restart_prometheus`]
    /// brings it back at the same URL with its data.
    pub fn stop_prometheus(&self) -> Result<(), Error> {
        let state_dir = self.state_dir();
        let daemon = process::find(&state_dir, "prometheus", &self.binaries.prometheus)
            .ok_or_else(|| Error::ComponentNotRunning("prometheus".into()))?;
        process::stop(daemon.name, daemon.pid, STOP_GRACE);
        Ok(())
    }

    /// Starts a stopped Prometheus again at its URL and waits until it is ready.
    pub async fn restart_prometheus(&self) -> Result<(), Error> {
        let url = self
            .prometheus_url()
            .ok_or_else(|| Error::ComponentNotRunning("prometheus".into()))?;
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::ComponentNotRunning(format!("prometheus (no port in {url})")))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        self.spawn_prometheus(&http, &url, port).await
    }

    /// Starts the Prometheus process on `port` and waits until `url` answers ready.
    async fn spawn_prometheus(&self, http: &reqwest::Client, url: &str, port: u16) -> Result<(), Error> {
        let state_dir = self.state_dir();
        let daemon = process::spawn(
            &state_dir,
            "prometheus",
            &self.binaries.prometheus,
            &prometheus::args(&state_dir, port),
            &[],
        )?;
        let ready = format!("{url}/-/ready");
        wait_ready(&daemon, COMPONENT_TIMEOUT, || probe_http(http, &ready, "Ready")).await
    }

    async fn start_prometheus(
        &self,
        client: &Client,
        http: &reqwest::Client,
        api_server: &str,
        port: u16,
        pki: &pki::Pki,
    ) -> Result<(), Error> {
        apply_prometheus_rbac(client).await?;
        let state_dir = self.state_dir();
        let home = prometheus::home(&state_dir);
        std::fs::create_dir_all(home.join("data")).map_err(Error::io("creating", &home))?;
        let config = home.join("prometheus.yml");
        std::fs::write(&config, prometheus::config(api_server, pki))
            .map_err(Error::io("writing", &config))?;
        let url = format!("http://127.0.0.1:{port}");
        eprintln!("bitscale-e2e: starting prometheus on {url}");
        self.spawn_prometheus(http, &url, port).await?;
        let url_file = prometheus::url_file(&state_dir);
        std::fs::write(&url_file, &url).map_err(Error::io("writing", &url_file))
    }

    fn start_pod_runner(&self, kubeconfigs: &Kubeconfigs) -> Result<(), Error> {
        let state_dir = self.state_dir();
        let bin_dir = paths::workspace_bin_dir()?;
        let source = bin_dir.join("bitscale-e2e");
        let target = &self.binaries.pod_runner;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
        }
        std::fs::copy(&source, target).map_err(Error::io("copying the pod runner from", &source))?;
        for program in runner::images::Program::ALL {
            let binary = bin_dir.join(program.binary());
            if !binary.is_file() {
                eprintln!(
                    "bitscale-e2e: {} is not built; pods of its image wait until it is (cargo build -p {})",
                    binary.display(),
                    program.binary()
                );
            }
        }
        eprintln!(
            "bitscale-e2e: starting the pod runner (engine and operator pods run from {})",
            bin_dir.display()
        );
        process::spawn(
            &state_dir,
            "pod-runner",
            target,
            &components::pod_runner_args(&state_dir, kubeconfigs, &bin_dir, self.layout.pod_range()),
            &[],
        )?;
        Ok(())
    }
}

/// The ClusterRole and binding that let Prometheus discover pods.
async fn apply_prometheus_rbac(client: &Client) -> Result<(), Error> {
    for object in prometheus::rbac() {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            &kind,
        ));
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        let object: kube::api::DynamicObject =
            serde_json::from_value(object).map_err(|source| Error::Encode {
                what: "Prometheus RBAC",
                source,
            })?;
        api.patch(
            &name,
            &kube::api::PatchParams::apply("bitscale-e2e").force(),
            &kube::api::Patch::Apply(&object),
        )
        .await?;
    }
    Ok(())
}

/// Probes until `probe` succeeds; fails early if the process exits, or after `timeout`.
async fn wait_ready<F, Fut>(daemon: &Daemon, timeout: Duration, mut probe: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if !process::is_running(daemon.pid) {
            return Err(Error::Exited {
                component: daemon.name,
                status: "no longer running".to_owned(),
                log: daemon.log.clone(),
                tail: tail(&daemon.log, 30),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{} to become ready", daemon.name),
                timeout,
                last: format!(
                    "{last}\nlast lines of {}:\n{}",
                    daemon.log.display(),
                    tail(&daemon.log, 20)
                ),
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

async fn probe_http(http: &reqwest::Client, url: &str, expect: &str) -> Result<(), String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() && body.contains(expect) {
        Ok(())
    } else {
        Err(format!("{status}: {body}"))
    }
}

async fn readyz(client: &Client) -> Result<(), Error> {
    let request = http::Request::get("/readyz").body(Vec::new())?;
    client.request_text(request).await?;
    Ok(())
}
