//! One pod's life on this machine: take an IP, prepare its volumes, run its init containers in
//! order and then its containers, probe them, report status, and on deletion stop everything
//! within the grace period and remove the pod, as a kubelet does.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Container, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use tokio::sync::watch;

use super::{
    Shared,
    container::Run,
    invocation::{PodContext, invocation},
    setup::{self, Prepared},
    status::{self, Conditions, Phase, PodReport},
};

/// How often a pod's processes and probes are looked at.
const TICK: Duration = Duration::from_millis(200);
/// How soon a container that could not start is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// How long processes get when the runner itself stops, or a pod vanished without deletion.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The environment variable marking every process the runner starts with the cluster's state
/// directory, so teardown finds them even if the runner is gone.
pub const MARKER_ENV: &str = "BITSCALE_E2E_STATE";

/// What ended a pod's worker.
enum End {
    /// Deleted through the API: stopped within its grace period, then removed.
    Deleted,
    /// Gone from the API, or the runner stops: stopped at once.
    Gone,
}

/// The worker of one pod.
pub struct PodWorker {
    shared: Arc<Shared>,
    pod: watch::Receiver<Option<Pod>>,
    shutdown: watch::Receiver<bool>,
    dir: PathBuf,
    ip: Option<Ipv4Addr>,
    prepared: Option<Prepared>,
    /// When preparing the volumes may be tried again after a failure (a claim not bound yet).
    next_prepare: Instant,
    init: Vec<Run>,
    main: Vec<Run>,
    init_done: usize,
    init_failed: bool,
    start_time: Timestamp,
    conditions: Conditions,
    reported: Option<serde_json::Value>,
}

impl PodWorker {
    /// A worker for the pod `pod` currently holds.
    pub fn new(
        shared: Arc<Shared>,
        pod: watch::Receiver<Option<Pod>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let current = pod.borrow().clone().unwrap_or_default();
        let uid = current.metadata.uid.clone().unwrap_or_default();
        let dir = shared.state_dir.join("pods").join(format!(
            "{}_{}_{}",
            current.namespace().unwrap_or_default(),
            current.name_any(),
            &uid[..uid.len().min(8)]
        ));
        let spec = current.spec.clone().unwrap_or_default();
        let runs = |containers: &[Container]| containers.iter().map(|c| Run::new(c, &dir)).collect();
        Self {
            init: runs(spec.init_containers.as_deref().unwrap_or_default()),
            main: runs(&spec.containers),
            shared,
            pod,
            shutdown,
            dir,
            ip: None,
            prepared: None,
            next_prepare: Instant::now(),
            init_done: 0,
            init_failed: false,
            start_time: Timestamp::now(),
            conditions: Conditions::default(),
            reported: None,
        }
    }

    /// Runs the pod until it is deleted, vanishes, or the runner stops.
    pub async fn run(mut self) {
        let end = self.live().await;
        let grace = match end {
            End::Deleted => self.grace_period(),
            End::Gone => SHUTDOWN_GRACE,
        };
        self.stop_all(grace).await;
        if matches!(end, End::Deleted) {
            self.remove().await;
        }
        if let Some(ip) = self.ip {
            self.shared
                .ipam
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(ip);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("volumes"));
    }

