//! Loading: GGUF files and Hugging Face folders → [`Llama`] weights at a quantization level.
//!
//! Both sources are read through [`Source`] under GGUF tensor names. Tensors already at the target
//! dtype are kept byte for byte; others are dequantized to f32 and requantized. When the requested
//! level is the GGUF file's own level, its quantized tensors are all kept as shipped (the file's
//! mix, e.g. Q4_K_M's Q6_K tensors, is deliberate).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::attention::SeqKv;
use super::config::LlamaConfig;
use super::linear::{Linear, tied_embedding_kept_apart};
use super::llama::{Block, Llama, inv_freq};
use super::quant::LevelDtype;
use super::quant::dtype_for_row;
use super::{DeviceKind, LoadedModel, ModelError, ModelInfo, QuantLevel, Tokenizer};

/// GGUF tensor types the engine reads.
const SUPPORTED: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A tensor as read from a file.
// Short-lived (one per tensor while loading); with the `cuda` feature candle's `QTensor` grows past
// clippy's size limit (its storage gains a CUDA variant), not worth a box per tensor.
#[cfg_attr(feature = "cuda", expect(clippy::large_enum_variant))]
enum Raw {
    Quant(QTensor),
    Float(Tensor),
}

/// Where weights come from, by GGUF tensor name.
trait Source {
    fn path(&self) -> &Path;
    fn has(&self, name: &str) -> bool;
    fn read(&mut self, name: &str) -> Result<Raw, ModelError>;
    /// The file's own quantization level, when it has one.
    fn native(&self) -> Option<GgmlDType>;
}

struct GgufSource {
    path: PathBuf,
    file: BufReader<File>,
    content: gguf_file::Content,
}

impl Source for GgufSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
    fn read(&mut self, name: &str) -> Result<Raw, ModelError> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            });
        };
        if !SUPPORTED.contains(&info.ggml_dtype) {
            return Err(ModelError::UnsupportedTensorType {
                path: self.path.clone(),
                name: name.into(),
                dtype: format!("{:?}", info.ggml_dtype),
            });
        }
        let t = info
            .read(&mut self.file, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| ModelError::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        Ok(Raw::Quant(t))
    }
    fn native(&self) -> Option<GgmlDType> {
        native_dtype(&self.content)
    }
}

/// A GGUF file's own level: the most common dtype among its matrices.
pub(crate) fn native_dtype(content: &gguf_file::Content) -> Option<GgmlDType> {
    let mut counts: HashMap<GgmlDType, usize> = HashMap::new();
    for t in content.tensor_infos.values() {
        if t.shape.rank() == 2 {
            *counts.entry(t.ggml_dtype).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d)
}

struct HfSource {
    dir: PathBuf,
    tensors: HashMap<String, Tensor>,
    cfg: LlamaConfig,
}

impl HfSource {
    fn hf_name(name: &str) -> String {
        let map = |s: &str| {
            match s {
                "attn_norm.weight" => "input_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                other => other,
            }
            .to_owned()
        };
        match name {
            "token_embd.weight" => "model.embed_tokens.weight".into(),
            "output_norm.weight" => "model.norm.weight".into(),
            "output.weight" => "lm_head.weight".into(),
            _ => match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
                Some((i, rest)) => format!("model.layers.{i}.{}", map(rest)),
                None => name.into(),
            },
        }
    }
}

impl Source for HfSource {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(&Self::hf_name(name))
    }
    fn read(&mut self, name: &str) -> Result<Raw, ModelError> {
        let hf = Self::hf_name(name);
        let t = self
            .tensors
            .remove(&hf)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.dir.clone(),
                name: hf.clone(),
            })?;
        let t = t.to_dtype(DType::F32)?;
        // HF stores Q and K for rotate-half RoPE; permute rows to the interleaved-pair layout
        // the forward pass (and GGUF) uses, as llama.cpp's converter does.
        let heads = if name.ends_with("attn_q.weight") {
            Some(self.cfg.heads)
        } else if name.ends_with("attn_k.weight") {
            Some(self.cfg.kv_heads)
        } else {
            None
        };
        let t = match heads {
            Some(h) => permute_qk(&t, h)?,
            None => t,
        };
        Ok(Raw::Float(t))
    }
    fn native(&self) -> Option<GgmlDType> {
        None
    }
}

