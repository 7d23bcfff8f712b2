//! A tiny random-weight Llama for tests and demos, written both as GGUF and as a Hugging Face
//! folder (safetensors + `config.json` + `tokenizer.json` + `tokenizer_config.json`).
//!
//! Its tokenizer is a byte-level BPE: 256 byte tokens, a few English merges and the special tokens
//! `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`, so any text encodes. Weights come from a seeded
//! generator, so the same spec always gives the same files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};

use super::loader::permute_qk;

/// Special tokens of the test vocabulary, at ids 0..4.
pub const SPECIAL_TOKENS: [&str; 4] = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];

/// The ChatML template the test model ships (the same text SmolLM2 uses).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("r", "e"),
    ("Ġ", "s"),
    ("a", "t"),
    ("e", "n"),
    ("o", "r"),
    ("Ġ", "w"),
    ("Ġ", "c"),
    ("i", "s"),
    ("Ġ", "o"),
    ("a", "n"),
    ("e", "s"),
    ("i", "t"),
    ("Ġ", "p"),
    ("Ġ", "f"),
    ("in", "g"),
    ("Ġ", "b"),
    ("a", "r"),
    ("Ġ", "m"),
    ("l", "l"),
    ("Ġo", "f"),
    ("Ġ", "i"),
    ("Ġa", "nd"),
    ("n", "d"),
    ("Ġ", "h"),
    ("o", "u"),
    ("Ġ", "d"),
    ("Ġ", "P"),
    ("Ġ", "C"),
    ("Ġi", "s"),
    ("Ġt", "o"),
    ("Ġc", "ap"),
    ("a", "p"),
    ("Ġ", "F"),
];

/// GPT-2's byte → printable char map (bytes that are not printable get chars from U+0100 up).
pub(crate) fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable.contains(&b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// The test vocabulary: (tokens in id order, GGUF token types, merges as "a b").
#[cfg(test)]
pub(crate) fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    vocab_of(0)
}

/// [`vocab`] padded with filler tokens (`x301`, `x302`, …: plain ASCII, reached by no merge) to
/// `size` entries, so a generated model can have a real model's vocabulary and output head.
fn vocab_of(size: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let (mut tokens, mut types, merges) = base_vocab();
    for i in tokens.len()..size {
        tokens.push(format!("x{i}"));
        types.push(1);
    }
    (tokens, types, merges)
}

fn base_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIAL_TOKENS.len()];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let mut merges = Vec::new();
    for (a, b) in MERGES {
        let merged = format!("{a}{b}");
        // A merge needs both halves in the vocabulary; skip the ones whose halves are not there yet.
        if tokens.iter().any(|t| t == a) && tokens.iter().any(|t| t == b) && !tokens.contains(&merged) {
            tokens.push(merged);
            types.push(1);
            merges.push(format!("{a} {b}"));
        }
    }
    (tokens, types, merges)
}

/// The test tokenizer as a Hugging Face `tokenizer.json` document.
pub fn tokenizer_json() -> Json {
    tokenizer_json_of(0)
}

/// [`tokenizer_json`] with the vocabulary padded to `size` entries (see [`vocab_of`]).
fn tokenizer_json_of(size: usize) -> Json {
    let (tokens, _, merges) = vocab_of(size);
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Json> = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .map(|(a, b)| json!([a, b]))
        .collect();
    let added: Vec<Json> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
}

/// The test model's `tokenizer_config.json` document.
pub fn tokenizer_config_json() -> Json {
    json!({
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": CHAT_TEMPLATE,
    })
}

/// Shape of the generated model.
#[derive(Debug, Clone)]
pub struct TestModelSpec {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub context: usize,
    pub rope_theta: f32,
    /// Whether the output head is the embedding matrix.
    pub tied: bool,
    pub seed: u64,
    /// Vocabulary entries; below the test tokenizer's own (~300), that many. Filler tokens pad
    /// it, so the embedding and output head have a real model's size.
    pub vocab: usize,
    /// The dtype of the GGUF copy's matrices (norms stay f32): F32 or F16.
    pub gguf_dtype: GgmlDType,
    /// Whether to write the Hugging Face folder too (f32 safetensors: four bytes a weight).
    pub hf: bool,
}

/// Named shapes of real models for [`TestModelSpec::shape`] (random weights, the test tokenizer
/// padded to the real vocabulary).
pub const SHAPES: [&str; 3] = ["tiny", "tinyllama-1.1b", "llama-3.2-1b"];

