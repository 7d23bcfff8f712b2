//! Evaluation on the generated test model: levels order by bits, a level against itself loses
//! nothing, and the header's weight sizing matches what the loader builds.

use crate::eval::{CALIBRATION_TEXT, Candidate, Comparison, EvalOptions, evaluate};
use crate::model::testmodel::{TestModelSpec, write_test_model};
use crate::model::{DeviceKind, LoadedModel, ModelHeader, QuantLevel, load};

/// Wide enough (256) for K-quants to apply as themselves instead of falling back.
fn spec() -> TestModelSpec {
    TestModelSpec {
        hidden: 256,
        ffn: 512,
        heads: 4,
        kv_heads: 2,
        layers: 2,
        ..TestModelSpec::default()
    }
}

fn opts() -> EvalOptions {
    EvalOptions {
        window: 128,
        windows_per_step: 4,
        max_tokens: Some(512),
        time_budget: None,
    }
}

fn compare(reference: &LoadedModel, levels: &[(QuantLevel, &LoadedModel)]) -> Comparison {
    let tokens = reference
        .tokenizer
        .encode(CALIBRATION_TEXT, true)
        .expect("encode");
    let candidates: Vec<_> = levels
        .iter()
        .map(|(l, m)| Candidate {
            level: l.to_string(),
            model: m.forward.as_ref(),
        })
        .collect();
    evaluate(reference.forward.as_ref(), &candidates, &tokens, &opts()).expect("evaluate")
}

#[test]
fn lower_levels_lose_more_and_half_floats_lose_almost_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_test_model(dir.path(), &spec()).expect("test model");
    let at = |l| load(&files.gguf, l, DeviceKind::Cpu).expect("load");
    let reference = at(QuantLevel::F32);
    let levels = [
        QuantLevel::F16,
        QuantLevel::Bf16,
        QuantLevel::Q8_0,
        QuantLevel::Q4K,
        QuantLevel::Q2K,
    ];
    let models: Vec<_> = levels.iter().map(|&l| at(l)).collect();
    let pairs: Vec<_> = levels.iter().copied().zip(models.iter()).collect();
    let c = compare(&reference, &pairs);
    let ref_ppl = c.reference.perplexity();
    let kl = |i: usize| c.levels[i].1.mean_kl();
    let incr = |i: usize| c.levels[i].1.perplexity() / ref_ppl - 1.0;
    for (i, l) in levels.iter().enumerate() {
        eprintln!("{l}: KL {:.6}, ppl increase {:.5}", kl(i), incr(i));
    }
    assert!(c.reference.tokens > 500, "scored {}", c.reference.tokens);
    // f16 and bf16 against f32: near zero.
    assert!(kl(0) < 1e-4 && kl(1) < 1e-3, "f16 {} bf16 {}", kl(0), kl(1));
    assert!(incr(0).abs() < 1e-3 && incr(1).abs() < 1e-3);
    // q8_0 < q4_k < q2_k in KL. A random-weight model predicts nearly uniformly (perplexity near
    // its vocabulary size), so its perplexity moves by noise at the better levels; only the
    // largest loss shows there. `tests/quality.rs` checks perplexity ordering on SmolLM2.
    assert!(kl(2) < kl(3) && kl(3) < kl(4), "KL {} {} {}", kl(2), kl(3), kl(4));
    assert!(
        incr(4) > incr(2) && incr(4) > incr(3),
        "ppl {} {} {}",
        incr(2),
        incr(3),
        incr(4)
    );
}

