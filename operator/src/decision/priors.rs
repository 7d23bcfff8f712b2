//! Priors: what the operator assumes before a variant has been measured.

use bitscale_api::v1alpha1::{Device, QuantLevel};

/// Relative perplexity increase of each level against unquantized weights.
///
/// Source: the absolute perplexity increases llama.cpp publishes in
/// `tools/quantize/quantize.cpp` (`QUANT_OPTIONS`, measured on Llama-3-8B, wikitext-2), divided
/// by an F16 perplexity of 6.23 for that model. These are estimates: the F16 baseline is
/// approximate, our `q4_k`/`q5_k`/`q3_k` are uniform k-quants while the table's figures are for
/// the `_M` mixes, and small models lose more than 8B ones. f16 and bf16 use llama.cpp's
/// Mistral-7B figures (+0.0020 and −0.0050, taken as 0). Once the engine's `eval` has measured a
/// variant, the measurement replaces this table. Measured on SmolLM2-135M (`engine/QUALITY.md`),
/// a small model loses several times more per level than these figures; they are a lower bound.
pub fn quality_loss_prior(level: QuantLevel) -> f64 {
    const F16_PPL: f64 = 6.23;
    let delta_ppl = match level {
        QuantLevel::F32 | QuantLevel::Bf16 => 0.0,
        QuantLevel::F16 => 0.0020,
        QuantLevel::Q8_0 => 0.0026,
        QuantLevel::Q6K => 0.0217,
        QuantLevel::Q5K => 0.0569, // Q5_K_M
        QuantLevel::Q5_1 => 0.1062,
        QuantLevel::Q5_0 => 0.1316,
        QuantLevel::Q4K => 0.1754, // Q4_K_M
        QuantLevel::Q4_1 => 0.4511,
        QuantLevel::Q4_0 => 0.4685,
        QuantLevel::Q3K => 0.6569, // Q3_K_M
        QuantLevel::Q2K => 3.5199,
    };
    delta_ppl / F16_PPL
}

/// Default quality budget when the spec sets none: 5% relative perplexity increase.
pub const DEFAULT_MAX_QUALITY_LOSS: f64 = 0.05;

/// Fraction of a replica's capacity the plan fills, leaving headroom for bursts.
///
/// The capacity priors are calibrated against closed-loop clients, which wait for an answer before
/// asking again and so never arrive in bursts. Measured (BENCHMARKS.md, "Capacity at an SLO:
/// closed loop against open loop"): SmolLM2 q4_k on 2 vCPUs, SLO p95 TTFT 1 s and ITL 100 ms,
/// 512 tokens per step — Poisson arrivals met the SLO up to 0.67 of the closed-loop capacity.
pub const TARGET_UTILISATION: f64 = 0.7;

/// How much of a HardwareClass's nominal figures the engine achieves, per device.
///
/// Calibrated on CPU against the engine with the prefix cache off (the estimates assume no cache
/// hits), 2026-11-24 06:40 UTC (session 6 kernels, f16 KV cache): 2 vCPU AMD EPYC Milan, 2 threads,
/// 143 MB of q8_0 weights, 33-token prompts, 64 generated tokens; `bitscale-engine serve
/// --prefix-cache-entries 0`, `bitscale-engine bench --concurrency 1,8 --prompt-tokens 32
/// --max-tokens 64 --duration 15s` (BENCHMARKS.md, "Operator priors re-fitted, session 6"). The
/// class figure for this machine is the read bandwidth measured with 2 threads just before and
/// after, 28.9 GB/s, and 2 × [`CPU_FLOPS_PER_THREAD`]:
/// - decode at batch 1 took 5.21 ms per token (ITL p50), 27.5 GB/s of weights streamed:
///   `bandwidth` ≈ 0.95 (0.85 with the session-4 kernels);
/// - 8 streams took 12.45 ms per step, 2.4× batch 1: the kernels read each weight block once per
///   step, but the integer work grows with the rows, so `1 + 7 · (1 − weight_reuse)` = 2.4 gives
///   `weight_reuse` ≈ 0.8;
/// - 33 prompt tokens took ~33 ms to prefill (TTFT p50 37.8 ms less one decode step), ~270 GFLOP/s
///   against the 2 × 100 GFLOP/s prior: `compute` = 1.2 (f16 prefills slower than the integer
///   levels).
///
/// With these, the estimates for that run stay within 20 % of the measured 171 tok/s at 1 stream
/// and 473 at 8 (`calibration_matches_the_measured_engine`). CUDA has not been measured (no GPU
/// here): its figures are assumptions, weight reuse as in any batched GPU matmul. Re-calibrate when
/// the engine's kernels change and once per-variant measurements replace these priors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Efficiency {
    /// Fraction of the nominal memory bandwidth a decode step achieves.
    pub bandwidth: f64,
    /// Fraction of the nominal compute a prefill achieves.
    pub compute: f64,
    /// Fraction of the weight reads that sequences decoded together share: 1 streams the weights
    /// once per step whatever the batch, 0 once per sequence.
    pub weight_reuse: f64,
}

/// The engine's efficiency on `device`.
pub fn efficiency(device: Device) -> Efficiency {
    match device {
        Device::Cpu => Efficiency {
            bandwidth: 0.95,
            compute: 1.2,
            weight_reuse: 0.8,
        },
        Device::Cuda => Efficiency {
            bandwidth: 0.6,
            compute: 0.4,
            weight_reuse: 0.9,
        },
    }
}

/// Fixed memory per replica besides weights and KV: runtime, tokenizer, buffers.
pub const OVERHEAD_BYTES: f64 = 256.0 * 1024.0 * 1024.0;

/// Activations and scratch space, as a fraction of the weight bytes.
pub const SCRATCH_FRACTION: f64 = 0.1;

