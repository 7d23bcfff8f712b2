//! The pod runner: a small kubelet for the KWOK nodes that runs this workspace's binaries.
//!
//! For every pod bound to a node whose containers run an image the runner knows
//! ([`images::program_for`]: the engine and the operator), it is the only source of that pod's
//! truth: it gives the pod a loopback IP from the cluster's pod range, prepares its volumes
//! ([`setup`]), starts each container as a real process with the container's arguments and
//! environment ([`invocation`]), follows its probes ([`probe`]), restarts it as `restartPolicy`
//! says, reports all of it in the pod's status ([`status`]), and on deletion stops it within the
//! grace period and removes the pod. KWOK's stages skip these pods ([`images::KWOK_SKIP_QUERY`])
//! and keep faking every other image and the nodes' heartbeats.
//!
//! `bitscale-e2e up` starts it as one of the cluster's components (`bitscale-e2e pod-runner`);
//! on SIGTERM it stops every process it started before it exits.

pub mod container;
pub mod images;
pub mod invocation;
pub mod pod;
pub mod probe;
pub mod setup;
pub mod status;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::Error;

/// How long the runner waits for its pods' processes when it stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// What the runner needs to start.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// The cluster's state directory; pods get `pods/<namespace>_<name>_<uid>/` in it.
    pub state_dir: PathBuf,
    /// The runner's kubeconfig.
    pub kubeconfig: PathBuf,
    /// Where the workspace's binaries are (`bitscale-engine`, `bitscale-operator`).
    pub bin_dir: PathBuf,
    /// The first two octets of the pod range `127.x.0.0/16`.
    pub pod_range: [u8; 2],
}

/// What every pod worker shares.
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// The API server, for the kubeconfigs handed to containers.
    pub api: setup::ApiServer,
    /// The workspace's binaries.
    pub bin_dir: PathBuf,
    /// The cluster's state directory.
    pub state_dir: PathBuf,
    /// For probes (loopback only; serving certificates are not checked, as the kubelet's are not).
    pub http: reqwest::Client,
    /// Pod IPs in use.
    pub ipam: Mutex<Ipam>,
}

/// Pod IPs of one `127.a.b.0/16` range: handed out in turn, returned when a pod goes.
#[derive(Debug)]
pub struct Ipam {
    range: [u8; 2],
    next: u16,
    used: HashSet<Ipv4Addr>,
}

impl Ipam {
    /// An empty pool over `127.range[1].0.0/16` (`range[0]` must be 127).
    pub fn new(range: [u8; 2]) -> Self {
        Self {
            range,
            next: 1,
            used: HashSet::new(),
        }
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let [a, b, ..] = ip.octets();
        [a, b] == self.range
    }

    /// `preferred` if it is free and in range (a pod that already has an IP keeps it), else the
    /// next free address; `None` when all 65,534 are taken.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(ip) = preferred.filter(|ip| self.contains(*ip) && !self.used.contains(ip)) {
            self.used.insert(ip);
            return Some(ip);
        }
        for _ in 0..u16::MAX {
            let n = self.next;
            self.next = if n >= u16::MAX - 1 { 1 } else { n + 1 };
            let [hi, lo] = n.to_be_bytes();
            let ip = Ipv4Addr::new(self.range[0], self.range[1], hi, lo);
            if lo != 0 && lo != 255 && self.used.insert(ip) {
                return Some(ip);
            }
        }
        None
    }

    /// Returns `ip` to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

