//! Tokenizer tests on the generated test vocabulary, from both sources.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{self, Value};

use super::testmodel::{self, CHAT_TEMPLATE};
use super::{ChatMessage, ModelError, Tokenizer};

fn from_json() -> Tokenizer {
    let bytes = serde_json::to_vec(&testmodel::tokenizer_json()).expect("json");
    Tokenizer::from_json_bytes(
        &bytes,
        Some(CHAT_TEMPLATE.into()),
        &["<|im_end|>", "</s>"],
        Some("<s>"),
    )
    .expect("tokenizer")
}

fn gguf_content(model: &str) -> gguf_file::Content {
    let (tokens, types, merges) = testmodel::vocab();
    let mut metadata = HashMap::new();
    let strs = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    metadata.insert("tokenizer.ggml.model".into(), Value::String(model.into()));
    metadata.insert("tokenizer.ggml.tokens".into(), strs(&tokens));
    metadata.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    metadata.insert("tokenizer.ggml.merges".into(), strs(&merges));
    metadata.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
    metadata.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(3));
    metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    metadata.insert(
        "tokenizer.chat_template".into(),
        Value::String(CHAT_TEMPLATE.into()),
    );
    gguf_file::Content {
        magic: gguf_file::VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

#[test]
fn json_round_trips_any_text() {
    let t = from_json();
    for text in ["the cat is on the mat", "Ünïcödé ✓ 123\n\ttabs", ""] {
        let ids = t.encode(text, false).expect("encode");
        assert_eq!(t.decode(&ids).expect("decode"), text);
    }
    // Merges apply: " the" is one token.
    let ids = t.encode(" the", false).expect("encode");
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[test]
fn gguf_gpt2_matches_json() {
    let a = from_json();
    let b = Tokenizer::from_gguf(&gguf_content("gpt2")).expect("gguf tokenizer");
    let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n";
    assert_eq!(a.encode(text, true).expect("a"), b.encode(text, true).expect("b"));
    // EOS first, then the vocabulary's end-of-turn tokens.
    assert_eq!(b.stop_token_ids(), &[3, 1]);
    assert_eq!(a.stop_token_ids(), &[3, 1]);
}

#[test]
fn special_tokens_in_text_are_single_ids_and_skipped_on_decode() {
    let t = from_json();
    let ids = t.encode("<|im_start|>hi<|im_end|>", false).expect("encode");
    assert_eq!(ids.first(), Some(&2));
    assert_eq!(ids.last(), Some(&3));
    assert_eq!(t.decode(&ids).expect("decode"), "hi");
}

#[test]
fn chat_template_renders_chatml() {
    let t = from_json();
    let out = t
        .apply_chat_template(&[ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }])
        .expect("render");
    assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn missing_template_is_a_typed_error() {
    let bytes = serde_json::to_vec(&testmodel::tokenizer_json()).expect("json");
    let t = Tokenizer::from_json_bytes(&bytes, None, &[], None).expect("tokenizer");
    let err = t.apply_chat_template(&[]).expect_err("no template");
    assert!(matches!(
        err.downcast_ref::<ModelError>(),
        Some(ModelError::NoChatTemplate)
    ));
}

#[test]
fn gguf_llama_spm_encodes_with_byte_fallback() {
    // A miniature SentencePiece vocabulary: <unk>, <s>, </s>, byte tokens, pieces with scores.
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = ["▁", "h", "e", "l", "o", "he", "ll", "llo", "hello", "▁hello"];
    let first = tokens.len();
    for p in pieces {
        tokens.push(p.into());
        types.push(1);
    }
    let scores: Vec<f32> = (0..tokens.len())
        .map(|i| if i >= first { i as f32 } else { 0.0 })
        .collect();
    let mut c = gguf_content("llama");
    let md = &mut c.metadata;
    md.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().cloned().map(Value::String).collect()),
    );
    md.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    md.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(scores.into_iter().map(Value::F32).collect()),
    );
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    md.remove("tokenizer.ggml.merges");
    let t = Tokenizer::from_gguf(&c).expect("spm tokenizer");
    let ids = t.encode("hello!", true).expect("encode");
    let hello = tokens.iter().position(|x| x == "▁hello").expect("piece") as u32;
    assert_eq!(ids, vec![1, hello, 3 + b'!' as u32]);
    assert_eq!(t.decode(&ids).expect("decode"), "hello!");
    assert_eq!(t.stop_token_ids(), &[2]);
}
