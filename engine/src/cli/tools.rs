//! Small subcommands: `pull` (fetch a model into a cache volume) and `gen-test-model`.

use std::path::PathBuf;

use clap::Args;

use crate::model::testmodel::{SHAPES, TestModelSpec, write_test_model};

/// `bitscale-engine pull SOURCE --dest PATH [--sha256 HEX]`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// `https://…` URL or `hf://org/name@revision/path/in/repo` (endpoint from `HF_ENDPOINT`).
    pub source: String,
    /// Where to write the file; a partial download beside it is resumed.
    #[arg(long)]
    pub dest: PathBuf,
    /// Expected SHA-256 of the file (hex); a mismatch fails and keeps nothing.
    #[arg(long)]
    pub sha256: Option<String>,
}

/// `bitscale-engine gen-test-model --out DIR [--shape NAME]`.
#[derive(Debug, Args)]
pub struct GenTestModelArgs {
    /// Folder to write `test-llama.gguf` and `test-llama-hf/` into.
    #[arg(long)]
    pub out: PathBuf,
    /// Random seed of the weights.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Shape: `tiny` (the test model, GGUF f32 and a Hugging Face folder), or a real model's
    /// shape with random weights as an f16 GGUF only: `tinyllama-1.1b` (2.2 GB) or
    /// `llama-3.2-1b` (2.5 GB).
    #[arg(long, default_value = "tiny", value_parser = clap::builder::PossibleValuesParser::new(SHAPES))]
    pub shape: String,
}

pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = rt.block_on(crate::pull::pull(
        &args.source,
        &args.dest,
        args.sha256.as_deref(),
    ))?;
    println!("{}", path.display());
    Ok(())
}

pub fn gen_test_model(args: GenTestModelArgs) -> anyhow::Result<()> {
    let shape =
        TestModelSpec::shape(&args.shape).ok_or_else(|| anyhow::anyhow!("unknown shape {}", args.shape))?;
    let spec = TestModelSpec {
        seed: args.seed,
        ..shape
    };
    let files = write_test_model(&args.out, &spec)?;
    println!("{}", files.gguf.display());
    if spec.hf {
        println!("{}", files.hf_dir.display());
    }
    Ok(())
}
