//! Helpers shared by the model tests.

use bitscale_engine::model::{Forward, KvCache, SeqChunk};

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
