//! Quality ordering on a model with structure: SmolLM2-135M-Instruct, its Q4_1 file as the
//! reference, other levels requantized from it. Lower levels must lose more, in perplexity and in
//! KL. One window of 64 tokens keeps it under a minute on 2 cores (the margins are ~10× apart).
//!
//! Needs `scripts/fetch-smollm2.sh`; set `BITSCALE_SKIP_SMOLLM2=1` to skip.

mod common;

use bitscale_engine::eval::{CALIBRATION_TEXT, Candidate, EvalOptions, evaluate};
use bitscale_engine::model::{DeviceKind, QuantLevel, load};
use common::smollm2_path;

#[test]
fn smollm2_levels_order_by_quality_loss() {
    let Some(path) = smollm2_path() else { return };
    let at = |l| load(&path, l, DeviceKind::Cpu).expect("load SmolLM2");
    let reference = at(QuantLevel::Q4_1);
    let levels = [QuantLevel::Q8_0, QuantLevel::Q4K, QuantLevel::Q2K];
    let models: Vec<_> = levels.iter().map(|&l| at(l)).collect();
    let candidates: Vec<_> = levels
        .iter()
        .zip(&models)
        .map(|(l, m)| Candidate {
            level: l.to_string(),
            model: m.forward.as_ref(),
        })
        .collect();
    let tokens = reference
        .tokenizer
        .encode(CALIBRATION_TEXT, true)
        .expect("encode");
    let opts = EvalOptions {
        window: 64,
        windows_per_step: 1,
        max_tokens: Some(64),
        time_budget: None,
    };
    let c = evaluate(reference.forward.as_ref(), &candidates, &tokens, &opts).expect("evaluate");
    let ref_ppl = c.reference.perplexity();
    let kl: Vec<f64> = c.levels.iter().map(|(_, t)| t.mean_kl()).collect();
    let incr: Vec<f64> = c
        .levels
        .iter()
        .map(|(_, t)| t.perplexity() / ref_ppl - 1.0)
        .collect();
    eprintln!("reference q4_1 perplexity {ref_ppl:.3}; q8_0, q4_k, q2_k: KL {kl:?}, ppl increase {incr:?}");
    assert!(kl[0] < kl[1] && kl[1] < kl[2], "KL {kl:?}");
    assert!(incr[0] < incr[1] && incr[1] < incr[2], "ppl increase {incr:?}");
}
