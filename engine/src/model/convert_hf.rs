//! GGUF metadata for a Hugging Face folder: hyperparameters from `config.json`, a GPT-2-style
//! (byte-level BPE) vocabulary from `tokenizer.json`, BOS/EOS and the chat template from
//! `tokenizer_config.json`, under llama.cpp's key names.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use super::ModelError;
use super::config::LlamaConfig;

// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path, required: bool) -> Result<Json, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Json::Null),
        Err(source) => Err(ModelError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// llama.cpp's `tokenizer.ggml.pre` for a `tokenizer.json` pre-tokenizer: SmolLM-style digit
/// splitting before byte-level, plain byte-level, or llama.cpp's default regex.
fn pre_tokenizer(doc: &Json) -> &'static str {
    let pre = &doc["pre_tokenizer"];
    let kinds: Vec<&str> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|v| v.iter().filter_map(|p| p["type"].as_str()).collect())
            .unwrap_or_default(),
        Some(t) => vec![t],
        None => vec![],
    };
    match kinds.as_slice() {
        ["Digits", "ByteLevel"] => "smollm",
        ["ByteLevel"] => "gpt2",
        _ => "default",
    }
}

/// The GGUF metadata of the model in `dir` with hyperparameters `cfg`.
pub(crate) fn hf_metadata(dir: &Path, cfg: &LlamaConfig) -> Result<Vec<(String, Value)>, ModelError> {
    let tok_path = dir.join("tokenizer.json");
    let doc = read_json(&tok_path, true)?;
    let tcfg = read_json(&dir.join("tokenizer_config.json"), false)?;
    let unsupported = |reason: &str| ModelError::Tokenizer(format!("{}: {reason}", tok_path.display()));
    let model = &doc["model"];
    if model["type"].as_str() != Some("BPE") || model["byte_fallback"].as_bool() == Some(true) {
        return Err(unsupported(
            "only byte-level BPE (GPT-2 style) tokenizers can be written to GGUF",
        ));
    }

    // Ids may have gaps and the embedding may be padded past the vocabulary: fill with unused.
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; cfg.vocab];
    let mut put = |id: u64, text: &str, kind: i32| {
        let id = id as usize;
        if id >= tokens.len() {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((text.to_owned(), kind));
    };
    for (text, id) in model["vocab"]
        .as_object()
        .ok_or_else(|| unsupported("no model.vocab"))?
    {
        put(
            id.as_u64().ok_or_else(|| unsupported("bad vocab id"))?,
            text,
            NORMAL,
        );
    }
    for t in doc["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
            continue;
        };
        let kind = if t["special"].as_bool() == Some(true) {
            CONTROL
        } else {
            USER_DEFINED
        };
        put(id, text, kind);
    }
    let (texts, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED)))
        .unzip();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .map(Value::String)
        .collect();

    let token_text = |key: &str| -> Option<String> {
        match tcfg.get(key)? {
            Json::String(s) => Some(s.clone()),
            other => other.get("content")?.as_str().map(str::to_owned),
        }
    };
    let id_of = |key: &str| {
        let text = token_text(key)?;
        texts.iter().position(|t| *t == text).map(|i| i as u32)
    };
    let template = match tcfg.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t["name"].as_str() == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t["template"].as_str().map(str::to_owned)),
        _ => None,
    };
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();

    let u32v = |x: usize| Value::U32(x as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(name)),
        ("llama.context_length".into(), u32v(cfg.context)),
        ("llama.embedding_length".into(), u32v(cfg.hidden)),
        ("llama.block_count".into(), u32v(cfg.layers)),
        ("llama.feed_forward_length".into(), u32v(cfg.ffn)),
        ("llama.attention.head_count".into(), u32v(cfg.heads)),
        ("llama.attention.head_count_kv".into(), u32v(cfg.kv_heads)),
        ("llama.attention.key_length".into(), u32v(cfg.head_dim)),
        ("llama.attention.value_length".into(), u32v(cfg.head_dim)),
        ("llama.rope.dimension_count".into(), u32v(cfg.head_dim)),
        ("llama.rope.freq_base".into(), Value::F32(cfg.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_eps),
        ),
        ("llama.vocab_size".into(), u32v(texts.len())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String(pre_tokenizer(&doc).into()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(tcfg["add_bos_token"].as_bool().unwrap_or(false)),
        ),
    ];
    if let Some(id) = id_of("bos_token") {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(id)));
    }
    if let Some(id) = id_of("eos_token") {
        md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(id)));
    }
    if let Some(t) = template {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    md.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(texts.into_iter().map(Value::String).collect()),
    ));
    Ok(md)
}