impl TestModelSpec {
    /// The spec of a named shape from [`SHAPES`]: `tiny` is the default;
    /// `tinyllama-1.1b` is TinyLlama-1.1B (hidden 2048, 22 layers, 32 query / 4 KV heads, FFN
    /// 5632, vocabulary 32,000, untied head); `llama-3.2-1b` is Llama-3.2-1B (hidden 2048, 16
    /// layers, 32 / 8 heads, FFN 8192, vocabulary 128,256, head tied to the embedding). Both
    /// have every row a multiple of 256, so K-quant levels keep their K-quants; they are written
    /// as an f16 GGUF only (2.2 and 2.5 GB), and the engine quantizes at load or `quantize`.
    pub fn shape(name: &str) -> Option<Self> {
        let real = |hidden, layers, heads, kv_heads, ffn, vocab, tied, rope_theta| Self {
            hidden,
            layers,
            heads,
            kv_heads,
            ffn,
            context: 2048,
            rope_theta,
            tied,
            vocab,
            gguf_dtype: GgmlDType::F16,
            hf: false,
            ..Self::default()
        };
        match name {
            "tiny" => Some(Self::default()),
            "tinyllama-1.1b" => Some(real(2048, 22, 32, 4, 5632, 32_000, false, 10_000.0)),
            "llama-3.2-1b" => Some(real(2048, 16, 32, 8, 8192, 128_256, true, 500_000.0)),
            _ => None,
        }
    }
}

impl Default for TestModelSpec {
    /// 2 layers, width 64, 4 query / 2 KV heads, FFN 128, ~300 tokens: about 0.3 MB of weights.
    fn default() -> Self {
        Self {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            context: 512,
            rope_theta: 10_000.0,
            tied: false,
            seed: 7,
            vocab: 0,
            gguf_dtype: GgmlDType::F32,
            hf: true,
        }
    }
}

/// Where [`write_test_model`] put the two copies.
#[derive(Debug, Clone)]
pub struct TestModelFiles {
    /// `OUT/test-llama.gguf` (matrices at the spec's `gguf_dtype`, norms f32).
    pub gguf: PathBuf,
    /// `OUT/test-llama-hf/` (safetensors f32, config.json, tokenizer.json, tokenizer_config.json);
    /// not written when the spec's `hf` is false.
    pub hf_dir: PathBuf,
}

const RMS_EPS: f32 = 1e-5;

/// Writes the same random-weight Llama as GGUF and (unless `spec.hf` is false) as a Hugging Face
/// folder under `out` (created if needed). Deterministic for a given spec. Each matrix is
/// converted to the GGUF dtype as it is drawn, so without the folder memory peaks at the GGUF's
/// size plus one f32 matrix.
pub fn write_test_model(out: &Path, spec: &TestModelSpec) -> anyhow::Result<TestModelFiles> {
    std::fs::create_dir_all(out)?;
    let (tokens, types, merges) = vocab_of(spec.vocab);
    let mut weights = Weights::new(spec)?;
    let hf_dir = out.join("test-llama-hf");
    if spec.hf {
        write_hf_folder(&hf_dir, spec, tokens.len(), &weights.hf)?;
    }
    let gguf = out.join("test-llama.gguf");
    write_gguf(&gguf, spec, (&tokens, &types, &merges), &mut weights.gguf)?;
    Ok(TestModelFiles { gguf, hf_dir })
}

/// The model's tensors: f32 under HF names (kept only for the folder) and GGUF ones.
struct Weights {
    hf: HashMap<String, Tensor>,
    gguf: Vec<(String, QTensor)>,
}

impl Weights {
    /// Draws every tensor in HF order from the spec's seed (the order fixes the values).
    fn new(spec: &TestModelSpec) -> anyhow::Result<Self> {
        let mut w = Self {
            hf: HashMap::new(),
            gguf: Vec::new(),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
        for (name, rows, cols, scale) in tensor_list(spec) {
            w.add(spec, &name, random_matrix(&mut rng, rows, cols, scale)?)?;
        }
        Ok(w)
    }

    fn add(&mut self, spec: &TestModelSpec, name: &str, t: Tensor) -> anyhow::Result<()> {
        let is_norm = t.rank() == 1;
        let gguf_t = if name.ends_with("q_proj.weight") {
            permute_qk(&t, spec.heads)?
        } else if name.ends_with("k_proj.weight") {
            permute_qk(&t, spec.kv_heads)?
        } else {
            t.clone()
        };
        let dtype = if is_norm { GgmlDType::F32 } else { spec.gguf_dtype };
        self.gguf
            .push((gguf_name(name), QTensor::quantize(&gguf_t, dtype)?));
        if spec.hf {
            self.hf.insert(name.to_owned(), t);
        }
        Ok(())
    }
}

/// A `rows × cols` matrix of uniform values with variance `scale² / cols` (a norm weight when
/// `rows` is 1: `1 + ` the values, flattened).
fn random_matrix(
    rng: &mut rand::rngs::StdRng,
    rows: usize,
    cols: usize,
    scale: f32,
) -> anyhow::Result<Tensor> {
    let a = scale * (3.0 / cols as f32).sqrt();
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-a..a)).collect();
    let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu)?;
    Ok(if rows == 1 { (t + 1.0)?.flatten_all()? } else { t })
}

