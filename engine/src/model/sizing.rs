//! What a model file holds, read from its header alone (no weights loaded): its own precision
//! and the bytes its weights take at any level, by the loader's own dtype rules.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, gguf_file};

use super::config::LlamaConfig;
use super::loader::{head_dtype, is_float};
use super::quant::dtype_for_row;
use super::{ModelError, QuantLevel};

/// A model file's shape and size facts.
#[derive(Debug, Clone)]
pub struct ModelHeader {
    /// The file's own level: the most common dtype of its matrices.
    pub source_level: QuantLevel,
    pub layers: usize,
    pub hidden: usize,
    pub kv_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    /// KV cache bytes per token of one sequence (all layers, K and V, f32 as the engine stores it).
    pub kv_bytes_per_token: u64,
    tensors: Vec<TensorHead>,
}

#[derive(Debug, Clone)]
struct TensorHead {
    name: String,
    dims: Vec<usize>,
    /// The stored dtype (floats included).
    dtype: GgmlDType,
}

impl ModelHeader {
    /// Reads a GGUF header or a Hugging Face folder's `config.json` and safetensors headers.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let io = |source| ModelError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let (cfg, tensors) = if meta.is_dir() {
            let cfg_path = path.join("config.json");
            let bytes = std::fs::read(&cfg_path).map_err(|source| ModelError::Io {
                path: cfg_path.clone(),
                source,
            })?;
            (
                LlamaConfig::from_hf_json(&cfg_path, &bytes)?,
                safetensors_heads(path)?,
            )
        } else {
            let mut f = std::fs::File::open(path).map_err(io)?;
            let content = gguf_file::Content::read(&mut f).map_err(|e| ModelError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            let cfg = LlamaConfig::from_gguf(path, &content)?;
            let tensors = content
                .tensor_infos
                .iter()
                .map(|(name, t)| TensorHead {
                    name: name.clone(),
                    dims: t.shape.dims().to_vec(),
                    dtype: t.ggml_dtype,
                })
                .collect();
            (cfg, tensors)
        };
        let mut counts: HashMap<GgmlDType, usize> = HashMap::new();
        for t in tensors.iter().filter(|t| t.dims.len() == 2) {
            *counts.entry(t.dtype).or_default() += 1;
        }
        let source_level = counts
            .into_iter()
            .max_by_key(|&(d, n)| (n, format!("{d:?}")))
            .and_then(|(d, _)| QuantLevel::from_dtype(d))
            .unwrap_or(QuantLevel::F32);
        Ok(Self {
            source_level,
            layers: cfg.layers,
            hidden: cfg.hidden,
            kv_dim: cfg.kv_dim(),
            vocab: cfg.vocab,
            context_length: cfg.context,
            kv_bytes_per_token: (cfg.layers * 2 * cfg.kv_dim() * std::mem::size_of::<f32>()) as u64,
            tensors,
        })
    }

    /// Bytes of the weights once loaded at `level`: matrices at the dtype the loader gives them
    /// (`dtype_for_row`, the head policy, the file's own mix kept at its own level), norms as f32.
    /// Equals `ModelInfo::weight_bytes` of the loaded model.
    pub fn weight_bytes(&self, level: QuantLevel) -> u64 {
        let keep_native = self.source_level == level && !level.is_float();
        let mut total = 0u64;
        for t in &self.tensors {
            let gguf_name = gguf_name(&t.name);
            let is_block_norm =
                gguf_name.ends_with("attn_norm.weight") || gguf_name.ends_with("ffn_norm.weight");
            match t.dims.as_slice() {
                [_] if is_block_norm => total += 4 * t.dims[0] as u64,
                // candle gives GGUF dims as [rows, cols], like safetensors.
                [rows, cols] if is_matrix(&gguf_name) => {
                    let (rows, cols) = (*rows, *cols);
                    let target = if gguf_name == "token_embd.weight" || gguf_name == "output.weight" {
                        head_dtype(level, self.hidden)
                    } else {
                        dtype_for_row(level, cols)
                    };
                    let dtype = if t.dtype == target || (keep_native && !is_float(t.dtype)) {
                        t.dtype
                    } else {
                        target
                    };
                    total += stored_bytes(dtype, rows * cols);
                }
                _ => {}
            }
        }
        total
    }
}

/// Bytes of `elems` values stored as `dtype`.
fn stored_bytes(dtype: GgmlDType, elems: usize) -> u64 {
    (elems / dtype.block_size() * dtype.type_size()) as u64
}

fn is_matrix(gguf_name: &str) -> bool {
    const MATS: [&str; 7] = [
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    gguf_name == "token_embd.weight"
        || gguf_name == "output.weight"
        || (gguf_name.starts_with("blk.") && MATS.iter().any(|m| gguf_name.ends_with(m)))
}

/// The GGUF name of a Hugging Face tensor name (GGUF names pass through).
fn gguf_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let Some((i, rest)) = name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) else {
        return name.into();
    };
    let rest = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => other,
    };
    format!("blk.{i}.{rest}")
}

/// Names, shapes and dtypes of every tensor in a folder's `*.safetensors`, from their headers.
fn safetensors_heads(dir: &Path) -> Result<Vec<TensorHead>, ModelError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ModelError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let corrupt = |reason: String| ModelError::Corrupt {
            path: f.clone(),
            reason,
        };
        let mut file = std::fs::File::open(&f).map_err(io(&f))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io(&f))?;
        let len = u64::from_le_bytes(len);
        if len > 100_000_000 {
            return Err(corrupt(format!("header of {len} bytes")));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).map_err(io(&f))?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| corrupt(e.to_string()))?;
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let dims: Vec<usize> = v["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
                .unwrap_or_default();
            let dtype = match v["dtype"].as_str() {
                Some("F16") => GgmlDType::F16,
                Some("BF16") => GgmlDType::BF16,
                _ => GgmlDType::F32,
            };
            out.push(TensorHead { name, dims, dtype });
        }
    }
    Ok(out)
}
