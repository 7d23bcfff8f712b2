//! `bitscale-engine quantize`: requantize a GGUF file or Hugging Face folder offline into GGUF, as the
//! engine would on load.

use std::path::PathBuf;

use clap::Args;

use crate::model::{QuantLevel, quantize_model};

/// `bitscale-engine quantize --model IN.gguf|HF_DIR --level q8_0 --out OUT.gguf`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The GGUF file or Hugging Face folder (byte-level BPE tokenizer) to read.
    #[arg(long)]
    pub model: PathBuf,
    /// Target level (f32, f16, bf16, q8_0, q6_k, …, q2_k); each tensor gets the dtype the engine
    /// would give it at this level.
    #[arg(long)]
    pub level: String,
    /// Where to write the new GGUF file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes the file and prints a one-line JSON summary.
pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let level: QuantLevel = args.level.parse()?;
    let s = quantize_model(&args.model, level, &args.out)?;
    let summary = serde_json::json!({
        "out": s.out,
        "level": level.as_str(),
        "tensors": s.tensors,
        "tensor_bytes": s.tensor_bytes,
        "bytes_per_token": s.bytes_per_token,
        "dtypes": s.mix,
    });
    println!("{summary}");
    Ok(())
}
