//! The real model: SmolLM2-135M-Instruct answers a simple question through its chat template, and
//! our forward pass agrees with candle's reference implementation on the shipped file.
//!
//! The Q4_1 file's greedy chat answer starts with a near-tie (\"L\" vs \"The\", 0.3 logits apart in
//! both implementations), so the chat check runs at q8_0.
//!
//! Needs `scripts/fetch-smollm2.sh`; set `BITSCALE_SKIP_SMOLLM2=1` to skip.

mod common;

use std::path::PathBuf;

use bitscale_engine::model::{ChatMessage, DeviceKind, QuantLevel, SeqChunk, load};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

fn smollm2_path() -> Option<PathBuf> {
    if std::env::var("BITSCALE_SKIP_SMOLLM2").is_ok_and(|v| v == "1") {
        return None;
    }
    let root = std::env::var_os("BITSCALE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/bitscale/models")
        });
    let path = root.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh (or set BITSCALE_SKIP_SMOLLM2=1)",
        path.display()
    );
    Some(path)
}

fn answer(level: QuantLevel) -> Option<String> {
    let path = smollm2_path()?;
    let m = load(&path, level, DeviceKind::Cpu).expect("load SmolLM2");
    let prompt = m
        .tokenizer
        .apply_chat_template(&[ChatMessage {
            role: "user".into(),
            content: "What is the capital of France?".into(),
        }])
        .expect("chat template");
    let ids = m.tokenizer.encode(&prompt, false).expect("encode");
    let out = common::greedy(m.forward.as_ref(), &ids, 24, m.tokenizer.stop_token_ids());
    Some(m.tokenizer.decode(&out).expect("decode"))
}

#[test]
fn smollm2_q8_0_knows_paris() {
    if let Some(text) = answer(QuantLevel::Q8_0) {
        assert!(text.contains("Paris"), "answer: {text:?}");
    }
}

/// The file as shipped (Q4_1) gives the same logits as candle's own `quantized_llama` on it.
#[test]
fn smollm2_q4_1_matches_candle_quantized_llama() {
    let Some(path) = smollm2_path() else { return };
    let m = load(&path, QuantLevel::Q4_1, DeviceKind::Cpu).expect("load SmolLM2");
    let ids = m
        .tokenizer
        .encode("The capital of France is", false)
        .expect("encode");

    let mut cache = m.forward.new_cache();
    let mut batch = [SeqChunk {
        tokens: &ids,
        cache: &mut cache,
        want_logits: true,
    }];
    let ours = m.forward.forward(&mut batch).expect("forward")[0]
        .clone()
        .expect("logits");

    let mut f = std::fs::File::open(&path).expect("open");
    let content = gguf_file::Content::read(&mut f).expect("gguf");
    let mut reference = ModelWeights::from_gguf(content, &mut f, &Device::Cpu).expect("reference");
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .expect("ids")
        .unsqueeze(0)
        .expect("batch");
    let theirs: Vec<f32> = reference
        .forward(&x, 0)
        .expect("forward")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");

    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let mean_diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
    println!(
        "max {max_diff} mean {mean_diff} argmax {} {} top {:?} {:?}",
        common::argmax(&ours),
        common::argmax(&theirs),
        &ours[..4],
        &theirs[..4]
    );
    // One token at a time (m = 1 kernels) against the prefill (m > 1) of our own model.
    let mut cache = m.forward.new_cache();
    let mut stepwise = Vec::new();
    for t in &ids {
        let tok = [*t];
        let mut batch = [SeqChunk {
            tokens: &tok,
            cache: &mut cache,
            want_logits: true,
        }];
        stepwise = m.forward.forward(&mut batch).expect("step")[0]
            .clone()
            .expect("logits");
    }
    let self_diff = ours
        .iter()
        .zip(&stepwise)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("prefill vs stepwise max diff {self_diff}");
    assert!(max_diff < 1.0, "max logit difference {max_diff}");
    assert_eq!(common::argmax(&ours), common::argmax(&theirs));
    let text = m.tokenizer.decode(&[common::argmax(&ours)]).expect("decode");
    assert_eq!(text.trim(), "Paris");
}
