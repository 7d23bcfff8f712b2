//! `scale-bench`: the operator at N InferenceServices against the local control plane.
//!
//! Uses the running local cluster, installs the CRDs and one HardwareClass, runs the
//! release-built operator binary as a host process watching a fresh namespace, applies N
//! InferenceServices at once (server-side apply, `--apply-concurrency` in flight), and measures:
//!
//! - the time until every child (Deployment, Service, PodDisruptionBudget) exists, every status
//!   is written for the current generation, and every `Ready` condition is `True`;
//! - the operator's peak resident memory (`VmHWM`) and CPU time;
//! - its reconciles per minute once idle, from the `/metrics` reconcile counter.
//!
//! With `--observe`, the operator also reads measurements every `--decision-period` from a
//! Prometheus of the benchmark's own that scrapes one synthetic exporter of every service's engine
//! series (see `exporter`): the time and queries per round, the reconciles the rounds cause, and
//! the memory of observation at N services.
//!
//! Prints one JSON document on stdout; progress goes to stderr.
//!
//! ```sh
//! cargo run -p bitscale-e2e -- up        # not under the benchmark lock: the daemons would keep it
//! cargo build --release -p bitscale-operator
//! cargo build --release -p bitscale-e2e --example scale-bench
//! flock /tmp/bitscale-bench.lock target/release/examples/scale-bench --count 1000
//! ```

mod exporter;
mod operator;
mod tracker;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitscale_api::v1alpha1::{HardwareClass, InferenceService};
use bitscale_e2e::{Cluster, Layout, PodSecurity, TestNamespace};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

/// The operator at N InferenceServices: time to converge, peak RSS, idle reconciles.
#[derive(Debug, Parser)]
struct Args {
    /// How many InferenceServices to apply.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Apply requests in flight at once.
    #[arg(long, default_value_t = 64)]
    apply_concurrency: usize,
    /// Replicas each InferenceService asks for (`minReplicas`, with a demand of zero). 0 keeps
    /// the measurement on the operator: 1,000 pods would not fit the five KWOK nodes.
    #[arg(long, default_value_t = 0)]
    replicas: i32,
    /// How long to watch the idle operator's reconcile counter after convergence.
    #[arg(long, default_value = "180s", value_parser = parse_secs)]
    idle: Duration,
    /// Give up waiting for convergence after this long.
    #[arg(long, default_value = "600s", value_parser = parse_secs)]
    timeout: Duration,
    /// The operator binary (default: `bitscale-operator` next to this example's directory,
    /// that is the same target profile).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Extra arguments for the operator, after `--`.
    #[arg(last = true)]
    operator_args: Vec<String>,
    /// Keep the namespace and HardwareClass afterwards.
    #[arg(long)]
    keep: bool,
    /// Serve every service's engine series to a Prometheus of the benchmark's own, and have the
    /// operator observe it.
    #[arg(long)]
    observe: bool,
    /// With `--observe`: how many services' series jitter at every scrape, as steady traffic
    /// does (default: a tenth).
    #[arg(long)]
    active: Option<usize>,
    /// With `--observe`: Prometheus's scrape interval.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    scrape_interval: Duration,
    /// With `--observe`: the operator's `--decision-period` (its `--metrics-window` is four
    /// scrape intervals).
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    decision_period: Duration,
}

fn parse_secs(value: &str) -> Result<Duration, String> {
    value
        .trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{value:?}: {e} (expected seconds such as 180s)"))
}

