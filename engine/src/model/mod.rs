//! Models: loading, quantization, tokenizer, and the batched forward pass.
//!
//! The contract with the scheduler is [`Forward`]: one call runs one engine step over a ragged batch
//! of sequences, each at its own position with its own [`KvCache`].
//!
//! - `loader`: GGUF / Hugging Face folder → weights at a [`QuantLevel`] (requantizing as needed).
//! - `llama`, `attention`, `linear`: the batched forward pass (rows of all sequences stacked into
//!   one matrix per matmul; RoPE, attention and KV per sequence on the host).
//! - [`Tokenizer`]: `tokenizer.json` or GGUF vocabulary, plus the chat template.
//! - `convert`: offline requantization to a GGUF file ([`quantize_model`]).
//! - [`testmodel`]: a tiny random-weight Llama for tests (`write_test_model`).

use std::path::Path;

mod attention;
mod chat_template;
mod config;
mod convert;
mod convert_hf;
mod error;
mod kernels;
mod linear;
mod llama;
mod loader;
mod quant;
mod sizing;
pub mod testmodel;
mod tokenizer;
#[cfg(test)]
mod tokenizer_tests;

pub use convert::{QuantizeSummary, quantize_model};
pub use error::ModelError;
pub use kernels::KernelSet;
pub use linear::kernels_label;
pub use sizing::ModelHeader;
pub use tokenizer::Tokenizer;

/// A quantization level the engine can serve a model at: the definition the CRD and the operator
/// use (its candle dtype: [`LevelDtype`]).
pub use bitscale_api::QuantLevel;
pub use quant::LevelDtype;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// What a loaded model is, for `/v1/models`, metrics and sizing.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The served model name (defaults to the file or folder stem).
    pub name: String,
    pub quantization: QuantLevel,
    pub device: DeviceKind,
    /// Maximum positions a sequence may reach (prompt + generated).
    pub context_length: usize,
    pub vocab_size: usize,
    /// Bytes of the loaded weights.
    pub weight_bytes: u64,
    /// KV cache bytes per token of one sequence (all layers, K and V).
    pub kv_bytes_per_token: u64,
}

/// One sequence's part of a forward step.
pub struct SeqChunk<'a> {
    /// Tokens to append: one for a decode step, up to the chunk size for prefill.
    pub tokens: &'a [u32],
    /// The sequence's cache; `tokens` take positions `cache.len()..cache.len() + tokens.len()`.
    pub cache: &'a mut KvCache,
    /// Whether logits of the chunk's last token are wanted (false for non-final prefill chunks).
    pub want_logits: bool,
}

/// A per-sequence KV cache. The scheduler sees only its length; the model keeps its tensors in
/// `state` (a fake model in tests keeps nothing).
pub struct KvCache {
    len: usize,
    state: Box<dyn std::any::Any + Send>,
}

impl KvCache {
    pub fn new(state: Box<dyn std::any::Any + Send>) -> Self {
        Self { len: 0, state }
    }
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A cache whose first `len` positions are already in `state` (a copied prefix).
    pub fn with_len(state: Box<dyn std::any::Any + Send>, len: usize) -> Self {
        Self { len, state }
    }
    /// The model's own state, if it is of type `T`.
    pub fn state_ref<T: 'static>(&self) -> Option<&T> {
        self.state.downcast_ref::<T>()
    }
    /// Records that `n` more positions were written (called by the model after a step).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
    /// The model's own state, if it is of type `T`.
    pub fn state_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.state.downcast_mut::<T>()
    }
}