/// A Hugging Face folder's hyperparameters and tensors under GGUF names and layout (Q/K rows
/// permuted to interleaved RoPE pairs), as f32, in GGUF order; `output.weight` only when untied.
pub(crate) fn hf_as_gguf(dir: &Path) -> anyhow::Result<(LlamaConfig, Vec<(String, Tensor)>)> {
    let cfg_path = dir.join("config.json");
    let bytes = std::fs::read(&cfg_path).map_err(io_err(&cfg_path))?;
    let cfg = LlamaConfig::from_hf_json(&cfg_path, &bytes)?;
    cfg.validate(&cfg_path)?;
    let mut src = HfSource {
        dir: dir.to_owned(),
        tensors: read_safetensors(dir)?,
        cfg: cfg.clone(),
    };
    let mut names = vec!["token_embd.weight".to_owned()];
    for i in 0..cfg.layers {
        for leaf in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            names.push(format!("blk.{i}.{leaf}.weight"));
        }
    }
    names.push("output_norm.weight".into());
    if src.has("output.weight") {
        names.push("output.weight".into());
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let t = match src.read(&name)? {
            Raw::Float(t) => t,
            Raw::Quant(q) => q.dequantize(&Device::Cpu)?,
        };
        out.push((name, t));
    }
    Ok((cfg, out))
}

/// Reorders Q/K weight rows from rotate-half RoPE order (HF) to interleaved pairs (GGUF).
pub(crate) fn permute_qk(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (n, k) = t.dims2()?;
    t.reshape((heads, 2, n / heads / 2, k))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, k))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads a GGUF file or a Hugging Face folder and quantizes it to `level`.
pub(crate) fn load(path: &Path, level: QuantLevel, device: DeviceKind) -> anyhow::Result<LoadedModel> {
    let dev = super::open_device(device)?;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let started = std::time::Instant::now();
    let (tokenizer, model) = if meta.is_dir() {
        let cfg_path = path.join("config.json");
        let bytes = std::fs::read(&cfg_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::UnknownFormat {
                path: path.to_owned(),
            },
            _ => ModelError::Io {
                path: cfg_path.clone(),
                source: e,
            },
        })?;
        let cfg = LlamaConfig::from_hf_json(&cfg_path, &bytes)?;
        cfg.validate(&cfg_path)?;
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        let tensors = read_safetensors(path)?;
        tracing::info!(path = %path.display(), tensors = tensors.len(), "read safetensors");
        let mut src = HfSource {
            dir: path.to_owned(),
            tensors,
            cfg: cfg.clone(),
        };
        (tokenizer, build(&mut src, cfg, name, level, device, dev)?)
    } else {
        let file = File::open(path).map_err(io_err(path))?;
        let mut file = BufReader::new(file);
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            let reason = e.to_string();
            if reason.contains("unknown dtype") {
                ModelError::UnsupportedTensorType {
                    path: path.to_owned(),
                    name: "(header)".into(),
                    dtype: reason,
                }
            } else {
                ModelError::Corrupt {
                    path: path.to_owned(),
                    reason,
                }
            }
        })?;
        let mut cfg = LlamaConfig::from_gguf(path, &content)?;
        cfg.validate(path)?;
        let tokenizer =
            Tokenizer::from_gguf(&content).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut src = GgufSource {
            path: path.to_owned(),
            file,
            content,
        };
        if src.has("rope_freqs.weight") {
            let t = match src.read("rope_freqs.weight")? {
                Raw::Quant(q) => q.dequantize(&Device::Cpu)?,
                Raw::Float(t) => t,
            };
            cfg.rope_freq_factors = Some(t.flatten_all()?.to_vec1::<f32>()?);
        }
        (tokenizer, build(&mut src, cfg, name, level, device, dev)?)
    };
    tracing::info!(
        model = %model.info.name,
        level = %level,
        weight_mb = model.info.weight_bytes / 1_000_000,
        secs = started.elapsed().as_secs_f32(),
        "model loaded"
    );
    Ok(LoadedModel {
        forward: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
    })
}

