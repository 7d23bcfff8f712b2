//! A tiny random-weight Llama for tests and demos, written both as GGUF and as a Hugging Face
//! folder (safetensors + `config.json` + `tokenizer.json` + `tokenizer_config.json`).
//!
//! Its tokenizer is a byte-level BPE: 256 byte tokens, a few English merges and the special tokens
//! `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`, so any text encodes. Weights come from a seeded
//! generator, so the same spec always gives the same files.

use serde_json::{Value as Json, json};

/// Special tokens of the test vocabulary, at ids 0..4.
pub const SPECIAL_TOKENS: [&str; 4] = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];

/// The ChatML template the test model ships (the same text SmolLM2 uses).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"),
    ("r", "e"), ("Ġ", "s"), ("a", "t"), ("e", "n"), ("o", "r"), ("Ġ", "w"), ("Ġ", "c"),
    ("i", "s"), ("Ġ", "o"), ("a", "n"), ("e", "s"), ("i", "t"), ("Ġ", "p"), ("Ġ", "f"),
    ("in", "g"), ("Ġ", "b"), ("a", "r"), ("Ġ", "m"), ("l", "l"), ("Ġo", "f"), ("Ġ", "i"),
    ("Ġa", "nd"), ("n", "d"), ("Ġ", "h"), ("o", "u"), ("Ġ", "d"), ("Ġ", "P"), ("Ġ", "C"),
    ("Ġi", "s"), ("Ġt", "o"), ("Ġc", "ap"), ("a", "p"), ("Ġ", "F"),
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
    let vocab: serde_json::Map<String, Json> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let merges: Vec<Json> = merges.iter().filter_map(|m| m.split_once(' ')).map(|(a, b)| json!([a, b])).collect();
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
