//! Quantization levels: names, parsing, and the candle dtype behind each.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

use super::{ModelError, QuantLevel};

impl QuantLevel {
    /// Every level, from largest to smallest.
    pub const ALL: [QuantLevel; 13] = [
        QuantLevel::F32,
        QuantLevel::F16,
        QuantLevel::Bf16,
        QuantLevel::Q8_0,
        QuantLevel::Q6K,
        QuantLevel::Q5K,
        QuantLevel::Q5_1,
        QuantLevel::Q5_0,
        QuantLevel::Q4K,
        QuantLevel::Q4_1,
        QuantLevel::Q4_0,
        QuantLevel::Q3K,
        QuantLevel::Q2K,
    ];

    /// The level's name as used on the command line and in the CRD (`q4_k`, `f16`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            QuantLevel::F32 => "f32",
            QuantLevel::F16 => "f16",
            QuantLevel::Bf16 => "bf16",
            QuantLevel::Q8_0 => "q8_0",
            QuantLevel::Q6K => "q6_k",
            QuantLevel::Q5K => "q5_k",
            QuantLevel::Q5_0 => "q5_0",
            QuantLevel::Q5_1 => "q5_1",
            QuantLevel::Q4K => "q4_k",
            QuantLevel::Q4_0 => "q4_0",
            QuantLevel::Q4_1 => "q4_1",
            QuantLevel::Q3K => "q3_k",
            QuantLevel::Q2K => "q2_k",
        }
    }

    /// The candle dtype of weight matrices at this level.
    pub fn dtype(self) -> GgmlDType {
        match self {
            QuantLevel::F32 => GgmlDType::F32,
            QuantLevel::F16 => GgmlDType::F16,
            QuantLevel::Bf16 => GgmlDType::BF16,
            QuantLevel::Q8_0 => GgmlDType::Q8_0,
            QuantLevel::Q6K => GgmlDType::Q6K,
            QuantLevel::Q5K => GgmlDType::Q5K,
            QuantLevel::Q5_0 => GgmlDType::Q5_0,
            QuantLevel::Q5_1 => GgmlDType::Q5_1,
            QuantLevel::Q4K => GgmlDType::Q4K,
            QuantLevel::Q4_0 => GgmlDType::Q4_0,
            QuantLevel::Q4_1 => GgmlDType::Q4_1,
            QuantLevel::Q3K => GgmlDType::Q3K,
            QuantLevel::Q2K => GgmlDType::Q2K,
        }
    }

    /// The level whose dtype is `dtype`, if any (Q8_1 and Q8K are not serving levels).
    pub fn from_dtype(dtype: GgmlDType) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.dtype() == dtype)
    }

    /// Whether the level stores plain floats (no blocks).
    pub fn is_float(self) -> bool {
        matches!(self, QuantLevel::F32 | QuantLevel::F16 | QuantLevel::Bf16)
    }
}

impl fmt::Display for QuantLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuantLevel {
    type Err = ModelError;

    /// Parses `q4_k`, `Q4_K`, `q4k`, `q4_k_m` (treated as `q4_k`), `fp16`, … .
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect();
        let norm = norm
            .strip_suffix('m')
            .filter(|n| n.ends_with('k'))
            .unwrap_or(&norm);
        let level = match norm {
            "f32" | "fp32" | "float32" => QuantLevel::F32,
            "f16" | "fp16" | "float16" => QuantLevel::F16,
            "bf16" | "bfloat16" => QuantLevel::Bf16,
            "q80" => QuantLevel::Q8_0,
            "q6k" => QuantLevel::Q6K,
            "q5k" => QuantLevel::Q5K,
            "q50" => QuantLevel::Q5_0,
            "q51" => QuantLevel::Q5_1,
            "q4k" => QuantLevel::Q4K,
            "q40" => QuantLevel::Q4_0,
            "q41" => QuantLevel::Q4_1,
            "q3k" => QuantLevel::Q3K,
            "q2k" => QuantLevel::Q2K,
            _ => return Err(ModelError::UnknownQuantLevel(s.to_owned())),
        };
        Ok(level)
    }
}

/// The dtype a weight matrix with rows of `row_len` elements gets at `level`.
///
/// K-quants need rows that are a multiple of 256 (other blocks: 32). Like llama.cpp's
/// `llama_tensor_get_type` fallback, a K-quant that does not fit becomes the nearest legacy
/// quant of similar quality (see the table in the body), and anything that
/// still does not fit stays f16.
pub(crate) fn dtype_for_row(level: QuantLevel, row_len: usize) -> GgmlDType {
    let want = level.dtype();
    if row_len.is_multiple_of(want.block_size()) {
        return want;
    }
    // llama.cpp: Q2_K/Q3_K → IQ4_NL (we have no IQ; Q4_0 is its layout twin), Q4_K → Q5_0,
    // Q5_K → Q5_1, Q6_K → Q8_0.
    let fallback = match level {
        QuantLevel::Q2K | QuantLevel::Q3K => GgmlDType::Q4_0,
        QuantLevel::Q4K => GgmlDType::Q5_0,
        QuantLevel::Q5K => GgmlDType::Q5_1,
        _ => GgmlDType::Q8_0,
    };
    if row_len.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlDType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for l in QuantLevel::ALL {
            assert_eq!(l.as_str().parse::<QuantLevel>().expect("parse"), l);
        }
        assert_eq!("Q4_K_M".parse::<QuantLevel>().expect("parse"), QuantLevel::Q4K);
        assert!("q7".parse::<QuantLevel>().is_err());
    }

    #[test]
    fn k_quants_fall_back_on_short_rows() {
        assert_eq!(dtype_for_row(QuantLevel::Q4K, 576), GgmlDType::Q5_0);
        assert_eq!(dtype_for_row(QuantLevel::Q4K, 1536), GgmlDType::Q4K);
        assert_eq!(dtype_for_row(QuantLevel::Q6K, 576), GgmlDType::Q8_0);
        assert_eq!(dtype_for_row(QuantLevel::Q8_0, 20), GgmlDType::F16);
    }
}
