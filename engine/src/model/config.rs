//! The hyperparameters of a Llama-family decoder, read from GGUF metadata or `config.json`.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Deserialize;

use super::ModelError;

/// GGUF `general.architecture` values whose tensors and math are plain Llama.
const GGUF_ARCHS: &[&str] = &["llama", "mistral"];
/// `config.json` `model_type` values with plain Llama math.
const HF_MODEL_TYPES: &[&str] = &["llama", "mistral"];

/// Shape and numerics of the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LlamaConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// Llama 3.1-style per-frequency divisors (`rope_freqs`), `head_dim / 2` long, if any.
    pub rope_freq_factors: Option<Vec<f32>>,
}

impl LlamaConfig {
    /// Rejects shapes the forward pass cannot run.
    pub(crate) fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::UnsupportedConfig {
            path: path.to_owned(),
            reason,
        };
        if self.heads == 0 || self.kv_heads == 0 || self.layers == 0 || self.hidden == 0 {
            return Err(bad(format!("empty model: {self:?}")));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "{} heads not divisible by {} KV heads",
                self.heads, self.kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!("odd head dim {}", self.head_dim)));
        }
        Ok(())
    }

    /// Query width (`heads * head_dim`).
    pub(crate) fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Key (and value) width (`kv_heads * head_dim`).
    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// From GGUF metadata; `vocab` comes from the embedding tensor's shape.
    pub(crate) fn from_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self, ModelError> {
        let md = &content.metadata;
        let missing = |key: &str| ModelError::MissingMetadata {
            path: path.to_owned(),
            key: key.to_owned(),
        };
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| missing("general.architecture"))?
            .clone();
        if !GGUF_ARCHS.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_owned(),
                arch,
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| -> Result<usize, ModelError> {
            let full = key(k);
            let v = md.get(&full).ok_or_else(|| missing(&full))?;
            v.to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .map(|x| x as usize)
                .map_err(|e| ModelError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("{full}: {e}"),
                })
        };
        let f32_or = |k: &str, default: f32| md.get(&key(k)).and_then(|v| v.to_f32().ok()).unwrap_or(default);
        let hidden = usize_of("embedding_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = usize_of("attention.head_count_kv").unwrap_or(heads);
        let head_dim = usize_of("attention.key_length")
            .or_else(|_| usize_of("rope.dimension_count"))
            .unwrap_or(hidden / heads.max(1));
        let vocab = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| ModelError::MissingTensor {
                path: path.to_owned(),
                name: "token_embd.weight".into(),
            })?;
        Ok(Self {
            hidden,
            layers: usize_of("block_count")?,
            heads,
            kv_heads,
            head_dim,
            ffn: usize_of("feed_forward_length")?,
            vocab,
            context: usize_of("context_length").unwrap_or(4096),
            rope_theta: f32_or("rope.freq_base", 10_000.0),
            rms_eps: f32_or("attention.layer_norm_rms_epsilon", 1e-5),
            rope_freq_factors: None,
        })
    }

    /// From a Hugging Face `config.json`.
    pub(crate) fn from_hf_json(path: &Path, bytes: &[u8]) -> Result<Self, ModelError> {
        let c: HfConfig = serde_json::from_slice(bytes).map_err(|e| ModelError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let model_type = c.model_type.clone().unwrap_or_default();
        if !HF_MODEL_TYPES.contains(&model_type.as_str()) {
            let arch = c.architectures.first().cloned().unwrap_or(model_type);
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_owned(),
                arch,
            });
        }
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
        let rope_freq_factors = match &c.rope_scaling {
            Some(s) if s.rope_type.as_deref().or(s.r#type.as_deref()) == Some("llama3") => {
                Some(llama3_freq_factors(s, head_dim, c.rope_theta))
            }
            Some(s) => {
                let kind = s.rope_type.clone().or(s.r#type.clone()).unwrap_or_default();
                return Err(ModelError::UnsupportedConfig {
                    path: path.to_owned(),
                    reason: format!("rope_scaling type `{kind}`"),
                });
            }
            None => None,
        };
        Ok(Self {
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            ffn: c.intermediate_size,
            vocab: c.vocab_size,
            context: c.max_position_embeddings,
            rope_theta: c.rope_theta,
            rms_eps: c.rms_norm_eps,
            rope_freq_factors,
        })
    }
}

/// The fields of `config.json` the engine reads.
#[derive(Debug, Deserialize)]
pub(crate) struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    #[serde(default = "default_context")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub rope_scaling: Option<RopeScaling>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RopeScaling {
    pub rope_type: Option<String>,
    pub r#type: Option<String>,
    #[serde(default = "one")]
    pub factor: f32,
    #[serde(default = "one")]
    pub low_freq_factor: f32,
    #[serde(default = "four")]
    pub high_freq_factor: f32,
    #[serde(default = "default_context")]
    pub original_max_position_embeddings: usize,
}

fn default_context() -> usize {
    4096
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_eps() -> f32 {
    1e-5
}
fn one() -> f32 {
    1.0
}
fn four() -> f32 {
    4.0
}

/// Llama 3.1 RoPE scaling as divisors of each inverse frequency (the GGUF `rope_freqs` form).
fn llama3_freq_factors(s: &RopeScaling, head_dim: usize, theta: f32) -> Vec<f32> {
    let low_wavelen = s.original_max_position_embeddings as f32 / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings as f32 / s.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor
            } else {
                let smooth = (s.original_max_position_embeddings as f32 / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                // Scaled frequency = (1 - smooth) * freq / factor + smooth * freq; as a divisor:
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            }
        })
        .collect()
}
