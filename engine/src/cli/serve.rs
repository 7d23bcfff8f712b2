//! `bitscale-engine serve`: load a model, serve it, drain on SIGTERM.

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Args;

use super::resources::{
    default_kv_pool, default_threads, memory_limit, parse_duration, parse_positive_duration, parse_size,
};
use crate::{
    model::{DeviceKind, QuantLevel},
    scheduler::SchedulerConfig,
    server::{ServerConfig, TextCodec},
};

/// Flags of `serve`. Each also reads a `BITSCALE_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(long, env = "BITSCALE_MODEL")]
    pub model: PathBuf,
    /// Quantization level: f32, f16, bf16, q8_0, q6_k, q5_k, q5_0, q5_1, q4_k, q4_0, q4_1, q3_k, q2_k.
    #[arg(long, env = "BITSCALE_QUANTIZATION", value_parser = parse_quant, default_value = "q8_0")]
    pub quantization: QuantLevel,
    /// `cpu` or `cuda`.
    #[arg(long, env = "BITSCALE_DEVICE", value_parser = parse_device, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, env = "BITSCALE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, env = "BITSCALE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// The name clients pass as `model` (default: the model file or folder stem).
    #[arg(long, env = "BITSCALE_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Sequences in the running batch at most.
    #[arg(long, env = "BITSCALE_MAX_RUNNING", default_value_t = 16)]
    pub max_running: usize,
    /// Requests waiting for the batch at most; more get 429.
    #[arg(long, env = "BITSCALE_MAX_WAITING", default_value_t = 64)]
    pub max_waiting: usize,
    /// Prompt tokens of all waiting requests at most; more get 429.
    #[arg(long, env = "BITSCALE_MAX_WAITING_TOKENS", default_value_t = 65_536)]
    pub max_waiting_tokens: usize,
    /// Tokens per engine step (decode tokens plus prompt chunks).
    #[arg(long, env = "BITSCALE_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Inter-token latency to keep engine steps within (e.g. 100ms): a step then carries only as
    /// many tokens (at most --max-batch-tokens) as fit in 90 % of it at the measured time per
    /// token, so a long prompt arriving does not stall the running streams. Default: no target.
    #[arg(long, env = "BITSCALE_ITL_TARGET", value_parser = parse_positive_duration)]
    pub itl_target: Option<Duration>,
    /// KV cache pool size (e.g. 2GiB). Default: the memory limit minus weights and headroom.
    #[arg(long, alias = "kv-memory", env = "BITSCALE_KV_POOL_BYTES", value_parser = parse_size)]
    pub kv_pool_bytes: Option<u64>,
    /// Finished sequences kept so prompts with the same prefix reuse their KV cache (0: off).
    #[arg(long, env = "BITSCALE_PREFIX_CACHE_ENTRIES", default_value_t = 16)]
    pub prefix_cache_entries: usize,
    /// Longest sequence (prompt + generated) to accept; at most the model's own context length.
    #[arg(long, env = "BITSCALE_CONTEXT_LENGTH")]
    pub context_length: Option<usize>,
    /// KV pool size in tokens (times the model's KV bytes per token); overrides the memory-limit default.
    #[arg(long, env = "BITSCALE_KV_CACHE_TOKENS", conflicts_with = "kv_pool_bytes")]
    pub kv_cache_tokens: Option<u64>,
    /// Compute threads. Default: the container's CPU quota, else all CPUs.
    #[arg(long, env = "BITSCALE_THREADS")]
    pub threads: Option<usize>,
    /// Before readiness, measure the served level's quality loss against the source file's own
    /// precision on the built-in calibration text and export it as `bitscale_engine_quality_loss`.
    #[arg(long, env = "BITSCALE_MEASURE_QUALITY")]
    pub measure_quality: bool,
    /// Tokens of the calibration text `--measure-quality` scores at most (default: all of it). The
    /// operator passes its profiling Job's count, so the two figures rest on the same tokens.
    #[arg(long, env = "BITSCALE_MEASURE_QUALITY_TOKENS")]
    pub measure_quality_tokens: Option<usize>,
    /// Time budget of `--measure-quality` (at least one group of windows is always measured).
    #[arg(long, env = "BITSCALE_MEASURE_QUALITY_BUDGET", value_parser = parse_duration, default_value = "60s")]
    pub measure_quality_budget: Duration,
    /// How long requests in flight may take to finish after SIGTERM.
    #[arg(long, env = "BITSCALE_GRACE_PERIOD", value_parser = parse_duration, default_value = "30s")]
    pub grace_period: Duration,
}

/// Parses a quantization level name (GGUF spelling, case-insensitive).
pub fn parse_quant(s: &str) -> Result<QuantLevel, String> {
    s.parse()
        .map_err(|e: bitscale_api::UnknownQuantLevel| e.to_string())
}