/// `(HF name, rows, cols, scale)` of every tensor, in the order they are drawn.
fn tensor_list(spec: &TestModelSpec) -> Vec<(String, usize, usize, f32)> {
    let vocab = vocab_of(spec.vocab).0.len();
    let hd = spec.hidden / spec.heads;
    let (h, qd, kvd) = (spec.hidden, spec.heads * hd, spec.kv_heads * hd);
    let mut list = vec![(
        "model.embed_tokens.weight".to_owned(),
        vocab,
        h,
        (h as f32).sqrt(),
    )];
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        for (leaf, rows, cols) in [
            ("self_attn.q_proj", qd, h),
            ("self_attn.k_proj", kvd, h),
            ("self_attn.v_proj", kvd, h),
            ("self_attn.o_proj", h, qd),
            ("mlp.gate_proj", spec.ffn, h),
            ("mlp.up_proj", spec.ffn, h),
            ("mlp.down_proj", h, spec.ffn),
        ] {
            list.push((format!("{p}.{leaf}.weight"), rows, cols, 1.0));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            list.push((format!("{p}.{norm}.weight"), 1, h, 0.1));
        }
    }
    list.push(("model.norm.weight".to_owned(), 1, h, 0.1));
    if !spec.tied {
        list.push(("lm_head.weight".to_owned(), vocab, h, 1.0));
    }
    list
}

/// llama.cpp's name for an HF tensor name.
fn gguf_name(hf_name: &str) -> String {
    let rest = match hf_name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        n => n,
    };
    let rest = rest.strip_prefix("model.layers.").unwrap_or(rest);
    let (i, leaf) = rest.split_once('.').unwrap_or((rest, ""));
    let leaf = match leaf {
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        "input_layernorm.weight" => "attn_norm",
        _ => "ffn_norm",
    };
    format!("blk.{i}.{leaf}.weight")
}

/// The Hugging Face folder: safetensors, `config.json` and the tokenizer files.
fn write_hf_folder(
    dir: &Path,
    spec: &TestModelSpec,
    vocab_size: usize,
    tensors: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    candle_core::safetensors::save(tensors, dir.join("model.safetensors"))?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": spec.context,
        "rope_theta": spec.rope_theta,
        "rms_norm_eps": RMS_EPS,
        "tie_word_embeddings": spec.tied,
        "bos_token_id": 0,
        "eos_token_id": 3,
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&tokenizer_json_of(spec.vocab))?,
    )?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&tokenizer_config_json())?,
    )?;
    Ok(())
}

/// The GGUF copy (llama.cpp names; Q/K rows permuted to interleaved RoPE pairs).
fn write_gguf(
    path: &Path,
    spec: &TestModelSpec,
    (tokens, types, merges): (&[String], &[i32], &[String]),
    tensors: &mut Vec<(String, QTensor)>,
) -> anyhow::Result<()> {
    let hd = spec.hidden / spec.heads;
    let strs = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let u32v = |x: usize| Value::U32(x as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("bitscale-test-llama".into())),
        ("llama.embedding_length", u32v(spec.hidden)),
        ("llama.block_count", u32v(spec.layers)),
        ("llama.attention.head_count", u32v(spec.heads)),
        ("llama.attention.head_count_kv", u32v(spec.kv_heads)),
        ("llama.feed_forward_length", u32v(spec.ffn)),
        ("llama.context_length", u32v(spec.context)),
        ("llama.rope.dimension_count", u32v(hd)),
        ("llama.rope.freq_base", Value::F32(spec.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(RMS_EPS)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strs(tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().copied().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strs(merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(3)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::String(CHAT_TEMPLATE.into())),
    ];
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts)?;
    std::io::Write::flush(&mut f)?;
    tensors.clear();
    Ok(())
}
