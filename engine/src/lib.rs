//! Bitscale's inference engine.
//!
//! - [`pull`]: fetching weights over https or from Hugging Face into a local file, resumable and checked.
//! - [`model`]: loading Llama-family weights (GGUF or safetensors), quantizing them, the tokenizer and
//!   chat template, and a batched forward pass with one KV cache per sequence.
//! - [`scheduler`]: in-flight batching: each step decodes one token for every running sequence and
//!   fills the rest of a token budget with prompt chunks; bounded admission.
//! - [`server`]: the OpenAI-compatible HTTP API, health and readiness, Prometheus metrics.
//! - [`metrics`]: the Prometheus metrics (names documented in `engine/README.md`).
//! - [`cli`]: the `bitscale-engine` command line (`serve`, `bench`).

pub mod bench;
pub mod cli;
pub mod eval;
pub mod metrics;
pub mod model;
pub mod pull;
pub mod scheduler;
pub mod server;
pub mod testing;