/// The label a level is reported under (`bitscale_engine_info{quantization}`).
pub fn quant_name(q: QuantLevel) -> &'static str {
    q.as_str()
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    match s {
        "cpu" => Ok(DeviceKind::Cpu),
        "cuda" => Ok(DeviceKind::Cuda),
        _ => Err(format!("unknown device `{s}` (cpu or cuda)")),
    }
}

fn device_name(d: DeviceKind) -> &'static str {
    match d {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
    }
}

/// Compute threads for `args`: the flag, else the CPU quota.
pub fn threads(args: &ServeArgs) -> usize {
    args.threads.unwrap_or_else(default_threads).max(1)
}

/// Runs `serve` to completion: exits after a drain on SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before the placeholder server binds its port: a missing GPU is a start-up error, not a
    // failed load behind a port that answered for a moment.
    crate::model::open_device(args.device)?;
    let threads = threads(&args);
    tracing::info!(threads, "compute threads");
    tracing::info!(
        kernels = crate::model::kernels_label(),
        unused_cpu_features = ?crate::model::KernelSet::unused_features(),
        "CPU kernel set"
    );
    // Two async workers are plenty for HTTP; the CPU belongs to the model's threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (path, level, device) = (args.model.clone(), args.quantization, args.device);
    let placeholder = crate::server::serve_loading(args.host, args.port).await?;
    tracing::info!(addr = %placeholder.local_addr(), model = %args.model.display(), "loading");
    let (measure, budget, tokens) = (
        args.measure_quality,
        args.measure_quality_budget,
        args.measure_quality_tokens,
    );
    // The measurement runs before the real server starts, so `/ready` stays 503 (the loading
    // placeholder) until it is done: no traffic competes with it for the CPU.
    let loaded = tokio::task::spawn_blocking(move || {
        let loaded = crate::model::load(&path, level, device)?;
        let quality = measure
            .then(|| crate::eval::measure_served(&path, loaded.forward.as_ref(), level, (tokens, budget)))
            .transpose()?;
        anyhow::Ok((loaded, quality))
    })
    .await;
    placeholder.stop().await;
    let (loaded, quality) = loaded?.with_context(|| format!("loading {}", args.model.display()))?;
    let info = loaded.forward.info().clone();
    let kv_pool_bytes = match (args.kv_pool_bytes, args.kv_cache_tokens) {
        (Some(b), _) => b,
        (None, Some(tokens)) => tokens.saturating_mul(info.kv_bytes_per_token),
        (None, None) => {
            let limit = memory_limit().context("cannot read the memory limit; pass --kv-pool-bytes")?;
            default_kv_pool(limit, info.weight_bytes)
        }
    };
    let context = args
        .context_length
        .map_or(info.context_length, |c| c.min(info.context_length));
    let one_context = info.kv_bytes_per_token.saturating_mul(context as u64);
    if kv_pool_bytes < one_context {
        tracing::warn!(
            kv_pool_bytes,
            one_context,
            "the KV pool cannot hold one full-context sequence"
        );
    }
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| info.name.clone());
    let config = ServerConfig {
        host: args.host,
        port: args.port,
        served_model_name: name,
        quantization: quant_name(args.quantization).into(),
        device: device_name(args.device).into(),
        max_context: args.context_length,
        scheduler: SchedulerConfig {
            max_running: args.max_running.max(1),
            max_waiting: args.max_waiting,
            max_waiting_tokens: args.max_waiting_tokens,
            max_batch_tokens: args.max_batch_tokens.max(1),
            itl_target: args.itl_target,
            kv_pool_bytes,
            prefix_cache_entries: args.prefix_cache_entries,
        },
    };
    tracing::info!(
        weight_bytes = info.weight_bytes,
        kv_pool_bytes,
        kv_bytes_per_token = info.kv_bytes_per_token,
        "memory"
    );
    tracing::info!(?config, "starting");
    let codec: Arc<dyn TextCodec> = loaded.tokenizer;
    let server = crate::server::start(loaded.forward, codec, config).await?;
    if let Some(q) = quality {
        tracing::info!(
            reference = %q.reference,
            ppl_increase = q.ppl_increase,
            kl = q.kl,
            top1_disagreement = q.top1_disagreement,
            tokens = q.tokens,
            "measured quality loss"
        );
        let m = server.metrics();
        m.set_quality_loss(
            &q.reference,
            bitscale_api::telemetry::PPL_INCREASE,
            q.ppl_increase,
        );
        m.set_quality_loss(&q.reference, "kl", q.kl);
        m.set_quality_loss(&q.reference, "top1_disagreement", q.top1_disagreement);
    }
    shutdown_signal().await;
    tracing::info!(grace = ?args.grace_period, inflight = server.inflight(), "draining");
    let clean = server.drain(args.grace_period).await?;
    tracing::info!(clean, "stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
