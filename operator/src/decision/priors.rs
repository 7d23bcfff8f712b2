//! Priors: what the operator assumes before a variant has been measured.

use bitscale_api::v1alpha1::QuantLevel;

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
pub const TARGET_UTILISATION: f64 = 0.7;

/// Fraction of the nominal memory bandwidth a decode step achieves (roofline efficiency).
pub const BANDWIDTH_EFFICIENCY: f64 = 0.6;

/// Fraction of the nominal compute a prefill achieves.
pub const COMPUTE_EFFICIENCY: f64 = 0.4;

/// Fixed memory per replica besides weights and KV: runtime, tokenizer, buffers.
pub const OVERHEAD_BYTES: f64 = 256.0 * 1024.0 * 1024.0;

/// Activations and scratch space, as a fraction of the weight bytes.
pub const SCRATCH_FRACTION: f64 = 0.1;

/// Default engine batch (sequences decoded together).
pub const DEFAULT_MAX_RUNNING: i32 = 8;

/// Default prompt length for the time-to-first-token estimate.
pub const DEFAULT_PROMPT_TOKENS: i32 = 256;

/// Compute of one CPU thread when a class sets no `peakFlops`.
pub const CPU_FLOPS_PER_THREAD: f64 = 50e9;

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
    fn kv_prior_matches_llama3_8b_and_floors_for_small_models() {
        assert_eq!(kv_bytes_per_token(8.0e9), 131_072.0);
        assert_eq!(kv_bytes_per_token(135e6), 24.0 * 1024.0);
    }
}
