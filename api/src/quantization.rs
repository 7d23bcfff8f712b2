//! Quantization levels: the one definition the CRD, the operator and the engine share.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A quantization level of the model weights, named as in GGML/GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum QuantLevel {
    /// 32-bit floats.
    #[serde(rename = "f32")]
    F32,
    /// 16-bit brain floats.
    #[serde(rename = "bf16")]
    Bf16,
    /// 16-bit IEEE floats.
    #[serde(rename = "f16")]
    F16,
    /// 8-bit blocks of 32 with one scale (8.5 bits per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 6-bit k-quant (6.5625 bits per weight).
    #[serde(rename = "q6_k")]
    Q6K,
    /// 5-bit k-quant (5.5 bits per weight).
    #[serde(rename = "q5_k")]
    Q5K,
    /// 5-bit blocks with a scale (5.5 bits per weight).
    #[serde(rename = "q5_0")]
    Q5_0,
    /// 5-bit blocks with a scale and a minimum (6 bits per weight).
    #[serde(rename = "q5_1")]
    Q5_1,
    /// 4-bit k-quant (4.5 bits per weight).
    #[serde(rename = "q4_k")]
    Q4K,
    /// 4-bit blocks with a scale (4.5 bits per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit blocks with a scale and a minimum (5 bits per weight).
    #[serde(rename = "q4_1")]
    Q4_1,
    /// 3-bit k-quant (3.4375 bits per weight).
    #[serde(rename = "q3_k")]
    Q3K,
    /// 2-bit k-quant (2.625 bits per weight).
    #[serde(rename = "q2_k")]
    Q2K,
}

impl QuantLevel {
    /// Every level, from the largest to the smallest.
    pub const ALL: [QuantLevel; 13] = [
        Self::F32,
        Self::Bf16,
        Self::F16,
        Self::Q8_0,
        Self::Q6K,
        Self::Q5_1,
        Self::Q5K,
        Self::Q5_0,
        Self::Q4_1,
        Self::Q4K,
        Self::Q4_0,
        Self::Q3K,
        Self::Q2K,
    ];

    /// The name used in manifests, GGUF tooling and the engine's `--quantization` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q6K => "q6_k",
            Self::Q5K => "q5_k",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q4K => "q4_k",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q3K => "q3_k",
            Self::Q2K => "q2_k",
        }
    }

    /// Storage cost in bits per weight, from the GGML block layouts (block bytes × 8 / block size).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::F32 => 32.0,
            Self::Bf16 | Self::F16 => 16.0,
            Self::Q8_0 => 8.5,   // 34 bytes / 32 weights
            Self::Q6K => 6.5625, // 210 bytes / 256
            Self::Q5_1 => 6.0,   // 24 / 32
            Self::Q5K => 5.5,    // 176 / 256
            Self::Q5_0 => 5.5,   // 22 / 32
            Self::Q4_1 => 5.0,   // 20 / 32
            Self::Q4K => 4.5,    // 144 / 256
            Self::Q4_0 => 4.5,   // 18 / 32
            Self::Q3K => 3.4375, // 110 / 256
            Self::Q2K => 2.625,  // 84 / 256
        }
    }
}

impl fmt::Display for QuantLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no quantization level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownQuantLevel(pub String);

impl fmt::Display for UnknownQuantLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown quantization level {:?} (one of: {})",
            self.0,
            QuantLevel::ALL.map(QuantLevel::as_str).join(", ")
        )
    }
}

impl std::error::Error for UnknownQuantLevel {}

impl std::str::FromStr for QuantLevel {
    type Err = UnknownQuantLevel;

    /// Parses the canonical names and the spellings tools use for them: any case, with or
    /// without `_`/`-` (`Q4_K`, `q4k`), llama.cpp's `_M`/`_S` mixes as their k-quant (`q4_k_m`
    /// is `q4_k`), and `fp16`, `float32`, `bfloat16`. Manifests use the canonical names only
    /// (the CRD's enum).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect();
        let norm = norm
            .strip_suffix(['m', 's'])
            .filter(|n| n.ends_with('k'))
            .unwrap_or(&norm);
        let level = match norm {
            "f32" | "fp32" | "float32" => Self::F32,
            "f16" | "fp16" | "float16" => Self::F16,
            "bf16" | "bfloat16" => Self::Bf16,
            "q80" => Self::Q8_0,
            "q6k" => Self::Q6K,
            "q5k" => Self::Q5K,
            "q50" => Self::Q5_0,
            "q51" => Self::Q5_1,
            "q4k" => Self::Q4K,
            "q40" => Self::Q4_0,
            "q41" => Self::Q4_1,
            "q3k" => Self::Q3K,
            "q2k" => Self::Q2K,
            _ => return Err(UnknownQuantLevel(s.to_owned())),
        };
        Ok(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for level in QuantLevel::ALL {
            let json = serde_json::to_string(&level).expect("serializes");
            assert_eq!(json, format!("\"{}\"", level.as_str()));
            assert_eq!(level.as_str().parse::<QuantLevel>(), Ok(level));
        }
    }

    #[test]
    fn tool_spellings_parse_and_nonsense_says_what_is_allowed() {
        for (name, level) in [
            ("Q4_K_M", QuantLevel::Q4K),
            ("q4k", QuantLevel::Q4K),
            ("Q3_K_S", QuantLevel::Q3K),
            ("fp16", QuantLevel::F16),
            ("BF16", QuantLevel::Bf16),
            ("q8-0", QuantLevel::Q8_0),
        ] {
            assert_eq!(name.parse::<QuantLevel>(), Ok(level), "{name}");
        }
        let error = "q9_9".parse::<QuantLevel>().expect_err("not a level");
        assert!(
            error.to_string().contains("\"q9_9\"") && error.to_string().contains("q4_k"),
            "{error}"
        );
    }
}