/// The batched forward pass the scheduler drives.
pub trait Forward: Send + Sync {
    /// Runs one step over all chunks together (their rows share every matmul) and returns, per chunk,
    /// the last token's logits (`vocab_size` f32) when `want_logits`, else `None`.
    fn forward(&self, batch: &mut [SeqChunk<'_>]) -> anyhow::Result<Vec<Option<Vec<f32>>>>;
    /// Like [`Forward::forward`], but returns the logits of every token of every chunk
    /// (`tokens.len() × vocab_size` f32, row-major), for evaluation (`eval`). Models that cannot
    /// do this say so.
    fn forward_every_position(&self, batch: &mut [SeqChunk<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let _ = batch;
        anyhow::bail!("this model cannot return logits at every position")
    }
    /// A new, empty cache for one sequence.
    fn new_cache(&self) -> KvCache;
    /// A new cache holding the first `len` positions of `cache` (a shared prompt prefix), or
    /// `None` when the model cannot copy its caches.
    fn fork_cache(&self, cache: &KvCache, len: usize) -> Option<KvCache> {
        let _ = (cache, len);
        None
    }
    /// Makes room in `cache` for `positions` in all, at once: the scheduler reserves a sequence's
    /// whole KV (`prompt + max_tokens`) in the pool, and growing by doubling would both copy the
    /// cache and hold up to twice what was reserved. (Untouched capacity costs no resident
    /// memory until it is written.)
    fn reserve_cache(&self, cache: &mut KvCache, positions: usize) {
        let _ = (cache, positions);
    }
    /// Releases the spare capacity of `cache` (before it is kept for reuse, so the bytes it is
    /// counted for are the bytes it holds).
    fn compact_cache(&self, cache: &mut KvCache) {
        let _ = cache;
    }
    fn info(&self) -> &ModelInfo;
}

/// One chat message, as in the OpenAI API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A model ready to serve.
pub struct LoadedModel {
    pub forward: std::sync::Arc<dyn Forward>,
    pub tokenizer: std::sync::Arc<Tokenizer>,
}

/// Loads a GGUF file or a Hugging Face folder and quantizes it to `level`.
///
/// `path` is a `.gguf` file or a folder with `config.json`, `*.safetensors`, `tokenizer.json` and
/// optionally `tokenizer_config.json`. Errors are [`ModelError`]s naming the file at fault.
pub fn load(path: &Path, level: QuantLevel, device: DeviceKind) -> anyhow::Result<LoadedModel> {
    let model = loader::load(path, level, device)?;
    release_freed_memory();
    Ok(model)
}

/// Opens the device tensors of `kind` live on (CUDA: the first GPU).
///
/// Fails with [`ModelError::CudaNotCompiled`] for `cuda` in a build without the `cuda` feature,
/// and with [`ModelError::NoCudaDevice`] where the driver or a GPU is missing.
pub fn open_device(kind: DeviceKind) -> Result<candle_core::Device, ModelError> {
    match kind {
        DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => candle_core::Device::new_cuda(0).map_err(|e| {
            // candle appends a backtrace where RUST_BACKTRACE is set; the cause is the message.
            let cause = match e {
                candle_core::Error::WithBacktrace { inner, .. } => *inner,
                e => e,
            };
            ModelError::NoCudaDevice(cause.to_string())
        }),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(ModelError::CudaNotCompiled),
    }
}

/// Hands the pages malloc holds free back to the OS. Loading frees a model's worth of transient
/// buffers (tensors as read, dequantized f32, GGML blocks before packing); glibc keeps most of
/// them (its mmap threshold rises to the size of the first large block freed, so later ones come
/// from arenas it only trims from the top). Measured on SmolLM2-135M: 4–19 MiB of resident
/// memory that varied by level (most at f16 and q6_k) and that no one would ever use again, which made
/// the steady RSS unpredictable from the weights. The loader also calls it after every decoder
/// block: kept until the end, those buffers put the load's peak 24 MiB above the serving RSS at
/// f16 (above `plan`), where a pod's memory limit would have killed it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "one FFI call into glibc with no arguments from us")]
pub(crate) fn release_freed_memory() {
    // SAFETY: `malloc_trim` only walks glibc's own arenas under their locks; it takes no
    // pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_freed_memory() {}

/// glibc arenas a serving process may use, unless `MALLOC_ARENA_MAX` says otherwise.
pub const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`]. By default glibc gives threads up to eight
/// arenas per core, and each keeps the step buffers it last freed: a decode step runs on
/// whichever rayon worker picks it up, so over time every worker's arena caches a step's worth
/// (logits alone are 4 × vocabulary bytes per sequence). Measured with `scripts/rss-vs-plan` on
/// SmolLM2-135M at f16: serving RSS 306 MiB with 2 threads, 318 with 8, 342 with 16 — past
/// `plan`, which a pod's memory limit is set from. Capped, 16 threads serve at 2 threads' RSS,
/// and batch-1 and 8-stream throughput at 2 threads are unchanged (within noise). Must run before
/// the process starts any thread; a `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "one FFI call into glibc with constant arguments")]
pub fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: `mallopt` takes no pointers; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn cap_malloc_arenas() {}
