//! Correctness of the forward pass on the generated test model: against candle-transformers' Llama,
//! across file formats, across batch shapes, and across quantization levels.

mod common;

use std::path::Path;

use bitscale_engine::model::testmodel::{TestModelFiles, TestModelSpec, write_test_model};
use bitscale_engine::model::{
    DeviceKind, Forward, KvCache, LoadedModel, ModelError, QuantLevel, SeqChunk, load,
};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama as reference;

fn files(dir: &Path, tied: bool) -> TestModelFiles {
    write_test_model(
        dir,
        &TestModelSpec {
            tied,
            ..TestModelSpec::default()
        },
    )
    .expect("write test model")
}

fn prefill_logits(model: &dyn Forward, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut batch = [SeqChunk {
        tokens: ids,
        cache: &mut cache,
        want_logits: true,
    }];
    model.forward(&mut batch).expect("forward")[0]
        .clone()
        .expect("logits")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

fn prompt(m: &LoadedModel, text: &str) -> Vec<u32> {
    m.tokenizer.encode(text, false).expect("encode")
}

#[test]
fn matches_candle_transformers_llama_at_f32() {
    for tied in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = files(dir.path(), tied);
        let ours = load(&f.hf_dir, QuantLevel::F32, DeviceKind::Cpu).expect("load");
        let ids = prompt(
            &ours,
            "the capital of France is Paris, and the capital of Italy is",
        );
        assert!(ids.len() > 10);
        let got = prefill_logits(ours.forward.as_ref(), &ids);

        let cfg: reference::LlamaConfig =
            serde_json::from_slice(&std::fs::read(f.hf_dir.join("config.json")).expect("config"))
                .expect("parse");
        let cfg = cfg.into_config(false);
        let tensors =
            candle_core::safetensors::load(f.hf_dir.join("model.safetensors"), &Device::Cpu).expect("st");
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = reference::Llama::load(vb, &cfg).expect("reference");
        let mut cache = reference::Cache::new(true, DType::F32, &cfg, &Device::Cpu).expect("cache");
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .expect("x")
            .unsqueeze(0)
            .expect("x");
        let want: Vec<f32> = model
            .forward(&x, 0, &mut cache)
            .expect("fwd")
            .flatten_all()
            .expect("f")
            .to_vec1()
            .expect("v");

        let d = max_diff(&got, &want);
        // Our cache holds K and V as f16 (relative rounding 2⁻¹¹), the reference's as f32: the
        // logits then differ by ~2·10⁻⁴ of the largest; a wrong rotation, mask or scale moves
        // them by a good fraction of it.
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            d < 1e-3 * scale,
            "tied={tied}: max logit difference {d} of {scale}"
        );
    }
}

#[test]
fn gguf_f32_equals_safetensors_f32() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = files(dir.path(), false);
    let a = load(&f.gguf, QuantLevel::F32, DeviceKind::Cpu).expect("gguf");
    let b = load(&f.hf_dir, QuantLevel::F32, DeviceKind::Cpu).expect("hf");
    let ids = prompt(&a, "<|im_start|>user\nhello there<|im_end|>\n");
    assert_eq!(ids, prompt(&b, "<|im_start|>user\nhello there<|im_end|>\n"));
    let d = max_diff(
        &prefill_logits(a.forward.as_ref(), &ids),
        &prefill_logits(b.forward.as_ref(), &ids),
    );
    assert!(d < 1e-4, "max logit difference {d}");
    assert_eq!(a.forward.info().vocab_size, b.forward.info().vocab_size);
}