fn read_safetensors(dir: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::MissingTensor {
            path: dir.to_owned(),
            name: "*.safetensors".into(),
        });
    }
    let mut all = HashMap::new();
    for f in files {
        let ts = candle_core::safetensors::load(&f, &Device::Cpu).map_err(|e| ModelError::Corrupt {
            path: f.clone(),
            reason: e.to_string(),
        })?;
        all.extend(ts);
    }
    Ok(all)
}

/// The dtype of the embedding / output head at `level`: sensitive tensors stay at ≥ 6 bits under
/// 4-bit-and-lower levels and at 8 bits otherwise (mistral.rs's policy).
pub(crate) fn head_dtype(level: QuantLevel, row_len: usize) -> GgmlDType {
    let head_level = match level {
        l if l.is_float() => l,
        QuantLevel::Q2K | QuantLevel::Q3K | QuantLevel::Q4K | QuantLevel::Q4_0 | QuantLevel::Q4_1 => {
            QuantLevel::Q6K
        }
        _ => QuantLevel::Q8_0,
    };
    dtype_for_row(head_level, row_len)
}

/// Converts tensors to their target dtypes and tallies what was done.
struct Converter {
    keep_native: bool,
    device: Device,
    mix: BTreeMap<String, usize>,
}

impl Converter {
    fn matrix(&mut self, src: &mut dyn Source, name: &str, target: GgmlDType) -> Result<QTensor, ModelError> {
        let q = match src.read(name)? {
            Raw::Quant(q) if q.dtype() == target || (self.keep_native && !is_float(q.dtype())) => q,
            Raw::Quant(q) => QTensor::quantize(&q.dequantize(&Device::Cpu)?, target)?,
            Raw::Float(t) => QTensor::quantize(&t, target)?,
        };
        *self.mix.entry(format!("{:?}", q.dtype())).or_default() += 1;
        if self.device.is_cpu() {
            Ok(q)
        } else {
            let dims = q.shape().dims().to_vec();
            Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
                q.dtype(),
                &q.data()?,
                dims,
                &self.device,
            )?)
        }
    }

    fn vector(&mut self, src: &mut dyn Source, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = match src.read(name)? {
            Raw::Quant(q) => q.dequantize(&Device::Cpu)?,
            Raw::Float(t) => t,
        };
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != len {
            return Err(ModelError::TensorShape {
                path: src.path().to_owned(),
                name: name.into(),
                expected: vec![len],
                actual: t.dims().to_vec(),
            });
        }
        Ok(v)
    }
}

