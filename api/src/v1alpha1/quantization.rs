//! Quantization levels the engine can serve.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A quantization level of the model weights, named as in GGML/GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
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

impl std::str::FromStr for QuantLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown quantization level {s:?}"))
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
}
