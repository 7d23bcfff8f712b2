//! The model layer's error type. Every variant that comes from a file names it, so an operator
//! reading a pod log knows which file to fix.

use std::path::PathBuf;

/// Why loading, tokenizing or running a model failed.
///
/// Public functions return `anyhow::Result`; callers that need to branch can
/// `err.downcast_ref::<ModelError>()`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // --- Files ---
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a model: expected a .gguf file or a folder with config.json")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: corrupt or unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: missing metadata `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    // --- What the engine supports ---
    #[error("{path}: unsupported architecture `{arch}` (supported: Llama-family decoders)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{path}: tensor `{name}` has unsupported type {dtype}")]
    UnsupportedTensorType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: unsupported configuration: {reason}")]
    UnsupportedConfig { path: PathBuf, reason: String },
    #[error(
        "unknown quantization level `{0}` (expected one of f32, f16, bf16, q8_0, q6_k, q5_k, q5_0, q5_1, q4_k, q4_0, q4_1, q3_k, q2_k)"
    )]
    UnknownQuantLevel(String),
    #[error(
        "--device cuda: this bitscale-engine was built without CUDA support; rebuild it with `cargo build --release -p bitscale-engine --features cuda`"
    )]
    CudaNotCompiled,
    #[error("--device cuda: no CUDA driver or device found: {0}")]
    NoCudaDevice(String),

    // --- Tokenizer and chat template ---
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the model has no chat template; use the completions API")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    ChatTemplate(String),

    // --- Running ---
    #[error("sequence would reach position {needed}, beyond the context length {context_length}")]
    ContextOverflow { needed: usize, context_length: usize },
    #[error("token id {id} is outside the vocabulary ({vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("a KV cache passed to forward was not created by this model")]
    ForeignCache,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
