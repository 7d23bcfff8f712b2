//! Offline requantization: a GGUF file or Hugging Face folder → a GGUF file at a [`QuantLevel`], with the same per-tensor
//! dtypes the loader would give it, so the file serves as-is in the engine and in llama.cpp.
//!
//! Metadata (architecture, hyperparameters, tokenizer, chat template) is copied unchanged apart from
//! `general.file_type`; tensor layout is kept too (GGUF Q/K rows are already in llama.cpp's permuted
//! order, so nothing is un-permuted).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use super::convert_hf::hf_metadata;
use super::loader::{head_dtype, hf_as_gguf, native_dtype};
use super::quant::LevelDtype;
use super::quant::dtype_for_row;
use super::{ModelError, QuantLevel};

/// What [`quantize_model`] wrote.
#[derive(Debug, Clone)]
pub struct QuantizeSummary {
    pub out: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Tensor count per dtype name (`Q8_0`, `F32`, …).
    pub mix: BTreeMap<String, usize>,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
    /// Bytes of weights one decoded token reads: every tensor, but the embedding only when it is
    /// also the output head (tied); otherwise a lookup reads just one of its rows.
    pub bytes_per_token: u64,
}

/// The dtype the engine gives tensor `name` of shape `dims` at `level`: the loader's rule.
///
/// Matrices get [`dtype_for_row`] (K-quants fall back on rows that are not a multiple of 256, as in
/// llama.cpp); the embedding and output head get the loader's head dtype; vectors (norms, RoPE
/// factors) stay f32.
pub(crate) fn target_dtype(level: QuantLevel, name: &str, dims: &[usize]) -> GgmlDType {
    let Some(&cols) = dims.last().filter(|_| dims.len() >= 2) else {
        return GgmlDType::F32;
    };
    match name {
        "token_embd.weight" | "output.weight" => head_dtype(level, cols),
        _ => dtype_for_row(level, cols),
    }
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a level; K-quants name their `_M` mix.
fn llama_ftype(level: QuantLevel) -> u32 {
    match level {
        QuantLevel::F32 => 0,
        QuantLevel::F16 => 1,
        QuantLevel::Q4_0 => 2,
        QuantLevel::Q4_1 => 3,
        QuantLevel::Q8_0 => 7,
        QuantLevel::Q5_0 => 8,
        QuantLevel::Q5_1 => 9,
        QuantLevel::Q2K => 10,
        QuantLevel::Q3K => 12,
        QuantLevel::Q4K => 15,
        QuantLevel::Q5K => 17,
        QuantLevel::Q6K => 18,
        QuantLevel::Bf16 => 32,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Requantizes the model at `input` (a GGUF file, or a Hugging Face folder with a byte-level BPE
/// tokenizer) to `level` and writes it as GGUF to `out` (through a temporary file beside it, so a
/// failed run leaves no partial file).
///
/// As in the loader, a tensor already at its target dtype is copied byte for byte, and when `level`
/// is a GGUF file's own level its quantized tensors are kept as shipped.
pub fn quantize_model(input: &Path, level: QuantLevel, out: &Path) -> anyhow::Result<QuantizeSummary> {
    let (metadata, sources, keep_native) = if input.is_dir() {
        read_hf(input)?
    } else {
        read_gguf(input, level)?
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(sources.len());
    let mut mix = BTreeMap::new();
    let mut tensor_bytes = 0u64;
    for (name, q) in sources {
        let target = target_dtype(level, &name, q.shape().dims());
        let is_float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let keep = q.dtype() == target || (keep_native && !is_float && q.shape().rank() >= 2);
        let q = if keep {
            q
        } else {
            QTensor::quantize(&q.dequantize(&Device::Cpu)?, target)?
        };
        *mix.entry(format!("{:?}", q.dtype())).or_default() += 1;
        tensor_bytes += q.storage_size_in_bytes() as u64;
        tensors.push((name, q));
    }
    let untied_embedding = tensors
        .iter()
        .any(|(n, _)| n == "output.weight")
        .then(|| tensors.iter().find(|(n, _)| n == "token_embd.weight"))
        .flatten()
        .map_or(0, |(_, q)| q.storage_size_in_bytes() as u64);
    let mut metadata: Vec<(String, Value)> = metadata
        .into_iter()
        // candle's writer always aligns to 32 bytes, the GGUF default.
        .filter(|(k, _)| k != "general.alignment" && k != "general.file_type")
        .collect();
    metadata.push(("general.file_type".into(), Value::U32(llama_ftype(level))));
    // `general.architecture` first, as llama.cpp's own writer does; the rest in key order.
    metadata.sort_by(|(a, _), (b, _)| {
        (a != "general.architecture", a.as_str()).cmp(&(b != "general.architecture", b.as_str()))
    });

    let tmp = out.with_extension("gguf.partial");
    let result = (|| -> anyhow::Result<()> {
        let mut w = BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &md, &ts)?;
        w.flush().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, out).map_err(io_err(out))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(QuantizeSummary {
        out: out.to_owned(),
        tensors: tensors.len(),
        mix,
        tensor_bytes,
        bytes_per_token: tensor_bytes - untied_embedding,
    })
}

type Read = (Vec<(String, Value)>, Vec<(String, QTensor)>, bool);

/// A GGUF file's metadata and tensors (in file order), and whether its own level is `level`.
fn read_gguf(input: &Path, level: QuantLevel) -> anyhow::Result<Read> {
    let mut file = BufReader::new(File::open(input).map_err(io_err(input))?);
    let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::Corrupt {
        path: input.to_owned(),
        reason: e.to_string(),
    })?;
    let keep_native = native_dtype(&content) == Some(level.dtype());
    let mut infos: Vec<_> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, info)| info.offset);
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, info) in infos {
        let q = info
            .read(&mut file, content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| ModelError::Corrupt {
                path: input.to_owned(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        tensors.push((name.clone(), q));
    }
    Ok((content.metadata.into_iter().collect(), tensors, keep_native))
}

/// A Hugging Face folder as GGUF metadata and f32 tensors in GGUF names and layout.
fn read_hf(dir: &Path) -> anyhow::Result<Read> {
    let (cfg, floats) = hf_as_gguf(dir)?;
    let metadata = hf_metadata(dir, &cfg)?;
    let mut tensors = Vec::with_capacity(floats.len() + 1);
    if let Some(f) = &cfg.rope_freq_factors {
        let t = candle_core::Tensor::new(f.as_slice(), &Device::Cpu)?;
        tensors.push((
            "rope_freqs.weight".to_owned(),
            QTensor::quantize(&t, GgmlDType::F32)?,
        ));
    }
    for (name, t) in floats {
        let q = QTensor::quantize(&t, GgmlDType::F32)?;
        tensors.push((name, q));
    }
    Ok((metadata, tensors, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testmodel::{TestModelSpec, write_test_model};

    #[test]
    fn file_dtypes_follow_the_loaders_rule() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = TestModelSpec {
            ffn: 256,
            ..TestModelSpec::default()
        };
        let files = write_test_model(dir.path(), &spec).expect("test model");
        for level in [QuantLevel::Q8_0, QuantLevel::Q4K, QuantLevel::F16] {
            let out = dir.path().join(format!("m.{level}.gguf"));
            quantize_model(&files.gguf, level, &out).expect("quantize");
            let mut f = BufReader::new(File::open(&out).expect("open"));
            let c = gguf_file::Content::read(&mut f).expect("read back");
            assert_eq!(
                c.metadata["general.architecture"].to_string().expect("arch"),
                "llama"
            );
            assert!(c.metadata.contains_key("tokenizer.chat_template"));
            for (name, info) in &c.tensor_infos {
                let dims = info.shape.dims();
                let want = if dims.len() == 1 {
                    GgmlDType::F32
                } else if name.starts_with("token_embd") || name.starts_with("output.") {
                    head_dtype(level, dims[1])
                } else {
                    dtype_for_row(level, dims[1])
                };
                assert_eq!(info.ggml_dtype, want, "{level} {name} {dims:?}");
            }
        }
        // Width 64 is no multiple of 256: Q4_K falls back to Q5_0; the 256-wide FFN-down stays Q4_K.
        assert_eq!(dtype_for_row(QuantLevel::Q4K, 64), GgmlDType::Q5_0);
        assert_eq!(dtype_for_row(QuantLevel::Q4K, 256), GgmlDType::Q4K);
    }
}