/// Greedy outputs of ragged batches (some sequences mid-prefill in chunks, some decoding, joining at
/// different steps) equal those of each sequence run alone.
#[test]
fn batching_does_not_change_greedy_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = files(dir.path(), false);
    for level in [QuantLevel::Q8_0, QuantLevel::F32] {
        let m = load(&f.gguf, level, DeviceKind::Cpu).expect("load");
        let prompts: Vec<Vec<u32>> = [
            "a",
            "the cat sat on the mat",
            "hello, world! how are you today?",
            "12345",
        ]
        .iter()
        .map(|p| prompt(&m, p))
        .collect();
        let new_tokens = 8;
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| common::greedy(m.forward.as_ref(), p, new_tokens, &[]))
            .collect();

        // Sequence i joins at step i and prefills in chunks of 3 tokens while others decode.
        let mut caches: Vec<KvCache> = prompts.iter().map(|_| m.forward.new_cache()).collect();
        let mut fed = vec![0usize; prompts.len()];
        let mut outs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        for step in 0..100 {
            let active: Vec<usize> = (0..prompts.len())
                .filter(|&i| i <= step && outs[i].len() < new_tokens)
                .collect();
            if active.is_empty() {
                break;
            }
            let mut toks = Vec::new();
            let mut wants = Vec::new();
            for &i in &active {
                let p = &prompts[i];
                if fed[i] < p.len() {
                    let end = (fed[i] + 3).min(p.len());
                    toks.push(p[fed[i]..end].to_vec());
                    wants.push(end == p.len());
                } else {
                    toks.push(vec![*outs[i].last().expect("generated")]);
                    wants.push(true);
                }
            }
            let mut batch: Vec<SeqChunk<'_>> = Vec::new();
            for (i, c) in caches.iter_mut().enumerate() {
                if let Some(k) = active.iter().position(|&a| a == i) {
                    batch.push(SeqChunk {
                        tokens: &toks[k],
                        cache: c,
                        want_logits: wants[k],
                    });
                }
            }
            let logits = m.forward.forward(&mut batch).expect("forward");
            drop(batch);
            for (k, &i) in active.iter().enumerate() {
                if fed[i] < prompts[i].len() {
                    fed[i] += toks[k].len();
                }
                assert_eq!(logits[k].is_some(), wants[k]);
                if let Some(l) = &logits[k] {
                    outs[i].push(common::argmax(l));
                }
            }
        }
        for (i, out) in outs.iter().enumerate() {
            assert_eq!(out, &alone[i], "{level}: sequence {i}");
        }
    }
}

#[test]
fn every_level_loads_and_stays_close_to_f32() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = files(dir.path(), true);
    let base = load(&f.hf_dir, QuantLevel::F32, DeviceKind::Cpu).expect("f32");
    let ids = prompt(&base, "the quick brown fox jumps over the lazy dog");
    let want = prefill_logits(base.forward.as_ref(), &ids);
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
    for level in QuantLevel::ALL {
        for path in [&f.hf_dir, &f.gguf] {
            let m = load(path, level, DeviceKind::Cpu).unwrap_or_else(|e| panic!("{level}: {e:#}"));
            assert_eq!(m.forward.info().quantization, level);
            let got = prefill_logits(m.forward.as_ref(), &ids);
            assert!(got.iter().all(|x| x.is_finite()), "{level}: non-finite logits");
            let d = max_diff(&got, &want);
            let tol = match level {
                QuantLevel::F32 | QuantLevel::F16 | QuantLevel::Bf16 => 0.05,
                QuantLevel::Q8_0
                | QuantLevel::Q6K
                | QuantLevel::Q5K
                | QuantLevel::Q5_0
                | QuantLevel::Q5_1 => 0.15,
                _ => 0.6,
            };
            assert!(d < tol * scale, "{level}: max diff {d} vs logit scale {scale}");
        }
    }
}