/// Tokens an engine step carries by default (`serve --max-batch-tokens`): the running streams'
/// decode tokens plus chunks of waiting prompts.
pub const ENGINE_STEP_TOKENS: i32 = 512;

/// Default engine batch (sequences decoded together).
pub const DEFAULT_MAX_RUNNING: i32 = 8;

/// Default prompt length for the time-to-first-token and capacity estimates.
pub const DEFAULT_PROMPT_TOKENS: i32 = 256;

/// Default number of tokens generated per request, for the capacity estimate (each request
/// also costs one prefill).
pub const DEFAULT_COMPLETION_TOKENS: i32 = 256;

/// Compute of one CPU thread when a class sets no `peakFlops`: an AVX2 + FMA core at ~3 GHz peaks
/// near 100 GFLOP/s in f32, and the engine's int8 dot products (two `maddubs` + `madd` per cycle)
/// reach that on quantized levels.
pub const CPU_FLOPS_PER_THREAD: f64 = 100e9;

/// Compute of one GPU when a class sets no `peakFlops`.
pub const GPU_FLOPS: f64 = 20e12;

/// KV cache bytes per token, stored as f16.
///
/// The architecture is not known before the file is read, so this scales with the parameter
/// count: Llama-3-8B (32 layers × 8 KV heads × 128 dims × K and V × 2 bytes = 128 KiB/token) sets
/// the slope, and a floor of 24 KiB covers small grouped-query models such as SmolLM2-135M
/// (30 × 3 × 64 × 2 × 2 = 22.5 KiB).
pub fn kv_bytes_per_token(parameters: f64) -> f64 {
    (parameters * 131_072.0 / 8.0e9).max(24.0 * 1024.0)
}

/// Parses a parameter count such as "135M", "1.7B", "8000000000".
pub fn parse_parameters(value: &str) -> Option<f64> {
    let value = value.trim();
    let (number, multiplier) = match value.chars().last()? {
        'K' => (&value[..value.len() - 1], 1e3),
        'M' => (&value[..value.len() - 1], 1e6),
        'B' => (&value[..value.len() - 1], 1e9),
        'T' => (&value[..value.len() - 1], 1e12),
        _ => (value, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * multiplier)
        .filter(|n| *n > 0.0)
}

/// Reads a parameter count from a model's name in its source, as model names usually carry one
/// ("SmolLM2-135M-Instruct", "Llama-3.1-8B", "qwen2.5-0.5b-instruct-q8_0.gguf"). Looks at the
/// file name first, then the rest of the path; returns the count and the word it came from.
/// Mixture-of-experts names ("8x7B") and context sizes ("4k") are not counts and are skipped.
pub fn parameters_from_source(source: &str) -> Option<(f64, String)> {
    let path = source.split_once("://").map_or(source, |(_, rest)| rest);
    // Dots stay inside words: they are decimal points in "0.5b" and "3.1".
    path.rsplit('/').find_map(|segment| {
        segment.split(['-', '_', '@']).find_map(|word| {
            let (number, multiplier) = match word.chars().last()? {
                'M' | 'm' => (&word[..word.len() - 1], 1e6),
                'B' | 'b' => (&word[..word.len() - 1], 1e9),
                _ => return None,
            };
            if !number.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            let count = number.parse::<f64>().ok().filter(|n| *n > 0.0)? * multiplier;
            Some((count, word.to_owned()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_prior_grows_as_bits_shrink_among_k_quants() {
        let order = [
            QuantLevel::Q8_0,
            QuantLevel::Q6K,
            QuantLevel::Q5K,
            QuantLevel::Q4K,
            QuantLevel::Q3K,
            QuantLevel::Q2K,
        ];
        for pair in order.windows(2) {
            assert!(
                quality_loss_prior(pair[0]) < quality_loss_prior(pair[1]),
                "{pair:?}"
            );
        }
        assert!(quality_loss_prior(QuantLevel::Q8_0) < 0.001);
        assert!(quality_loss_prior(QuantLevel::Q2K) > 0.5);
    }

    #[test]
    fn parameter_counts_parse() {
        assert_eq!(parse_parameters("135M"), Some(135e6));
        assert_eq!(parse_parameters("1.7B"), Some(1.7e9));
        assert_eq!(parse_parameters("8000"), Some(8000.0));
        assert_eq!(parse_parameters("0"), None);
        assert_eq!(parse_parameters("lots"), None);
    }

    #[test]
    fn parameter_counts_come_from_model_names() {
        let from = parameters_from_source;
        assert_eq!(
            from("hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@main/smollm2-135m-instruct-q8_0.gguf"),
            Some((135e6, "135m".to_owned()))
        );
        assert_eq!(
            from("https://example.com/models/llama-2-7b-chat.Q4_K_M.gguf"),
            Some((7e9, "7b".to_owned()))
        );
        assert_eq!(
            from("pvc://models/qwen2.5-0.5b-instruct-q8_0.gguf"),
            Some((0.5e9, "0.5b".to_owned()))
        );
        // The repository names it when the file does not.
        assert_eq!(
            from("hf://meta-llama/Llama-3.1-8B-Instruct@main/model.safetensors"),
            Some((8e9, "8B".to_owned()))
        );
        assert_eq!(from("file:///models/model.gguf"), None);
        assert_eq!(from("hf://org/Mixtral-8x7B@main/mixtral.gguf"), None);
        assert_eq!(from("file:///models/phi-3-mini-4k.gguf"), None);
    }

    #[test]
    fn kv_prior_matches_llama3_8b_and_floors_for_small_models() {
        assert_eq!(kv_bytes_per_token(8.0e9), 131_072.0);
        assert_eq!(kv_bytes_per_token(135e6), 24.0 * 1024.0);
    }
}
