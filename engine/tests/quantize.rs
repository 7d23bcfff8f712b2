//! `quantize_model`: a file requantized offline serves exactly like the original requantized on load,
//! from a GGUF file and from a Hugging Face folder.

mod common;

use bitscale_engine::model::testmodel::{TestModelSpec, write_test_model};
use bitscale_engine::model::{DeviceKind, QuantLevel, load, quantize_model};

#[test]
fn q8_0_file_generates_like_loading_the_original_at_q8_0() {
    for tied in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = TestModelSpec {
            tied,
            ..TestModelSpec::default()
        };
        let files = write_test_model(dir.path(), &spec).expect("test model");
        let out = dir.path().join("q8_0.gguf");
        let summary = quantize_model(&files.gguf, QuantLevel::Q8_0, &out).expect("quantize");
        assert!(summary.mix.contains_key("Q8_0"), "{:?}", summary.mix);

        let original = load(&files.gguf, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load original");
        let requantized = load(&out, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load requantized");
        assert_eq!(
            original.forward.info().weight_bytes,
            requantized.forward.info().weight_bytes
        );
        let ids = original
            .tokenizer
            .encode("the capital of France is", false)
            .expect("encode");
        assert_eq!(
            requantized
                .tokenizer
                .encode("the capital of France is", false)
                .expect("encode"),
            ids,
            "tokenizer metadata must survive"
        );
        let a = common::greedy(original.forward.as_ref(), &ids, 24, &[]);
        let b = common::greedy(requantized.forward.as_ref(), &ids, 24, &[]);
        assert_eq!(a.len(), 24);
        assert_eq!(a, b, "tied={tied}");
        assert!(requantized.tokenizer.has_chat_template());
    }
}

#[test]
fn hf_folder_converts_to_the_same_model_as_its_gguf_twin() {
    for tied in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = TestModelSpec {
            tied,
            ..TestModelSpec::default()
        };
        let files = write_test_model(dir.path(), &spec).expect("test model");
        let out = dir.path().join("hf-q8_0.gguf");
        quantize_model(&files.hf_dir, QuantLevel::Q8_0, &out).expect("quantize HF folder");

        let twin = load(&files.gguf, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load GGUF twin");
        let converted = load(&out, QuantLevel::Q8_0, DeviceKind::Cpu).expect("load converted");
        let text = "the capital of France is Paris";
        let ids = twin.tokenizer.encode(text, false).expect("encode");
        assert_eq!(converted.tokenizer.encode(text, false).expect("encode"), ids);
        assert_eq!(
            converted.tokenizer.stop_token_ids(),
            twin.tokenizer.stop_token_ids()
        );
        assert!(converted.tokenizer.has_chat_template());
        let a = common::greedy(twin.forward.as_ref(), &ids, 24, &[]);
        let b = common::greedy(converted.forward.as_ref(), &ids, 24, &[]);
        assert_eq!(a, b, "tied={tied}");
    }
}