pub(crate) fn is_float(d: GgmlDType) -> bool {
    matches!(d, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

fn check_shape(path: &Path, name: &str, q: &QTensor, expected: [usize; 2]) -> Result<(), ModelError> {
    if q.shape().dims() != expected {
        return Err(ModelError::TensorShape {
            path: path.to_owned(),
            name: name.into(),
            expected: expected.to_vec(),
            actual: q.shape().dims().to_vec(),
        });
    }
    Ok(())
}

fn build(
    src: &mut dyn Source,
    cfg: LlamaConfig,
    name: String,
    level: QuantLevel,
    kind: DeviceKind,
    device: Device,
) -> Result<Llama, ModelError> {
    let path = src.path().to_owned();
    let keep_native = src.native() == Some(level.dtype());
    let mut conv = Converter {
        keep_native,
        device: device.clone(),
        mix: BTreeMap::new(),
    };
    let (h, qd, kvd) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim());

    let embed = conv.matrix(src, "token_embd.weight", head_dtype(level, h))?;
    check_shape(&path, "token_embd.weight", &embed, [cfg.vocab, h])?;
    let embed = Arc::new(embed);
    tracing::info!(dtype = ?embed.dtype(), "loaded token embeddings");
    // A tied head is built now, while the embedding is the only weight held: packing it needs the
    // GGML copy and the packed one at once, and done last that doubling would sit on top of every
    // other weight (SmolLM2: one embedding more on the peak RSS, 29 MiB at q8_0, 54 MiB at f16).
    let tied = !src.has("output.weight");
    let tied_head = if tied {
        Some(Linear::shared(embed.clone())?)
    } else {
        None
    };
    let embed = match &tied_head {
        // Lookups read the packed head; the GGML copy goes now (a shadowed binding would keep it
        // to the end of the load).
        Some(head) if head.can_lookup() => {
            drop(embed);
            None
        }
        _ => Some(embed),
    };

    let mut blocks = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        let mut mat =
            |conv: &mut Converter, s: &str, rows: usize, cols: usize| -> Result<QTensor, ModelError> {
                let q = conv.matrix(src, &n(s), dtype_for_row(level, cols))?;
                check_shape(&path, &n(s), &q, [rows, cols])?;
                Ok(q)
            };
        let q = mat(&mut conv, "attn_q", qd, h)?;
        let k = mat(&mut conv, "attn_k", kvd, h)?;
        let v = mat(&mut conv, "attn_v", kvd, h)?;
        let o = mat(&mut conv, "attn_output", h, qd)?;
        let gate = mat(&mut conv, "ffn_gate", cfg.ffn, h)?;
        let up = mat(&mut conv, "ffn_up", cfg.ffn, h)?;
        let down = mat(&mut conv, "ffn_down", h, cfg.ffn)?;
        blocks.push(Block {
            attn_norm: conv.vector(src, &n("attn_norm"), h)?,
            qkv: Linear::new(vec![q, k, v], &device)?,
            o: Linear::new(vec![o], &device)?,
            ffn_norm: conv.vector(src, &n("ffn_norm"), h)?,
            gate_up: Linear::new(vec![gate, up], &device)?,
            down: Linear::new(vec![down], &device)?,
        });
        super::release_freed_memory();
        tracing::debug!(block = i, of = cfg.layers, "loaded block");
    }
    tracing::info!(blocks = cfg.layers, "loaded decoder blocks");
    let norm = conv.vector(src, "output_norm.weight", h)?;
    let lm_head = match tied_head {
        Some(head) => head,
        None => {
            let head = conv.matrix(src, "output.weight", head_dtype(level, h))?;
            check_shape(&path, "output.weight", &head, [cfg.vocab, h])?;
            Linear::new(vec![head], &device)?
        }
    };
    tracing::info!(tied, dtype_mix = ?conv.mix, "loaded output head; tensor dtypes");

    // A kept embedding counts unless the tied head shares its storage.
    let embed_bytes = match &embed {
        Some(e) if !tied || tied_embedding_kept_apart(e.dtype()) => e.storage_size_in_bytes() as u64,
        _ => 0,
    };
    let mut weight_bytes = lm_head.bytes() + embed_bytes;
    for b in &blocks {
        weight_bytes += b.qkv.bytes() + b.o.bytes() + b.gate_up.bytes() + b.down.bytes();
        weight_bytes += 4 * (b.attn_norm.len() + b.ffn_norm.len()) as u64;
    }
    let info = ModelInfo {
        name,
        quantization: level,
        device: kind,
        context_length: cfg.context,
        vocab_size: cfg.vocab,
        weight_bytes,
        kv_bytes_per_token: SeqKv::bytes_per_token(cfg.layers, kvd),
    };
    let inv_freq = inv_freq(&cfg);
    Ok(Llama {
        cfg,
        info,
        device,
        embed,
        blocks,
        norm,
        lm_head,
        inv_freq,
    })
}
