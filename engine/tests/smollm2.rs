//! The real model: SmolLM2-135M-Instruct answers a simple question through its chat template, and
//! our forward pass agrees with candle's reference implementation on the shipped file.
//!
//! The chat check asks "Name the capital of France." because "What is the capital of France?"
//! starts with a near-tie even in exact f32 arithmetic ("The" 25.33 vs "L" 25.24, where "L" leads
//! to a French non-answer), so any rounding change can flip it; the imperative phrasing answers
//! "The capital of France is Paris." at f32, f16, q8_0, q6_k, q4_1 and q4_0 alike.
//!
//! Needs `scripts/fetch-smollm2.sh`; set `BITSCALE_SKIP_SMOLLM2=1` to skip.

mod common;

use bitscale_engine::model::{ChatMessage, DeviceKind, QuantLevel, SeqChunk, load};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use common::smollm2_path;

fn answer(level: QuantLevel) -> Option<String> {
    let path = smollm2_path()?;
    let m = load(&path, level, DeviceKind::Cpu).expect("load SmolLM2");
    let prompt = m
        .tokenizer
        .apply_chat_template(&[ChatMessage {
            role: "user".into(),
            content: "Name the capital of France.".into(),
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

/// Logits of `text`'s last token from a loaded model.
fn last_logits(m: &bitscale_engine::model::LoadedModel, text: &str) -> Vec<f32> {
    let ids = m.tokenizer.encode(text, false).expect("encode");
    let mut cache = m.forward.new_cache();
    let mut batch = [SeqChunk {
        tokens: &ids,
        cache: &mut cache,
        want_logits: true,
    }];
    m.forward.forward(&mut batch).expect("forward")[0]
        .clone()
        .expect("logits")
}

/// Logits of `text`'s last token from candle-transformers' `quantized_llama` on the file.
fn candle_logits(path: &std::path::Path, ids: &[u32]) -> Vec<f32> {
    let mut f = std::fs::File::open(path).expect("open");
    let content = gguf_file::Content::read(&mut f).expect("gguf");
    let mut reference = ModelWeights::from_gguf(content, &mut f, &Device::Cpu).expect("reference");
    let x = Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    reference
        .forward(&x, 0)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("reference forward")
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

/// On the file as shipped (Q4_1), our quantized forward pass is about as close to the exact
/// function of those weights (our f32 level: every weight dequantized, f32 matmuls) as candle's own
/// `quantized_llama` is, averaged over several prompts, and picks the same next token. Both
/// quantize activations to 8 bits per matmul (llama.cpp's scheme); SmolLM2's residual stream has
/// channels near ±400, so that rounding moves single-prompt logits by 0.1–0.5 either way, and
/// only the average says something.
#[test]
fn smollm2_q4_1_is_as_accurate_as_candle_quantized_llama() {
    let Some(path) = smollm2_path() else { return };
    let quantized = load(&path, QuantLevel::Q4_1, DeviceKind::Cpu).expect("load SmolLM2");
    let exact = load(&path, QuantLevel::F32, DeviceKind::Cpu).expect("load SmolLM2 at f32");
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village",
        "The quick brown fox jumps over the lazy dog and",
        "Water boils at a temperature of",
        "def fibonacci(n):\n    if n <",
        "The three primary colors are red, blue and",
        "In 1969, the first humans landed on",
    ];
    let (mut ours_err, mut theirs_err) = (0f32, 0f32);
    for text in prompts {
        let ids = quantized.tokenizer.encode(text, false).expect("encode");
        let want = last_logits(&exact, text);
        let ours = last_logits(&quantized, text);
        let theirs = candle_logits(&path, &ids);
        ours_err += mean_abs_diff(&ours, &want) / prompts.len() as f32;
        theirs_err += mean_abs_diff(&theirs, &want) / prompts.len() as f32;
        if text == prompts[0] {
            assert_eq!(common::argmax(&ours), common::argmax(&want), "{text}");
            assert_eq!(common::argmax(&theirs), common::argmax(&want), "{text}");
            let next = quantized
                .tokenizer
                .decode(&[common::argmax(&ours)])
                .expect("decode");
            assert_eq!(next.trim(), "Paris");
        }
    }
    println!(
        "mean |logit - exact| over {} prompts: ours {ours_err} candle {theirs_err}",
        prompts.len()
    );
    assert!(
        ours_err <= 1.5 * theirs_err,
        "ours {ours_err} vs candle {theirs_err}"
    );
}

/// One token at a time (m = 1 kernels) gives the same logits as the whole prompt at once.
#[test]
fn smollm2_stepwise_equals_prefill() {
    let Some(path) = smollm2_path() else { return };
    let m = load(&path, QuantLevel::Q4_1, DeviceKind::Cpu).expect("load SmolLM2");
    let text = "The capital of France is";
    let ours = last_logits(&m, text);
    let ids = m.tokenizer.encode(text, false).expect("encode");
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
    assert_eq!(ours, stepwise);
}

/// Timing, not a check: `BITSCALE_STEP_MODEL=FILE.gguf BITSCALE_STEP_LEVEL=q8_0 cargo test
/// --release -p bitscale-engine --test smollm2 -- --ignored --nocapture step_timing` prints the
/// wall time of a decode step at batch 1 and 8 (prompts of `BITSCALE_STEP_PROMPT` tokens, 32 by
/// default, then the next 64 positions), the best of several passes: the HTTP benchmark's noise on
/// a shared VM (±10 %) hides the few-percent effects of work outside the matmul kernels, and the
/// minimum is the least disturbed run. Long prompts show attention's share of a step.
#[test]
#[ignore = "timing"]
fn step_timing() {
    let path = match std::env::var_os("BITSCALE_STEP_MODEL") {
        Some(p) => std::path::PathBuf::from(p),
        None => match smollm2_path() {
            Some(p) => p,
            None => return,
        },
    };
    let level: QuantLevel = std::env::var("BITSCALE_STEP_LEVEL")
        .unwrap_or_else(|_| "q8_0".into())
        .parse()
        .expect("BITSCALE_STEP_LEVEL");
    let m = load(&path, level, DeviceKind::Cpu).expect("load");
    let model = m.forward.as_ref();
    let prompt_len: usize = std::env::var("BITSCALE_STEP_PROMPT")
        .map(|v| v.parse().expect("BITSCALE_STEP_PROMPT: a token count"))
        .unwrap_or(32);
    let (steps, passes) = (64, 7);
    for batch in [1, 8] {
        // Prefill once; every pass decodes from copies of these caches.
        let prefilled: Vec<_> = (0..batch)
            .map(|s| {
                let ids: Vec<u32> = (0..prompt_len).map(|i| (100 + 37 * s + 11 * i) as u32).collect();
                let mut cache = model.new_cache();
                model.reserve_cache(&mut cache, prompt_len + steps);
                let mut chunk = [SeqChunk {
                    tokens: &ids,
                    cache: &mut cache,
                    want_logits: false,
                }];
                model.forward(&mut chunk).expect("prefill");
                cache
            })
            .collect();
        let best = (0..passes)
            .map(|_| {
                let mut caches: Vec<_> = prefilled
                    .iter()
                    .map(|c| model.fork_cache(c, c.len()).expect("fork"))
                    .collect();
                let start = std::time::Instant::now();
                for step in 0..steps {
                    let toks: Vec<[u32; 1]> = (0..batch).map(|s| [(500 + 13 * s + step) as u32]).collect();
                    let mut chunks: Vec<SeqChunk<'_>> = caches
                        .iter_mut()
                        .zip(&toks)
                        .map(|(cache, t)| SeqChunk {
                            tokens: t,
                            cache,
                            want_logits: true,
                        })
                        .collect();
                    model.forward(&mut chunks).expect("decode");
                }
                start.elapsed().as_secs_f64() / steps as f64
            })
            .fold(f64::INFINITY, f64::min);
        println!(
            "{level} batch {batch}, {prompt_len}-token prompts: {:.3} ms a step, {:.1} tok/s (best of \
             {passes} passes of {steps} steps, {} rayon threads)",
            best * 1e3,
            batch as f64 / best,
            rayon::current_num_threads()
        );
    }
}
