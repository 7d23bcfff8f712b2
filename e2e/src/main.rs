//! `bitscale-e2e`: start, inspect and stop the local cluster from a shell.

use std::process::ExitCode;

use bitscale_e2e::{Cluster, Layout, parts};
use clap::{Parser, Subcommand};

/// A local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)
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
    /// Print `export` lines for KUBECONFIG and a PATH with the cluster's kubectl and helm first.
    Env,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Client errors while probing a starting API server are expected; show them only on request.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
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