#[test]
fn load_errors_name_the_file_and_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.gguf");
    let err = load(&missing, QuantLevel::Q8_0, DeviceKind::Cpu)
        .err()
        .expect("missing");
    assert!(
        matches!(err.downcast_ref::<ModelError>(), Some(ModelError::Io { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("nope.gguf"));

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"definitely not a gguf file").expect("write");
    let err = load(&garbage, QuantLevel::Q8_0, DeviceKind::Cpu)
        .err()
        .expect("corrupt");
    assert!(
        matches!(err.downcast_ref::<ModelError>(), Some(ModelError::Corrupt { .. })),
        "{err}"
    );

    let f = files(dir.path(), false);
    let cfg_path = f.hf_dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .expect("read")
        .replace("\"llama\"", "\"gemma\"");
    std::fs::write(&cfg_path, cfg).expect("write");
    let err = load(&f.hf_dir, QuantLevel::Q8_0, DeviceKind::Cpu)
        .err()
        .expect("arch");
    assert!(
        matches!(
            err.downcast_ref::<ModelError>(),
            Some(ModelError::UnsupportedArchitecture { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("config.json"), "{err}");
}

/// A cache forked at a prefix (the engine's prefix cache) continues exactly as a fresh prefill:
/// the logits after the rest of the prompt are bit for bit the same, and the source is untouched.
#[test]
fn a_forked_prefix_gives_the_logits_of_a_full_prefill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = files(dir.path(), false);
    for level in [QuantLevel::Q8_0, QuantLevel::Q4K, QuantLevel::F16] {
        let m = load(&f.gguf, level, DeviceKind::Cpu).expect("load");
        let model = m.forward.as_ref();
        let ids = prompt(&m, "the cat sat on the mat and looked at the dog");
        let full = prefill_logits(model, &ids);

        let mut source = model.new_cache();
        let mut batch = [SeqChunk {
            tokens: &ids,
            cache: &mut source,
            want_logits: false,
        }];
        model.forward(&mut batch).expect("forward");
        let split = ids.len() / 2;
        // Forks `source` at `split` and runs the rest of the prompt on the copy.
        let resume = |source: &KvCache| {
            let mut forked = model.fork_cache(source, split).expect("the model forks caches");
            assert_eq!(forked.len(), split);
            let mut batch = [SeqChunk {
                tokens: &ids[split..],
                cache: &mut forked,
                want_logits: true,
            }];
            model.forward(&mut batch).expect("forward")[0]
                .clone()
                .expect("logits")
        };
        assert_eq!(resume(&source), full, "{level:?}");
        assert_eq!(source.len(), ids.len(), "the source cache is unchanged");
        assert!(model.fork_cache(&source, ids.len() + 1).is_none());
        // Compacting (as the prefix cache does before keeping it) keeps every position.
        model.compact_cache(&mut source);
        assert_eq!(resume(&source), full, "{level:?} after compacting");
    }
}

/// A small model with real-model rows (multiples of 256, as the `--shape` presets have): at q4_k
/// its matrices are Q4_K, not the Q5_0 fallback of narrower rows, and it generates; a padded
/// vocabulary sizes the head.
#[test]
fn rows_of_256_keep_their_k_quants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = TestModelSpec {
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        vocab: 1000,
        gguf_dtype: candle_core::quantized::GgmlDType::F16,
        hf: false,
        ..TestModelSpec::default()
    };
    let f = write_test_model(dir.path(), &spec).expect("write test model");
    assert!(!f.hf_dir.exists());
    let out = dir.path().join("q4_k.gguf");
    let summary = bitscale_engine::model::quantize_model(&f.gguf, QuantLevel::Q4K, &out).expect("quantize");
    // Seven matrices a layer at Q4_K; the embedding and head at Q6_K; norms f32.
    let want = [("F32", 2 * 2 + 1), ("Q4K", 7 * 2), ("Q6K", 2)];
    let want: std::collections::BTreeMap<String, usize> =
        want.iter().map(|&(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(summary.mix, want);
    for (path, level) in [(&f.gguf, QuantLevel::Q8_0), (&out, QuantLevel::Q4K)] {
        let m = load(path, level, DeviceKind::Cpu).expect("load");
        assert_eq!(m.forward.info().vocab_size, 1000);
        let ids = prompt(&m, "the capital of France is");
        let got = common::greedy(m.forward.as_ref(), &ids, 8, &[]);
        assert_eq!(got.len(), 8, "{level}");
    }
}
