//! Quantization levels on candle: the dtype behind each level, and the fallback for rows a k-quant does not fit.

use candle_core::quantized::GgmlDType;

use super::{ModelError, QuantLevel};

/// The candle dtype behind each level.
pub trait LevelDtype: Copy {
    /// The candle dtype of weight matrices at this level.
    fn dtype(self) -> GgmlDType;
    /// The level whose dtype is `dtype`, if any (Q8_1 and Q8K are not serving levels).
    fn from_dtype(dtype: GgmlDType) -> Option<Self>;
    /// Whether the level stores plain floats (no blocks).
    fn is_float(self) -> bool;
}

impl LevelDtype for QuantLevel {
    fn dtype(self) -> GgmlDType {
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

    fn from_dtype(dtype: GgmlDType) -> Option<Self> {
        QuantLevel::ALL.into_iter().find(|l| l.dtype() == dtype)
    }

    fn is_float(self) -> bool {
        matches!(self, QuantLevel::F32 | QuantLevel::F16 | QuantLevel::Bf16)
    }
}

impl From<bitscale_api::UnknownQuantLevel> for ModelError {
    fn from(e: bitscale_api::UnknownQuantLevel) -> Self {
        ModelError::UnknownQuantLevel(e.0)
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
