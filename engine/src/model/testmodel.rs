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
pub(crate) fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
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
    let (tokens, _, merges) = vocab();
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
        }
    }
}

/// Where [`write_test_model`] put the two copies.
#[derive(Debug, Clone)]
pub struct TestModelFiles {
    /// `OUT/test-llama.gguf` (f32 tensors).
    pub gguf: PathBuf,
    /// `OUT/test-llama-hf/` (safetensors f32, config.json, tokenizer.json, tokenizer_config.json).
    pub hf_dir: PathBuf,
}

const RMS_EPS: f32 = 1e-5;

/// Writes the same random-weight Llama as GGUF and as a Hugging Face folder under `out`
/// (created if needed). Deterministic for a given spec.
pub fn write_test_model(out: &Path, spec: &TestModelSpec) -> anyhow::Result<TestModelFiles> {
    use rand::{Rng, SeedableRng};

    std::fs::create_dir_all(out)?;
    let (tokens, types, merges) = vocab();
    let vocab_size = tokens.len();
    let hd = spec.hidden / spec.heads;
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let dev = Device::Cpu;
    let mut mat = |rows: usize, cols: usize, scale: f32| -> candle_core::Result<Tensor> {
        let a = scale * (3.0 / cols as f32).sqrt();
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-a..a)).collect();
        Tensor::from_vec(v, (rows, cols), &dev)
    };
    // HF names and layout (rotate-half Q/K) are the source of truth.
    let mut hf: Vec<(String, Tensor)> = Vec::new();
    hf.push((
        "model.embed_tokens.weight".into(),
        mat(vocab_size, spec.hidden, (spec.hidden as f32).sqrt())?,
    ));
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        let (qd, kvd) = (spec.heads * hd, spec.kv_heads * hd);
        hf.push((format!("{p}.self_attn.q_proj.weight"), mat(qd, spec.hidden, 1.0)?));
        hf.push((
            format!("{p}.self_attn.k_proj.weight"),
            mat(kvd, spec.hidden, 1.0)?,
        ));
        hf.push((
            format!("{p}.self_attn.v_proj.weight"),
            mat(kvd, spec.hidden, 1.0)?,
        ));
        hf.push((format!("{p}.self_attn.o_proj.weight"), mat(spec.hidden, qd, 1.0)?));
        hf.push((
            format!("{p}.mlp.gate_proj.weight"),
            mat(spec.ffn, spec.hidden, 1.0)?,
        ));
        hf.push((
            format!("{p}.mlp.up_proj.weight"),
            mat(spec.ffn, spec.hidden, 1.0)?,
        ));
        hf.push((
            format!("{p}.mlp.down_proj.weight"),
            mat(spec.hidden, spec.ffn, 1.0)?,
        ));
        hf.push((
            format!("{p}.input_layernorm.weight"),
            (mat(1, spec.hidden, 0.1)? + 1.0)?.flatten_all()?,
        ));
        hf.push((
            format!("{p}.post_attention_layernorm.weight"),
            (mat(1, spec.hidden, 0.1)? + 1.0)?.flatten_all()?,
        ));
    }
    hf.push((
        "model.norm.weight".into(),
        (mat(1, spec.hidden, 0.1)? + 1.0)?.flatten_all()?,
    ));
    if !spec.tied {
        hf.push(("lm_head.weight".into(), mat(vocab_size, spec.hidden, 1.0)?));
    }

    // --- Hugging Face folder ---
    let hf_dir = out.join("test-llama-hf");
    std::fs::create_dir_all(&hf_dir)?;
    let map: HashMap<String, Tensor> = hf.iter().cloned().collect();
    candle_core::safetensors::save(&map, hf_dir.join("model.safetensors"))?;
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
    std::fs::write(hf_dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(
        hf_dir.join("tokenizer.json"),
        serde_json::to_vec(&tokenizer_json())?,
    )?;
    std::fs::write(
        hf_dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&tokenizer_config_json())?,
    )?;

    // --- GGUF (llama.cpp names; Q/K rows permuted to interleaved RoPE pairs) ---
    let gguf_name = |hf_name: &str| -> String {
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
    };
    let mut qtensors = Vec::with_capacity(hf.len());
    for (name, t) in &hf {
        let t = if name.ends_with("q_proj.weight") {
            permute_qk(t, spec.heads)?
        } else if name.ends_with("k_proj.weight") {
            permute_qk(t, spec.kv_heads)?
        } else {
            t.clone()
        };
        qtensors.push((gguf_name(name), QTensor::quantize(&t, GgmlDType::F32)?));
    }
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
        ("tokenizer.ggml.tokens", strs(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strs(&merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(3)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::String(CHAT_TEMPLATE.into())),
    ];
    let gguf = out.join("test-llama.gguf");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&gguf)?);
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts)?;
    std::io::Write::flush(&mut f)?;
    Ok(TestModelFiles { gguf, hf_dir })
}
