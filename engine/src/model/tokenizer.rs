//! The tokenizer and chat template of a model.
//!
//! Built from a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) or from GGUF metadata. For
//! GGUF the vocabulary is turned into an equivalent `tokenizer.json` document and handed to the
//! `tokenizers` crate, so both sources share one code path.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::{Value as Json, json};

use super::chat_template::ChatTemplate;
use super::{ChatMessage, ModelError};

/// End-of-turn tokens of common chat formats; they stop generation when the vocabulary has them.
const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>"];

/// Tokenizer and chat template of a model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    stop_ids: Vec<u32>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("has_chat_template", &self.template.is_some())
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// A tokenizer from a Hugging Face `tokenizer.json` (bytes), an optional Jinja chat template and
    /// the special tokens that end generation (by their text, e.g. `</s>`, `<|im_end|>`; the first
    /// one is the template's `eos_token`). Unknown stop tokens are ignored.
    pub fn from_json_bytes(
        json: &[u8],
        chat_template: Option<String>,
        stop_tokens: &[&str],
        bos_token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(tok_err)?;
        let template = chat_template.map(ChatTemplate::new).transpose()?;
        let mut stop_ids = Vec::new();
        for t in stop_tokens {
            if let Some(id) = inner.token_to_id(t)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        Ok(Self {
            inner,
            template,
            stop_ids,
            bos_token: bos_token.unwrap_or_default().to_owned(),
            eos_token: stop_tokens.first().copied().unwrap_or_default().to_owned(),
        })
    }

    /// A tokenizer from a Hugging Face folder: `tokenizer.json`, plus `tokenizer_config.json` for the
    /// chat template, BOS and EOS when present.
    pub fn from_hf_dir(dir: &Path) -> anyhow::Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let json = std::fs::read(&tok_path).map_err(|source| ModelError::Io {
            path: tok_path.clone(),
            source,
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Json = match std::fs::read(&cfg_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelError::Corrupt {
                path: cfg_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Json::Null,
            Err(source) => {
                return Err(ModelError::Io {
                    path: cfg_path,
                    source,
                }
                .into());
            }
        };
        let token_text = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                Json::String(s) => Some(s.clone()),
                other => other.get("content")?.as_str().map(str::to_owned),
            }
        };
        let template = match cfg.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // Newer configs list named templates; "default" is the chat one.
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        };
        let bos = token_text("bos_token");
        let eos = token_text("eos_token");
        let mut stops: Vec<&str> = eos.iter().map(String::as_str).collect();
        stops.extend(END_OF_TURN);
        Self::from_json_bytes(&json, template, &stops, bos.as_deref())
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))
    }

    /// A tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`). Supports the
    /// `gpt2` (byte-level BPE with merges) and `llama` (SentencePiece BPE with byte fallback) models.
    pub fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| md.get(k);
        let string_list = |k: &str| -> Result<Vec<String>, ModelError> {
            let v = get(k).ok_or_else(|| tok_err(format!("missing metadata `{k}`")))?;
            let list = v.to_vec().map_err(tok_err)?;
            list.iter()
                .map(|x| x.to_string().cloned().map_err(tok_err))
                .collect()
        };
        let model = get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| tok_err("missing metadata `tokenizer.ggml.model`"))?
            .clone();
        let tokens = string_list("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|x| x.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let id_of = |k: &str| get(k).and_then(|v| v.to_u32().ok());
        let bos_id = id_of("tokenizer.ggml.bos_token_id");
        let eos_id = id_of("tokenizer.ggml.eos_token_id");
        let text_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
        let add_bos = get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(model == "llama");

        let doc = match model.as_str() {
            "gpt2" => {
                let merges = string_list("tokenizer.ggml.merges")?;
                let pre = get("tokenizer.ggml.pre")
                    .and_then(|v| v.to_string().ok())
                    .map(String::as_str);
                gpt2_json(&tokens, &types, &merges, pre)
            }
            "llama" => {
                let scores: Vec<f32> = match get("tokenizer.ggml.scores") {
                    Some(v) => v
                        .to_vec()
                        .map_err(tok_err)?
                        .iter()
                        .map(|x| x.to_f32().unwrap_or(0.0))
                        .collect(),
                    None => vec![0.0; tokens.len()],
                };
                let unk = id_of("tokenizer.ggml.unknown_token_id").unwrap_or(0);
                spm_json(&tokens, &types, &scores, unk)
            }
            other => {
                return Err(tok_err(format!(
                    "unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama)"
                ))
                .into());
            }
        };
        let doc = with_bos(doc, add_bos.then(|| bos_id.zip(text_of(bos_id))).flatten());
        let bytes = serde_json::to_vec(&doc).map_err(tok_err)?;

        let template = get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let eos = text_of(eos_id);
        let mut stops: Vec<&str> = eos.iter().map(String::as_str).collect();
        stops.extend(END_OF_TURN);
        Self::from_json_bytes(&bytes, template, &stops, text_of(bos_id).as_deref())
    }

    /// Encodes text; `add_special` adds BOS where the model expects it. Special tokens written in
    /// the text (e.g. `<|im_start|>` from a rendered chat template) become their ids.
    pub fn encode(&self, text: &str, add_special: bool) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        Ok(self.inner.decode(ids, true).map_err(tok_err)?)
    }

    /// Token ids that end generation (EOS, end-of-turn).
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Number of ids the tokenizer can produce, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token given by its text, e.g. `<|im_end|>`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether the model has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders the model's chat template with a generation prompt; an error when it has none.
    ///
    /// The result already holds the template's special tokens (and BOS when the template writes
    /// `bos_token`), so encode it with `add_special = false`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        let t = self.template.as_ref().ok_or(ModelError::NoChatTemplate)?;
        Ok(t.render(messages, &self.bos_token, &self.eos_token)?)
    }
}

