//! Helpers shared by the model tests (each test crate uses a subset).
#![allow(dead_code)]

use std::path::PathBuf;

use bitscale_engine::model::{Forward, KvCache, SeqChunk};

/// The SmolLM2 file from `scripts/fetch-smollm2.sh`, or `None` when `BITSCALE_SKIP_SMOLLM2=1`.
/// Panics, naming the fix, when the file is missing: a silent skip would hide the real-model tests.
pub fn smollm2_path() -> Option<PathBuf> {
    if std::env::var("BITSCALE_SKIP_SMOLLM2").is_ok_and(|v| v == "1") {
        eprintln!("BITSCALE_SKIP_SMOLLM2=1: skipping a SmolLM2 test");
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

/// The index of the largest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy generation of up to `max_new` tokens for one sequence, stopping at a stop id.
pub fn greedy(model: &dyn Forward, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
    let mut cache: KvCache = model.new_cache();
    let mut out = Vec::new();
    let mut next = {
        let mut batch = [SeqChunk {
            tokens: prompt,
            cache: &mut cache,
            want_logits: true,
        }];
        let logits = model.forward(&mut batch).expect("prefill");
        argmax(logits[0].as_ref().expect("logits"))
    };
    for _ in 0..max_new {
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        let tok = [next];
        let mut batch = [SeqChunk {
            tokens: &tok,
            cache: &mut cache,
            want_logits: true,
        }];
        let logits = model.forward(&mut batch).expect("decode");
        next = argmax(logits[0].as_ref().expect("logits"));
    }
    out
}