    async fn live(&mut self) -> End {
        loop {
            if *self.shutdown.borrow() {
                return End::Gone;
            }
            let Some(pod) = self.pod.borrow().clone() else {
                return End::Gone;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                return End::Deleted;
            }
            self.step(&pod).await;
            self.report(&pod).await;
            tokio::select! {
                _ = self.pod.changed() => {}
                _ = self.shutdown.changed() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn step(&mut self, pod: &Pod) {
        if self.ip.is_none() {
            let preferred = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref()?.parse().ok());
            self.ip = self
                .shared
                .ipam
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allocate(preferred);
        }
        if self.prepared.is_none() {
            if Instant::now() < self.next_prepare {
                return;
            }
            match setup::prepare(&self.shared.client, &self.shared.api, pod, &self.dir).await {
                Ok(prepared) => self.prepared = Some(prepared),
                Err(message) => {
                    self.next_prepare = Instant::now() + RETRY;
                    for run in self.init.iter_mut().chain(self.main.iter_mut()) {
                        run.record.state = status::State::Waiting {
                            reason: "ContainerCreating".into(),
                            message: Some(message.clone()),
                        };
                    }
                    return;
                }
            }
        }
        if let Some(prepared) = self.prepared.as_mut()
            && let Err(e) = setup::renew_due(&self.shared.client, pod, &mut prepared.tokens).await
        {
            tracing::warn!(pod = %pod.name_any(), "renewing a service-account token: {e}");
        }
        let policy = restart_policy(pod);
        if self.init_done < self.init.len() {
            self.step_init(pod, policy).await;
            return;
        }
        let grace = self.grace_period();
        let ip = self.ip.unwrap_or(Ipv4Addr::LOCALHOST);
        for i in 0..self.main.len() {
            let restart = |code: i32| policy == "Always" || (policy == "OnFailure" && code != 0);
            if let Some(t) = self.main[i].poll_exit_with(restart) {
                tracing::info!(pod = %pod.name_any(), container = %self.main[i].spec.name, code = t.exit_code, "container exited");
            }
            if self.main[i].due(Instant::now()) {
                self.start(pod, Which::Main(i)).await;
            }
            self.main[i].enforce();
            self.main[i].probe(&self.shared.http, ip, grace).await;
        }
    }

    async fn step_init(&mut self, pod: &Pod, policy: String) {
        let i = self.init_done;
        let restart_on_failure = policy != "Never";
        if let Some(t) = self.init[i].poll_exit_with(|code| code != 0 && restart_on_failure) {
            if t.exit_code == 0 {
                self.init_done += 1;
                return;
            }
            if !restart_on_failure {
                self.init_failed = true;
            }
        }
        if !self.init_failed && self.init[i].due(Instant::now()) {
            self.start(pod, Which::Init(i)).await;
        }
    }

    async fn start(&mut self, pod: &Pod, which: Which) {
        let run = match which {
            Which::Init(i) => &self.init[i],
            Which::Main(i) => &self.main[i],
        };
        let ctx = match self.context(pod, &run.spec, &run.termination_file).await {
            Ok(ctx) => ctx,
            Err(message) => {
                let why = super::invocation::CannotStart {
                    reason: "CreateContainerConfigError",
                    message,
                };
                self.run_mut(which).cannot_start(why, RETRY);
                return;
            }
        };
        let home = self.dir.join("home");
        let _ = std::fs::create_dir_all(&home);
        let run = self.run_mut(which);
        match invocation(&run.spec, &ctx) {
            Ok(invocation) => {
                run.count_restart();
                if let Err(why) = run.start(&invocation, &home) {
                    run.cannot_start(why, RETRY);
                } else {
                    tracing::info!(pod = %pod.name_any(), container = %run.spec.name, pid = ?run.pid(), args = ?invocation.args, "container started");
                }
            }
            Err(why) => run.cannot_start(why, RETRY),
        }
    }

    fn run_mut(&mut self, which: Which) -> &mut Run {
        match which {
            Which::Init(i) => &mut self.init[i],
            Which::Main(i) => &mut self.main[i],
        }
    }

    /// What `container`'s process sees of the pod.
    async fn context(
        &self,
        pod: &Pod,
        container: &Container,
        termination: &std::path::Path,
    ) -> Result<PodContext, String> {
        let prepared = self.prepared.clone().unwrap_or_default();
        let mut mounts = Vec::new();
        let mut kubeconfig = None;
        for mount in container.volume_mounts.iter().flatten() {
            let base = prepared
                .volumes
                .get(&mount.name)
                .ok_or_else(|| format!("volume {} is not defined", mount.name))?;
            let host = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => base.join(sub),
                None => base.clone(),
            };
            mounts.push((mount.mount_path.clone(), host));
            if let Some(k) = prepared.kubeconfigs.get(&mount.name) {
                kubeconfig = Some(k.clone());
            }
        }
        let message_path = container
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        mounts.push((message_path, termination.to_owned()));
        let mut with_ip = pod.clone();
        with_ip.status.get_or_insert_default().pod_ip = self.ip.map(|ip| ip.to_string());
        let resolved_env = setup::resolve_env(&self.shared.client, &with_ip, container).await?;
        let mut runner_env = vec![
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            (
                "HOME".to_owned(),
                self.dir.join("home").to_string_lossy().into_owned(),
            ),
            ("HOSTNAME".to_owned(), pod.name_any()),
            (
                MARKER_ENV.to_owned(),
                self.shared.state_dir.to_string_lossy().into_owned(),
            ),
        ];
        if let Some(k) = kubeconfig {
            runner_env.push(("KUBECONFIG".to_owned(), k.to_string_lossy().into_owned()));
        }
        Ok(PodContext {
            ip: self.ip,
            mounts,
            resolved_env,
            runner_env,
            bin_dir: self.shared.bin_dir.clone(),
        })
    }

    async fn report(&mut self, pod: &Pod) {
        let finished = self.init_failed
            || (self.init_done == self.init.len()
                && self
                    .main
                    .iter()
                    .all(|r| matches!(r.record.state, status::State::Terminated(_))));
        let init: Vec<_> = self.init.iter().map(|r| r.record.clone()).collect();
        let main: Vec<_> = self.main.iter().map(|r| r.record.clone()).collect();
        let initialized = self.init_done == self.init.len();
        let report = PodReport {
            ip: self.ip,
            start_time: self.start_time,
            phase: status::phase(initialized, self.init_failed, &main, finished),
            initialized,
            init: &init,
            main: &main,
        };
        let status = status::pod_status(&report, &mut self.conditions, Timestamp::now());
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        if self.reported.as_ref() == Some(&value) {
            return;
        }
        let pods: Api<Pod> =
            Api::namespaced(self.shared.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = serde_json::json!({ "status": value });
        match pods
            .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.reported = Some(value),
            Err(e) => tracing::warn!(pod = %pod.name_any(), "writing pod status: {e}"),
        }
        if report.phase == Phase::Failed || report.phase == Phase::Succeeded {
            tracing::debug!(pod = %pod.name_any(), phase = ?report.phase, "pod finished");
        }
    }

    /// The grace period: the deletion's, else the pod's, else 30 s.
    fn grace_period(&self) -> Duration {
        let pod = self.pod.borrow().clone().unwrap_or_default();
        let seconds = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }

    /// SIGTERM to every process, SIGKILL to those still there after `grace`.
    async fn stop_all(&mut self, grace: Duration) {
        for run in self.init.iter_mut().chain(self.main.iter_mut()) {
            run.stop("Killing", grace);
        }
        loop {
            let mut running = false;
            for run in self.init.iter_mut().chain(self.main.iter_mut()) {
                run.poll_exit_with(|_| false);
                run.enforce();
                running |= run.is_running();
            }
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn remove(&self) {
        let pod = self.pod.borrow().clone().unwrap_or_default();
        remove_pod(&self.shared.client, &pod).await;
    }
}

/// Removes the pod object, as the kubelet does once its containers are gone (grace 0, this UID
/// only: a pod of the same name created since is left alone).
pub async fn remove_pod(client: &kube::Client, pod: &Pod) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(e) = pods.delete(&pod.name_any(), &params).await {
        tracing::debug!(pod = %pod.name_any(), "removing the pod: {e}");
    }
}

#[derive(Clone, Copy)]
enum Which {
    Init(usize),
    Main(usize),
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}