const CLASS: &str = "scale-bench-cpu";
const FIELD_MANAGER: &str = "bitscale-scale-bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let operator_bin = match &args.operator {
        Some(path) => path.clone(),
        None => operator::default_binary()?,
    };
    // Never start the cluster from here: the benchmark runs under `flock`, and the detached
    // control-plane daemons would inherit the lock's descriptor and hold it until `down`.
    let cluster = Cluster::at(Layout::from_env()?);
    anyhow::ensure!(
        cluster.is_running().await,
        "the local cluster is not running; start it first (outside any benchmark lock) with \
         `cargo run -p bitscale-e2e -- up`"
    );
    let client = cluster.client().await?;
    install_crds(&client).await?;
    apply(&Api::<HardwareClass>::all(client.clone()), CLASS, &class()).await?;
    let ns = TestNamespace::create_with(&client, "scale-bench", PodSecurity::Restricted).await?;
    eprintln!("scale-bench: namespace {}", ns.name);

    let result = run(&args, &cluster, &client, &ns.name, &operator_bin).await;

    if !args.keep {
        eprintln!("scale-bench: deleting namespace {} (in the background)", ns.name);
        ns.delete().await?;
        let _ = Api::<HardwareClass>::all(client.clone())
            .delete(CLASS, &Default::default())
            .await;
    }
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn run(
    args: &Args,
    cluster: &Cluster,
    client: &Client,
    namespace: &str,
    operator_bin: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    // Quality Jobs would start an eval pod per service: the benchmark measures the operator.
    let mut operator_args = vec!["--profile-quality=false".to_owned()];
    let observation = match args.observe {
        true => Some(observe(args, cluster, namespace, &mut operator_args).await?),
        false => None,
    };
    operator_args.extend(args.operator_args.iter().cloned());
    let operator = operator::Operator::start(operator_bin, cluster, namespace, &operator_args).await?;
    let tracker = tracker::Tracker::start(client, namespace, args.count);
    let sampler = operator.sample_memory(Duration::from_millis(250));

    eprintln!("scale-bench: applying {} InferenceServices", args.count);
    let api: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    futures::stream::iter(0..args.count)
        .map(|i| {
            let api = api.clone();
            let name = service_name(i);
            let object = inference_service(&name, namespace, args.replicas);
            async move { apply(&api, &name, &object).await }
        })
        .buffer_unordered(args.apply_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let applied = started.elapsed();
    eprintln!("scale-bench: applied in {:.1}s; waiting", applied.as_secs_f64());

    let milestones = tracker.wait(started, args.timeout).await;
    let converged = started.elapsed();
    let busy_reconciles = operator.reconciles().await?;
    let busy_cpu = operator.cpu_seconds()?;
    eprintln!(
        "scale-bench: {} after {:.1}s; {busy_reconciles} reconciles so far; idling {}s",
        if milestones.complete() {
            "converged"
        } else {
            "timed out"
        },
        converged.as_secs_f64(),
        args.idle.as_secs()
    );

    let rounds_before = observe_counters(&operator).await?;
    let idle = operator
        .watch_idle(args.idle, &Api::namespaced(client.clone(), namespace))
        .await?;
    let observed = match &observation {
        Some(o) => Some(o.report(&operator, &rounds_before, idle.reconciles).await?),
        None => None,
    };
    let peak_rss = operator.peak_rss_bytes()?;
    let rss_samples = sampler.stop().await;
    let errors = operator.errors().await?;
    operator.stop().await;

    Ok(json!({
        "count": args.count,
        "replicas_per_service": args.replicas,
        "apply_concurrency": args.apply_concurrency,
        "operator_args": operator_args,
        "apply_seconds": secs(applied),
        "seconds_to": milestones.to_json(),
        "converged": milestones.complete(),
        "operator": {
            "peak_rss_mib": mib(peak_rss),
            "rss_at_convergence_mib": rss_samples.at(converged).map(mib),
            "rss_end_mib": rss_samples.last().map(mib),
            "cpu_seconds_to_convergence": round(busy_cpu, 2),
            "reconciles_to_convergence": busy_reconciles,
            "reconcile_errors": errors,
        },
        "idle": idle.to_json(),
        "observe": observed,
        "machine": machine(),
    }))
}

/// The benchmark's own Prometheus and the exporter it scrapes.
struct Observation {
    exporter: exporter::Exporter,
    prometheus: exporter::OwnPrometheus,
    series_ingested_seconds: f64,
}

/// Starts the exporter and Prometheus, waits until every service's series is in, and points
/// the operator at it.
async fn observe(
    args: &Args,
    cluster: &Cluster,
    namespace: &str,
    operator_args: &mut Vec<String>,
) -> anyhow::Result<Observation> {
    let population = exporter::Population {
        namespace: namespace.to_owned(),
        services: (0..args.count).map(service_name).collect(),
        variant: format!("q8_0.{CLASS}"),
        active: args.active.unwrap_or(args.count / 10).min(args.count),
    };
    let exporter = exporter::Exporter::start(population).await?;
    let logs = cluster
        .state_dir()
        .join("logs")
        .join("scale-bench-prometheus.log");
    let prometheus = exporter::OwnPrometheus::start(
        &cluster.binaries().prometheus,
        &exporter.address,
        args.scrape_interval,
        logs,
    )
    .await?;
    eprintln!(
        "scale-bench: Prometheus at {} scraping {}",
        prometheus.url, exporter.address
    );
    let ingested = prometheus
        .await_services(args.count, Duration::from_secs(300))
        .await?;
    operator_args.extend([
        format!("--prometheus-url={}", prometheus.url),
        format!("--decision-period={}s", args.decision_period.as_secs()),
        format!("--metrics-window={}s", 4 * args.scrape_interval.as_secs()),
    ]);
    Ok(Observation {
        exporter,
        prometheus,
        series_ingested_seconds: secs(ingested),
    })
}

/// The observer's counters at one moment.
struct ObserveCounters {
    rounds: f64,
    round_seconds: f64,
    queries: f64,
    triggers: f64,
    status_writes: f64,
}

async fn observe_counters(operator: &operator::Operator) -> anyhow::Result<ObserveCounters> {
    Ok(ObserveCounters {
        rounds: operator
            .metric("bitscale_operator_observe_round_duration_seconds_count")
            .await?,
        round_seconds: operator
            .metric("bitscale_operator_observe_round_duration_seconds_sum")
            .await?,
        queries: operator.metric("bitscale_operator_observe_queries_total").await?,
        triggers: operator
            .metric("bitscale_operator_observe_triggered_reconciles_total")
            .await?,
        status_writes: operator.metric("bitscale_operator_status_writes_total").await?,
    })
}

impl Observation {
    /// What the rounds of the idle phase cost.
    async fn report(
        &self,
        operator: &operator::Operator,
        before: &ObserveCounters,
        idle_reconciles: u64,
    ) -> anyhow::Result<serde_json::Value> {
        let after = observe_counters(operator).await?;
        let rounds = after.rounds - before.rounds;
        let per_round = |x: f64| (rounds > 0.0).then(|| round(x / rounds, 3));
        Ok(json!({
            "prometheus_url": self.prometheus.url,
            "exporter_page_mib": mib(self.exporter.page_bytes.load(std::sync::atomic::Ordering::Relaxed)),
            "prometheus_rss_mib": self.prometheus.rss_bytes().map(mib),
            "series_ingested_seconds": self.series_ingested_seconds,
            "services_in_last_round": operator.metric("bitscale_operator_observed_inference_services").await?,
            "rounds_while_idle": rounds,
            "seconds_per_round": per_round(after.round_seconds - before.round_seconds),
            "queries_per_round": per_round(after.queries - before.queries),
            "services_woken_per_round": per_round(after.triggers - before.triggers),
            "reconciles_per_round": per_round(idle_reconciles as f64),
            "status_writes_per_round": per_round(after.status_writes - before.status_writes),
        }))
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in bitscale_operator::crd::all() {
        let name = crd.name_any();
        apply(&api, &name, &crd).await?;
        let established = |c: Option<&CustomResourceDefinition>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        };
        bitscale_e2e::await_condition(api.clone(), &name, established, Duration::from_secs(60)).await?;
    }
    Ok(())
}

async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

fn class() -> HardwareClass {
    serde_json::from_value(json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "HardwareClass",
        "metadata": { "name": CLASS },
        "spec": {
            "resources": { "cpu": "2", "memory": "4Gi" },
            "nodeSelector": { "bitscale.dev/pool": "cpu" },
            "costPerHour": 0.12,
            "memoryBandwidth": "20GB/s"
        }
    }))
    .expect("a valid HardwareClass")
}

fn inference_service(name: &str, namespace: &str, replicas: i32) -> InferenceService {
    serde_json::from_value(json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "model": {
                "source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@main/smollm2-135m-instruct-q8_0.gguf",
                "parameters": "135M",
                "contextLength": 2048
            },
            "placement": { "hardwareClasses": [CLASS] },
            "scaling": { "minReplicas": replicas, "maxReplicas": replicas.max(1) },
            "demand": { "tokensPerSecond": 0.0 }
        }
    }))
    .expect("a valid InferenceService")
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
    // Other work on the machine skews every figure; the load average says how much there was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(usize::from).ok(),
        "load_average_1m_at_end": load,
    })
}

fn secs(d: Duration) -> f64 {
    round(d.as_secs_f64(), 2)
}

fn mib(bytes: u64) -> f64 {
    round(bytes as f64 / 1_048_576.0, 1)
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}