struct Worker {
    pod: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// The pod workers, by pod UID.
struct Workers {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    by_uid: HashMap<String, Worker>,
    /// UIDs seen since the watch began a re-list, until it ends.
    relisted: Option<HashSet<String>>,
}

impl Workers {
    async fn handle(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(seen) = self.relisted.as_mut() {
                    seen.insert(pod.uid().unwrap_or_default());
                }
                self.observe(pod).await;
            }
            watcher::Event::InitDone => {
                // Pods that went while the watch was re-listing.
                if let Some(seen) = self.relisted.take() {
                    for (uid, worker) in &self.by_uid {
                        if !seen.contains(uid) {
                            let _ = worker.pod.send(None);
                        }
                    }
                }
            }
            watcher::Event::Apply(pod) => self.observe(pod).await,
            watcher::Event::Delete(pod) => {
                if let Some(worker) = self.by_uid.get(&pod.uid().unwrap_or_default()) {
                    let _ = worker.pod.send(None);
                }
            }
        }
        self.by_uid.retain(|_, w| !w.task.is_finished());
    }

    /// Hands a pod to its worker, starting one for a pod the runner owns and has not seen.
    async fn observe(&mut self, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        if let Some(worker) = self.by_uid.get(&uid) {
            let _ = worker.pod.send(Some(pod));
            return;
        }
        let Some(spec) = pod.spec.as_ref() else { return };
        if !images::runs_pod(spec) {
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            // Finished before this runner started: nothing runs; remove it once deleted.
            if pod.metadata.deletion_timestamp.is_some() {
                pod::remove_pod(&self.shared.client, &pod).await;
            }
            return;
        }
        let (tx, rx) = watch::channel(Some(pod));
        let worker = pod::PodWorker::new(self.shared.clone(), rx, self.shutdown.clone());
        let task = tokio::spawn(worker.run());
        self.by_uid.insert(uid, Worker { pod: tx, task });
    }

    /// Waits (a bounded time) for every worker to stop its processes.
    async fn stop(self) {
        let tasks = self.by_uid.into_values().map(|w| w.task);
        let _ = tokio::time::timeout(STOP_TIMEOUT, futures::future::join_all(tasks)).await;
    }
}

/// Runs until SIGTERM or Ctrl-C, then stops every process it started.
pub async fn run(config: RunnerConfig) -> Result<(), Error> {
    let (client, url) = client(&config.kubeconfig).await?;
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()?;
    let shared = Arc::new(Shared {
        client: client.clone(),
        api: setup::ApiServer { url },
        bin_dir: config.bin_dir.clone(),
        state_dir: config.state_dir.clone(),
        http,
        ipam: Mutex::new(Ipam::new(config.pod_range)),
    });
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        crate::process::until_terminated().await;
        let _ = shutdown_tx.send(true);
    });

    let pods: Api<Pod> = Api::all(client);
    let events = watcher(pods, watcher::Config::default().fields("spec.nodeName!=")).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut workers = Workers {
        shared,
        shutdown: shutdown.clone(),
        by_uid: HashMap::new(),
        relisted: None,
    };
    let mut stop = shutdown;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = stop.changed() => break,
        };
        match event {
            None => break,
            Some(Ok(event)) => workers.handle(event).await,
            Some(Err(e)) => tracing::warn!("watching pods: {e}"),
        }
    }
    workers.stop().await;
    Ok(())
}

/// A client from the runner's kubeconfig, and the API server's URL.
async fn client(path: &std::path::Path) -> Result<(Client, String), Error> {
    let kubeconfig_error = |source| Error::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_error)?;
    let url = config.cluster_url.to_string().trim_end_matches('/').to_owned();
    Ok((Client::try_from(config)?, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_unique_skip_network_and_broadcast_octets_and_are_reused_after_release() {
        let mut ipam = Ipam::new([127, 2]);
        let a = ipam.allocate(None).expect("ip");
        assert_eq!(a, Ipv4Addr::new(127, 2, 0, 1));
        let b = ipam.allocate(Some(a)).expect("ip");
        assert_ne!(a, b, "a taken address is not handed out twice");
        let kept = ipam.allocate(Some(Ipv4Addr::new(127, 2, 9, 9))).expect("ip");
        assert_eq!(kept, Ipv4Addr::new(127, 2, 9, 9));
        let foreign = ipam.allocate(Some(Ipv4Addr::new(10, 0, 0, 1))).expect("ip");
        assert_eq!(foreign.octets()[..2], [127, 2]);
        ipam.release(a);
        assert_eq!(ipam.allocate(Some(a)), Some(a));
        let mut seen = HashSet::new();
        for _ in 0..600 {
            let ip = ipam.allocate(None).expect("ip");
            assert!(ip.octets()[3] != 0 && ip.octets()[3] != 255, "{ip}");
            assert!(seen.insert(ip));
        }
    }
}
