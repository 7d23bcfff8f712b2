//! The operator binary: logging, leader election, `/metrics` + `/healthz`, and the controller,
//! until SIGTERM or Ctrl-C.

use std::{net::SocketAddr, time::Duration};

use bitscale_operator::{
    Config,
    build::EngineImages,
    leader::{self, LeaseConfig},
    metrics::Metrics,
};
use clap::Parser;

/// Runs the Bitscale operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the /metrics and /healthz server.
    #[arg(long, env = "BITSCALE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Engine image for cpu HardwareClasses.
    #[arg(long, env = "BITSCALE_ENGINE_IMAGE", default_value_t = format!("ghcr.io/bitscale-dev/bitscale-engine:{}", env!("CARGO_PKG_VERSION")))]
    engine_image: String,
    /// Engine image for cuda HardwareClasses.
    #[arg(long, env = "BITSCALE_ENGINE_CUDA_IMAGE", default_value_t = format!("ghcr.io/bitscale-dev/bitscale-engine:{}-cuda", env!("CARGO_PKG_VERSION")))]
    engine_cuda_image: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "BITSCALE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Hold a Lease so only one replica reconciles.
    #[arg(long, env = "BITSCALE_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the leader Lease (usually the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "bitscale-operator")]
    lease_name: String,
    /// This replica's identity (usually the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Most reconciles in flight at once (0: unbounded).
    #[arg(long, env = "BITSCALE_CONCURRENCY", default_value_t = bitscale_operator::controller::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Prometheus to read the engines' measurements from (such as
    /// `http://prometheus.monitoring.svc:9090`). Unset, decisions rest on `spec.demand` and priors.
    #[arg(long, env = "BITSCALE_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// How often measurements are read and every decision re-made.
    #[arg(long, env = "BITSCALE_DECISION_PERIOD", default_value = "30s", value_parser = duration)]
    decision_period: Duration,
    /// Range of the rates and quantiles (at least four scrape intervals).
    #[arg(long, env = "BITSCALE_METRICS_WINDOW", default_value = "1m", value_parser = duration)]
    metrics_window: Duration,
    /// Smallest relative saving for which a cheaper variant replaces the serving one.
    #[arg(long, env = "BITSCALE_SWITCH_THRESHOLD", default_value_t = bitscale_operator::controller::stability::DEFAULT_THRESHOLD)]
    switch_threshold: f64,
    /// How long that saving must hold first.
    #[arg(long, env = "BITSCALE_SWITCH_WINDOW", default_value = "5m", value_parser = duration)]
    switch_window: Duration,
    /// Measure each model's quality loss per allowed level with a profiling Job (once per model
    /// source) instead of relying on the prior table.
    #[arg(long, env = "BITSCALE_PROFILE_QUALITY", default_value_t = true, action = clap::ArgAction::Set)]
    profile_quality: bool,
    /// How long a variant's pods may stay unschedulable before the next-best variant serves.
    #[arg(long, env = "BITSCALE_PENDING_TIMEOUT", default_value = "5m", value_parser = duration)]
    pending_timeout: Duration,
    /// How long a variant whose pods could not be scheduled is set aside.
    #[arg(long, env = "BITSCALE_UNAVAILABLE_COOL_OFF", default_value = "10m", value_parser = duration)]
    unavailable_cool_off: Duration,
    /// Log format.
    #[arg(long, env = "BITSCALE_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

fn duration(value: &str) -> Result<Duration, String> {
    bitscale_operator::controller::validate::parse_duration(value)
        .ok_or_else(|| format!("{value:?} is not a duration (such as 30s, 1m, 1m30s)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    if args.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let client = kube::Client::try_default().await?;
    let metrics = Metrics::default();
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("bitscale-operator-{}", std::process::id()));
    let config = Config {
        images: EngineImages {
            cpu: args.engine_image,
            cuda: args.engine_cuda_image,
        },
        namespace: args.watch_namespace,
        instance: Some(identity.clone()),
        concurrency: args.concurrency,
        observe: args.prometheus_url.map(|url| bitscale_operator::observe::Config {
            url,
            period: args.decision_period,
            window: args.metrics_window,
            timeout: bitscale_operator::observe::DEFAULT_TIMEOUT,
        }),
        profile_quality: args.profile_quality,
        pending_timeout: args.pending_timeout,
        cool_off: args.unavailable_cool_off,
        switch: bitscale_operator::controller::stability::Policy {
            threshold: args.switch_threshold,
            window: args.switch_window,
        },
        ..Config::default()
    };

    let server = tokio::spawn(bitscale_operator::http::serve(args.metrics_addr, metrics.clone()));
    // Refuse to start without CRDs, before waiting for leadership.
    bitscale_operator::crd::check_installed(&client).await?;

    // SIGTERM (pod deletion, rollout) and Ctrl-C: finish the reconciles in flight, release the
    // lease, exit 0.
    let shutdown = bitscale_operator::shutdown::signal();
    let controller = async {
        if args.leader_elect {
            let lease = LeaseConfig {
                namespace: args.lease_namespace,
                name: args.lease_name,
                identity,
                duration: Duration::from_secs(15),
                renew: Duration::from_secs(5),
            };
            leader::run_as_leader(client, config, metrics, &lease, shutdown).await
        } else {
            bitscale_operator::run_until(client, config, metrics, shutdown).await
        }
    };
    tokio::select! {
        result = controller => result,
        result = server => Err(anyhow::anyhow!("the metrics server stopped: {:?}", result)),
    }
}
