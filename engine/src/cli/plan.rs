//! `bitscale-engine plan`: the memory a replica needs for a model at a level, a context length and
//! a concurrency, from the model file's header alone.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::serve::parse_quant;
use crate::model::{ModelHeader, QuantLevel};

/// Resident memory of a serving process besides weights, KV, step buffers and the tokenizer: the
/// binary, runtime, allocator arenas, HTTP server and thread stacks. Measured with
/// `scripts/rss-vs-plan` on the generated test model (vocabulary 300, 0.1–0.4 MiB of weights,
/// under 1 MiB of KV and step buffers at 8 streams): 11 MiB idle, 14 MiB peak after serving 8
/// streams with 2 threads and 15 MiB with 16 (malloc arenas capped, see
/// `model::cap_malloc_arenas`), at every level but f32 (BENCHMARKS.md, "`plan` and the thread
/// count").
pub const RUNTIME_BASE_BYTES: u64 = 16 << 20;

/// Resident bytes per vocabulary entry: the tokenizer's vocabulary, merge and decode tables.
/// Measured: SmolLM2-135M (vocabulary 49,152) idles at 27–33 MiB above its resident weights at
/// every level once the load's freed buffers are trimmed, 11 MiB of which is the base above:
/// 16–22 MiB, about 400 bytes per entry.
pub const BYTES_PER_VOCAB_ENTRY: u64 = 400;

/// Headroom above the sum of the measured terms, in parts per hundred. The peak RSS of real
/// `serve` processes sits within about ±2 % of that sum (f16 and bf16 exactly on it: allocator
/// caching varies with traffic), and exceeding a pod's memory limit kills the pod, so the plan
/// keeps 5 % more.
pub const HEADROOM_PERCENT: u64 = 5;

/// Flags of `plan`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// A GGUF file or a Hugging Face model folder (only its header is read).
    #[arg(long)]
    pub model: PathBuf,
    /// Quantization level the replica serves.
    #[arg(long, value_parser = parse_quant, default_value = "q8_0")]
    pub level: QuantLevel,
    /// Longest sequence (prompt + generated) each stream reaches (default: the model's context).
    #[arg(long)]
    pub context: Option<usize>,
    /// Sequences in flight at once (`serve --max-running`).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Tokens per engine step (`serve --max-batch-tokens`).
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
}

/// What `plan` prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryPlan {
    pub level: String,
    pub context: usize,
    pub concurrency: usize,
    /// Weights as the engine holds them on CPU (packed layouts, candle's repacked K-quant copy):
    /// the `bitscale_engine_weight_bytes` gauge of the loaded model.
    pub weight_bytes: u64,
    pub kv_bytes_per_token: u64,
    /// KV of `concurrency` sequences at `context`, as allocated (a sequence's cache is reserved
    /// whole at admission; kept prefixes share the same pool).
    pub kv_bytes: u64,
    /// Activations of one full step, plus logits of every running sequence (three copies).
    pub step_bytes: u64,
    /// `RUNTIME_BASE_BYTES` + `BYTES_PER_VOCAB_ENTRY` × vocabulary.
    pub runtime_overhead_bytes: u64,
    /// `HEADROOM_PERCENT` of the terms above.
    pub headroom_bytes: u64,
    /// The sum: what a pod's memory limit should be at least.
    pub total_bytes: u64,
    /// `total_bytes` in MiB, rounded up.
    pub total_mib: u64,
}

/// The plan for `header` at `level`.
pub fn plan(
    header: &ModelHeader,
    level: QuantLevel,
    context: Option<usize>,
    concurrency: usize,
    max_batch_tokens: usize,
) -> MemoryPlan {
    let context = context.map_or(header.context_length, |c| c.min(header.context_length));
    let weight_bytes = header.weight_bytes(level);
    // A sequence's cache is reserved whole at admission (`prompt + max_tokens`, at most the
    // context) and kept prefixes are compacted, so it holds exactly its positions.
    let per_seq = header.kv_bytes_per_token * context as u64;
    let kv_bytes = per_seq * concurrency as u64;
    // Per row of a step, f32, at the larger of the two peaks: in the feed-forward half the
    // residual and its norm, gate|up twice and the SwiGLU product; in the attention half the
    // residual, its norm, QKV twice and the attention output.
    // The FFN is usually the larger: 2.7 × hidden wide in SmolLM2 and Llama 2.
    let (h, ffn, kv) = (header.hidden, header.ffn, header.kv_dim);
    let per_row = 4 * (2 * h + 5 * ffn).max(5 * h + 4 * kv) as u64;
    // Logits of every running sequence three times: the head's output, each sequence's copy of
    // its row, and the sampler's candidates.
    let step_bytes = per_row * max_batch_tokens as u64 + 3 * 4 * header.vocab as u64 * concurrency as u64;
    let runtime_overhead_bytes = RUNTIME_BASE_BYTES + BYTES_PER_VOCAB_ENTRY * header.vocab as u64;
    let measured = weight_bytes + kv_bytes + step_bytes + runtime_overhead_bytes;
    let headroom_bytes = measured * HEADROOM_PERCENT / 100;
    let total_bytes = measured + headroom_bytes;
    MemoryPlan {
        level: level.to_string(),
        context,
        concurrency,
        weight_bytes,
        kv_bytes_per_token: header.kv_bytes_per_token,
        kv_bytes,
        step_bytes,
        runtime_overhead_bytes,
        headroom_bytes,
        total_bytes,
        total_mib: total_bytes.div_ceil(1 << 20),
    }
}

/// Runs `plan` and prints the JSON.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let header = ModelHeader::read(&args.model)?;
    let p = plan(
        &header,
        args.level,
        args.context,
        args.concurrency.max(1),
        args.max_batch_tokens.max(1),
    );
    println!("{}", serde_json::to_string_pretty(&p)?);
    Ok(())
}