#[test]
fn a_level_against_itself_has_zero_kl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_test_model(dir.path(), &TestModelSpec::default()).expect("test model");
    let reference = load(&files.gguf, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load");
    // A second, separately loaded copy: the forward pass is deterministic, so nothing differs.
    let again = load(&files.gguf, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load");
    let c = compare(
        &reference,
        &[(QuantLevel::Q8_0, &reference), (QuantLevel::Q8_0, &again)],
    );
    for (_, t) in &c.levels {
        assert_eq!(t.mean_kl(), 0.0);
        assert_eq!(t.top1_agreement(), 1.0);
        assert_eq!(t.perplexity(), c.reference.perplexity());
    }
}

#[test]
fn time_budget_stops_after_the_first_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_test_model(dir.path(), &TestModelSpec::default()).expect("test model");
    let m = load(&files.gguf, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load");
    let tokens = m.tokenizer.encode(CALIBRATION_TEXT, true).expect("encode");
    let opts = EvalOptions {
        window: 64,
        windows_per_step: 2,
        max_tokens: None,
        time_budget: Some(std::time::Duration::ZERO),
    };
    let c = evaluate(m.forward.as_ref(), &[], &tokens, &opts).expect("evaluate");
    assert!(c.truncated);
    assert_eq!(c.reference.tokens, 2 * 63);
}

#[test]
fn header_sizing_matches_the_loaded_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    for tied in [false, true] {
        let spec = TestModelSpec { tied, ..spec() };
        let files = write_test_model(&dir.path().join(format!("tied-{tied}")), &spec).expect("test model");
        for path in [&files.gguf, &files.hf_dir] {
            let header = ModelHeader::read(path).expect("header");
            assert_eq!(header.source_level, QuantLevel::F32);
            for level in QuantLevel::ALL {
                let m = load(path, level, DeviceKind::Cpu).expect("load");
                let info = m.forward.info();
                assert_eq!(
                    header.weight_bytes(level),
                    info.weight_bytes,
                    "{} at {level}, tied {tied}",
                    path.display()
                );
                assert_eq!(header.kv_bytes_per_token, info.kv_bytes_per_token);
            }
        }
    }
}

#[test]
fn header_sizing_matches_the_loaded_weights_of_quantized_files() {
    // A quantized file served at its own level keeps its mix; at another level it is converted.
    // The narrow default spec makes K-quant files a mix of fallbacks.
    let dir = tempfile::tempdir().expect("tempdir");
    for (spec, name) in [(spec(), "wide"), (TestModelSpec::default(), "narrow")] {
        let spec = TestModelSpec { tied: true, ..spec };
        let files = write_test_model(&dir.path().join(name), &spec).expect("test model");
        for source in [QuantLevel::Q4K, QuantLevel::Q4_1, QuantLevel::Q6K] {
            let file = dir.path().join(format!("{name}-{source}.gguf"));
            crate::model::quantize_model(&files.gguf, source, &file).expect("quantize");
            let header = ModelHeader::read(&file).expect("header");
            for level in [source, QuantLevel::Q8_0, QuantLevel::Q4_0, QuantLevel::Q2K] {
                let m = load(&file, level, DeviceKind::Cpu).expect("load");
                assert_eq!(
                    header.weight_bytes(level),
                    m.forward.info().weight_bytes,
                    "{name} {source} file at {level}"
                );
            }
        }
    }
}

#[test]
fn an_unusable_text_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_test_model(dir.path(), &TestModelSpec::default()).expect("test model");
    let m = load(&files.gguf, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load");
    assert!(evaluate(m.forward.as_ref(), &[], &[1], &EvalOptions::default()).is_err());
}

#[test]
fn served_quality_is_measured_against_the_source_precision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_test_model(dir.path(), &TestModelSpec::default()).expect("test model");
    let budget = std::time::Duration::ZERO;
    let served = load(&files.gguf, QuantLevel::Q4_0, DeviceKind::Cpu).expect("load");
    let q = crate::eval::measure_served(
        &files.gguf,
        served.forward.as_ref(),
        QuantLevel::Q4_0,
        (None, budget),
    )
    .expect("measure");
    assert_eq!(q.reference, "f32");
    assert!(q.kl > 0.0 && q.tokens > 0, "{q:?}");
    // Served at the source's own precision: zero by definition, nothing run.
    let source = load(&files.gguf, QuantLevel::F32, DeviceKind::Cpu).expect("load");
    let q = crate::eval::measure_served(
        &files.gguf,
        source.forward.as_ref(),
        QuantLevel::F32,
        (None, budget),
    )
    .expect("measure");
    assert_eq!((q.kl, q.ppl_increase, q.tokens), (0.0, 0.0, 0));
}
