//! `bitscale-e2e`: start, inspect and stop the local cluster from a shell.

use std::process::ExitCode;

use bitscale_e2e::{Cluster, Layout, parts};
use clap::{Parser, Subcommand};

/// A local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK,
/// Prometheus) whose engine and operator pods run as real processes at loopback pod IPs,
/// for Bitscale's tests and demo.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build what is missing, then start the cluster, or reuse the running one. Prints
    /// `export KUBECONFIG=…`, so `eval "$(bitscale-e2e up)"` points the shell at it.
    Up,
    /// Stop every process of the cluster and remove its state.
    Down,
    /// Only build (and cache) the binaries.
    Build,
    /// Show whether the cluster runs, its components' PIDs, and where its files are.
    Status,
    /// Print `export` lines for KUBECONFIG, BITSCALE_PROMETHEUS_URL (and the scrape interval)
    /// and a PATH with the cluster's kubectl and helm first.
    Env,
    /// The cluster's pod runner (started by `up`; not for use by hand).
    #[command(hide = true)]
    PodRunner(PodRunnerArgs),
}

/// Flags of the pod runner, set by `up`.
#[derive(Debug, clap::Args)]
struct PodRunnerArgs {
    /// The cluster's state directory.
    #[arg(long)]
    state_dir: std::path::PathBuf,
    /// The runner's kubeconfig.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// Where the workspace's binaries are.
    #[arg(long)]
    bin_dir: std::path::PathBuf,
    /// The pod range's first two octets, `127.N`.
    #[arg(long, value_parser = parse_range)]
    pod_range: [u8; 2],
}

fn parse_range(s: &str) -> Result<[u8; 2], String> {
    let (a, b) = s.split_once('.').ok_or("expected 127.N")?;
    match (a.parse::<u8>(), b.parse::<u8>()) {
        (Ok(127), Ok(b)) => Ok([127, b]),
        _ => Err(format!("{s} is not 127.N")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Client errors while probing a starting API server are expected; show them only on request.
    // The pod runner is a daemon whose log is the record of what its pods did.
    let default = match cli.command {
        Cmd::PodRunner(_) => "info,kube=warn",
        _ => "off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bitscale-e2e: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Cmd) -> Result<ExitCode, bitscale_e2e::Error> {
    let layout = Layout::from_env()?;
    match command {
        Cmd::Up => {
            let cluster = Cluster::up(layout).await?;
            println!(
                "export KUBECONFIG={}",
                shell_quote(&cluster.kubeconfig().to_string_lossy())
            );
        }
        Cmd::Down => {
            let stopped = Cluster::down(layout).await?;
            if stopped.is_empty() {
                eprintln!("bitscale-e2e: no cluster processes were running; state removed");
            } else {
                eprintln!("bitscale-e2e: stopped {}; state removed", stopped.join(", "));
            }
        }
        Cmd::Build => {
            let build_layout = layout.clone();
            tokio::task::spawn_blocking(move || parts::ensure_all_built(&build_layout)).await??;
            for part in parts::ALL {
                eprintln!(
                    "{} {}: {}",
                    part.name,
                    part.version,
                    part.bin_dir(&layout).display()
                );
            }
        }
        Cmd::Status => {
            use std::{fmt::Write as _, io::Write as _};
            let cluster = Cluster::at(layout);
            let running = cluster.is_running().await;
            let mut out = String::new();
            let _ = writeln!(
                out,
                "cluster: {}",
                if running { "running" } else { "not running" }
            );
            let _ = writeln!(out, "state:   {}", cluster.state_dir().display());
            let _ = writeln!(out, "kubeconfig: {}", cluster.kubeconfig().display());
            for daemon in cluster.running_components() {
                let _ = writeln!(
                    out,
                    "  {:<24} pid {:<8} log {}",
                    daemon.name,
                    daemon.pid,
                    daemon.log.display()
                );
            }
            // A closed pipe (`status | head -1`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(out.as_bytes());
            if !running {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::PodRunner(args) => {
            bitscale_e2e::runner::run(bitscale_e2e::runner::RunnerConfig {
                state_dir: args.state_dir,
                kubeconfig: args.kubeconfig,
                bin_dir: args.bin_dir,
                pod_range: args.pod_range,
            })
            .await?;
        }
        Cmd::Env => {
            let cluster = Cluster::at(layout.clone());
            if !cluster.is_running().await {
                return Err(bitscale_e2e::Error::NotRunning);
            }
            let helm_dir = parts::HELM.bin_dir(&layout);
            println!(
                "export KUBECONFIG={}",
                shell_quote(&cluster.kubeconfig().to_string_lossy())
            );
            if let Some(url) = cluster.prometheus_url() {
                println!("export BITSCALE_PROMETHEUS_URL={}", shell_quote(&url));
                println!(
                    "export BITSCALE_SCRAPE_INTERVAL={}",
                    bitscale_e2e::prometheus::SCRAPE_INTERVAL
                );
            }
            println!(
                "export PATH={}:{}:\"$PATH\"",
                shell_quote(&cluster.bin_dir().to_string_lossy()),
                shell_quote(&helm_dir.to_string_lossy())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Single-quotes `s` for POSIX shells.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
