//! What a model file holds, read from its header alone (no weights loaded): its own precision
//! and the bytes its weights take at any level, by the loader's own dtype rules.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, gguf_file};

use super::attention::SeqKv;
use super::config::LlamaConfig;
use super::linear::{ggml_bytes, linear_resident_bytes, tied_embedding_kept_apart};
use super::loader::{head_dtype, is_float};
use super::quant::LevelDtype;
use super::quant::dtype_for_row;
use super::{ModelError, QuantLevel};

/// A model file's shape and size facts.
#[derive(Debug, Clone)]
pub struct ModelHeader {
    /// The file's own level: the most common dtype of its matrices.
    pub source_level: QuantLevel,
    pub layers: usize,
    pub hidden: usize,
    /// Width of the feed-forward layer (gate and up each).
    pub ffn: usize,
    pub kv_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    /// KV cache bytes per token of one sequence (all layers, K and V, f16 as the engine stores it).
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
            ffn: cfg.ffn,
            kv_dim: cfg.kv_dim(),
            vocab: cfg.vocab,
            context_length: cfg.context,
            kv_bytes_per_token: SeqKv::bytes_per_token(cfg.layers, cfg.kv_dim()),
            tensors,
        })
    }

    /// Bytes of the weights once loaded at `level` and serving on CPU: each matrix at the dtype
    /// the loader gives it (`dtype_for_row`, the head policy, the file's own mix kept at its own
    /// level), fused as the loader fuses it, in the layout the engine holds it
    /// ([`linear_resident_bytes`]); block norms as f32. Equals `ModelInfo::weight_bytes` of the
    /// loaded model (the `bitscale_engine_weight_bytes` gauge).
    pub fn weight_bytes(&self, level: QuantLevel) -> u64 {
        let keep_native = self.source_level == level && !level.is_float();
        let by_name: HashMap<String, &TensorHead> =
            self.tensors.iter().map(|t| (gguf_name(&t.name), t)).collect();
        // (held dtype, rows, cols) of a matrix, when the file has it.
        let matrix = |name: &str| -> Option<(GgmlDType, usize, usize)> {
            let t = by_name.get(name)?;
            let &[rows, cols] = t.dims.as_slice() else {
                return None;
            };
            let target = if name == "token_embd.weight" || name == "output.weight" {
                head_dtype(level, self.hidden)
            } else {
                dtype_for_row(level, cols)
            };
            let held = if t.dtype == target || (keep_native && !is_float(t.dtype)) {
                t.dtype
            } else {
                target
            };
            Some((held, rows, cols))
        };
        // A fused layer over `names` (all with rows of the same length).
        let linear = |names: &[String]| -> u64 {
            let parts: Vec<(GgmlDType, usize, usize)> = names.iter().filter_map(|n| matrix(n)).collect();
            let k = parts.first().map_or(0, |p| p.2);
            let parts: Vec<(GgmlDType, usize)> = parts.iter().map(|&(d, n, _)| (d, n)).collect();
            linear_resident_bytes(&parts, k)
        };
        let mut total = 0u64;
        for i in 0..self.layers {
            let n = |leaf: &str| format!("blk.{i}.{leaf}.weight");
            for norm in ["attn_norm", "ffn_norm"] {
                if let Some(t) = by_name.get(&n(norm)) {
                    total += 4 * t.dims.iter().product::<usize>() as u64;
                }
            }
            total += linear(&[n("attn_q"), n("attn_k"), n("attn_v")]);
            total += linear(&[n("attn_output")]);
            total += linear(&[n("ffn_gate"), n("ffn_up")]);
            total += linear(&[n("ffn_down")]);
        }
        let embed = matrix("token_embd.weight");
        let embed_ggml = embed.map_or(0, |(d, n, k)| ggml_bytes(d, n * k));
        if by_name.contains_key("output.weight") {
            // Untied: the head, and the embedding as GGML blocks for lookups.
            total += linear(&["output.weight".into()]) + embed_ggml;
        } else if let Some((dtype, rows, cols)) = embed {
            total += linear_resident_bytes(&[(dtype, rows)], cols);
            if tied_embedding_kept_apart(dtype) {
                total += embed_ggml;
            }
        }
        total
    }
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
