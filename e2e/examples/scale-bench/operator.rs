//! The operator binary as a host process: started against the cluster's admin kubeconfig,
//! measured through `/proc` and its `/metrics`, stopped with SIGTERM.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitscale_e2e::Cluster;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, api::ListParams};
use rustix::process::{Pid, Signal};
use serde_json::json;
use tokio::{process::Child, sync::oneshot, task::JoinHandle};

/// `bitscale-operator` in the directory above this example's (same target dir and profile).
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory from this example's path")?;
    let binary = profile_dir.join("bitscale-operator");
    anyhow::ensure!(
        binary.exists(),
        "{} does not exist; build it first with `cargo build --release -p bitscale-operator` \
         (same profile as this example), or pass --operator PATH",
        binary.display()
    );
    Ok(binary)
}

/// A running operator process.
pub struct Operator {
    child: Child,
    pid: u32,
    metrics_url: String,
    http: reqwest::Client,
}

impl Operator {
    /// Starts the operator watching `namespace`, logging to `<cluster state>/logs/scale-bench-operator.log`,
    /// and waits until its `/healthz` answers.
    pub async fn start(
        binary: &Path,
        cluster: &Cluster,
        namespace: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = cluster.state_dir().join("logs").join("scale-bench-operator.log");
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        eprintln!(
            "scale-bench: starting {} (log {})",
            binary.display(),
            log_path.display()
        );
        let child = tokio::process::Command::new(binary)
            .args(extra)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("BITSCALE_WATCH_NAMESPACE", namespace)
            .env("BITSCALE_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("BITSCALE_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the operator exited at once")?;
        let mut operator = Self {
            child,
            pid,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        let health = format!("http://127.0.0.1:{port}/healthz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = operator.child.try_wait()? {
                anyhow::bail!("the operator exited with {status}; see {}", log_path.display());
            }
            if operator
                .http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(operator);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the operator did not serve /healthz within 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Samples the resident set every `interval` until [`MemorySampler::stop`].
    pub fn sample_memory(&self, interval: Duration) -> MemorySampler {
        let pid = self.pid;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Some(rss) = status_kib(pid, "VmRSS:") {
                    samples.push((started.elapsed(), rss * 1024));
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = &mut stopped => return samples,
                }
            }
        });
        MemorySampler { stop, task }
    }

    /// The process's peak resident set (`VmHWM`) in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmHWM:")
            .map(|k| k * 1024)
            .context("cannot read VmHWM of the operator")
    }

    /// User plus system CPU time used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15, i.e. indices 11 and 12 after the state (field 3),
        // in USER_HZ ticks, which Linux fixes at 100 per second for /proc.
        Ok((ticks(11) + ticks(12)) / 100.0)
    }

    /// The `bitscale_operator_reconciles_total` counter.
    pub async fn reconciles(&self) -> anyhow::Result<u64> {
        let text = self.metrics().await?;
        Ok(sum_metric(&text, "bitscale_operator_reconciles_total") as u64)
    }

    /// Children written, from `bitscale_operator_child_applies_total` (unchanged children are
    /// not re-applied, so this stays flat once everything is in place).
    pub async fn child_writes(&self) -> anyhow::Result<u64> {
        let text = self.metrics().await?;
        Ok(sum_metric(&text, "bitscale_operator_child_applies_total") as u64)
    }

    /// Failed reconciles by category, from `bitscale_operator_reconcile_errors_total`.
    pub async fn errors(&self) -> anyhow::Result<serde_json::Value> {
        let text = self.metrics().await?;
        let mut errors = serde_json::Map::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("bitscale_operator_reconcile_errors_total{"))
        {
            if let (Some(category), Some(value)) = (
                line.split('"').nth(1),
                line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
            ) {
                errors.insert(category.to_owned(), json!(value));
            }
        }
        Ok(errors.into())
    }

    /// Reads the reconcile counter every 10 s for `duration` and reports the rate.
    pub async fn watch_idle(
        &self,
        duration: Duration,
        deployments: &Api<Deployment>,
    ) -> anyhow::Result<Idle> {
        let start = self.reconciles().await?;
        let writes_start = self.child_writes().await?;
        let cpu_start = self.cpu_seconds()?;
        let started = Instant::now();
        let mut timeline = vec![IdleSample {
            second: 0,
            reconciles: 0,
            child_writes: 0,
            deployments_unobserved: unobserved(deployments).await?,
        }];
        while started.elapsed() < duration {
            tokio::time::sleep(Duration::from_secs(10).min(duration.saturating_sub(started.elapsed()))).await;
            timeline.push(IdleSample {
                second: started.elapsed().as_secs(),
                reconciles: self.reconciles().await? - start,
                child_writes: self.child_writes().await? - writes_start,
                deployments_unobserved: unobserved(deployments).await?,
            });
        }
        Ok(Idle {
            seconds: started.elapsed().as_secs_f64(),
            reconciles: timeline.last().map_or(0, |s| s.reconciles),
            child_writes: timeline.last().map_or(0, |s| s.child_writes),
            cpu_seconds: self.cpu_seconds()? - cpu_start,
            timeline,
        })
    }

    /// The sum of the operator's series `name` (all label sets).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(sum_metric(&self.metrics().await?, name))
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(&self.metrics_url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("scale-bench: the operator ignored SIGTERM for 10s; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// The idle phase's reconciles.
pub struct Idle {
    seconds: f64,
    /// Reconciles during the idle phase.
    pub reconciles: u64,
    child_writes: u64,
    cpu_seconds: f64,
    timeline: Vec<IdleSample>,
}

/// One sample of the idle phase.
#[derive(serde::Serialize)]
pub struct IdleSample {
    /// Seconds since the idle phase began.
    second: u64,
    /// Reconciles since then.
    reconciles: u64,
    /// Children written since then.
    child_writes: u64,
    /// Deployments whose current generation the Deployment controller has not yet observed:
    /// each one it catches up on is a real change that triggers one more reconcile.
    deployments_unobserved: usize,
}

/// Deployments in `api` not yet observed at their generation.
async fn unobserved(api: &Api<Deployment>) -> anyhow::Result<usize> {
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|d| d.status.as_ref().and_then(|s| s.observed_generation) < d.metadata.generation)
        .count())
}

impl Idle {
    /// As JSON, with the rate per minute.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "seconds": super::round(self.seconds, 1),
            "reconciles": self.reconciles,
            "reconciles_per_minute": super::round(self.reconciles as f64 * 60.0 / self.seconds.max(1.0), 1),
            "child_writes": self.child_writes,
            "cpu_seconds": super::round(self.cpu_seconds, 2),
            "timeline": self.timeline,
        })
    }
}

/// A background RSS sampler.
pub struct MemorySampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<(Duration, u64)>>,
}

impl MemorySampler {
    /// Stops sampling and returns the samples.
    pub async fn stop(self) -> Samples {
        let _ = self.stop.send(());
        Samples(self.task.await.unwrap_or_default())
    }
}

/// RSS samples in bytes by time since sampling began.
pub struct Samples(Vec<(Duration, u64)>);

impl Samples {
    /// The last sample at or before `t`.
    pub fn at(&self, t: Duration) -> Option<u64> {
        self.0.iter().take_while(|(s, _)| *s <= t).last().map(|(_, v)| *v)
    }

    /// The last sample.
    pub fn last(&self) -> Option<u64> {
        self.0.last().map(|(_, v)| *v)
    }
}

pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