// GGUF token types (llama.cpp `llama_token_type`).
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

fn vocab_map(tokens: &[String]) -> serde_json::Map<String, Json> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        // A few vocabularies repeat a string; the first id wins, as in llama.cpp's text→id map.
        vocab.entry(t.clone()).or_insert(json!(id));
    }
    vocab
}

fn added_tokens(tokens: &[String], types: &[i32]) -> Vec<Json> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, ty))| **ty == TYPE_CONTROL || **ty == TYPE_USER_DEFINED)
        .map(|(id, (t, ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty == TYPE_CONTROL})
        })
        .collect()
}

fn gpt2_json(tokens: &[String], types: &[i32], merges: &[String], pre: Option<&str>) -> Json {
    let merges: Vec<Json> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
        .collect();
    let byte_level =
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    // llama.cpp's `smollm`/`starcoder` pre-tokenizers split every digit before the GPT-2 regex.
    let pre_tokenizer = match pre {
        Some("smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva") => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]
        }),
        _ => byte_level.clone(),
    };
    json!({
        "version": "1.0",
        "added_tokens": added_tokens(tokens, types),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab_map(tokens), "merges": merges}
    })
}

/// SentencePiece BPE: merges are recovered from the vocabulary as `transformers` does — every split
/// of a token into two vocabulary pieces is a merge, ranked by the merged token's score.
fn spm_json(tokens: &[String], types: &[i32], scores: &[f32], unk: u32) -> Json {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(1) != 1 {
            continue;
        }
        for (split, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(split);
            if let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, ia, ib));
            }
        }
    }
    // Higher score merges first; ties by the pieces' ids, as transformers' extractor does.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.2.cmp(&y.2)).then(x.3.cmp(&y.3)));
    let merges: Vec<Json> = merges
        .iter()
        .map(|&(_, _, a, b)| json!([tokens[a], tokens[b]]))
        .collect();
    let unk_text = tokens.get(unk as usize).cloned();
    json!({
        "version": "1.0",
        "added_tokens": added_tokens(tokens, types),
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk_text, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                  "ignore_merges": false, "vocab": vocab_map(tokens), "merges": merges}
    })
}

/// Adds a post-processor that prepends BOS (when the model wants it), keeping any existing one.
fn with_bos(mut doc: Json, bos: Option<(u32, String)>) -> Json {
    let Some((id, text)) = bos else { return doc };
    let template = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {text.clone(): {"id": text, "ids": [id], "tokens": [text]}}
    });
    let pp = match doc["post_processor"].take() {
        Json::Null => template,
        existing => json!({"type": "Sequence", "processors": [existing, template]}),
    };
    doc["post_processor"] = pp;
    doc
}
