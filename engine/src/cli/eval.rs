//! `bitscale-engine eval`: quality of quantization levels against a reference level.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::resources::parse_duration;
use super::serve::parse_quant;
use crate::eval::{CALIBRATION_TEXT, Candidate, EvalOptions, EvalReport, evaluate};
use crate::model::{DeviceKind, LoadedModel, ModelHeader, QuantLevel, load};

/// Flags of `eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A GGUF file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Levels to measure, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_quant,
          default_value = "bf16,q8_0,q6_k,q5_k,q4_k,q4_0")]
    pub levels: Vec<QuantLevel>,
    /// The level the others are compared with (default: the source file's own precision).
    #[arg(long, value_parser = parse_quant)]
    pub reference: Option<QuantLevel>,
    /// A UTF-8 text file (default: the calibration text shipped with the engine).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Windows run together in one forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_windows: usize,
    /// Tokens of the text to use at most (default: all of it).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Stop after this long (the window group in progress finishes); the report says it was cut.
    #[arg(long, value_parser = parse_duration)]
    pub time_budget: Option<Duration>,
    /// `auto` (a table on a terminal, JSON otherwise), `json` or `table`.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Also write the report as compact JSON to this file, such as a container's
    /// `terminationMessagePath` (`/dev/termination-log`), where a Job's result reaches the pod's
    /// status.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Runs `eval` and prints the report.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let header = ModelHeader::read(&args.model)?;
    let reference_level = args.reference.unwrap_or(header.source_level);
    let text = match &args.text {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => CALIBRATION_TEXT.to_owned(),
    };
    let load_level = |level: QuantLevel| -> anyhow::Result<LoadedModel> {
        load(&args.model, level, DeviceKind::Cpu).with_context(|| format!("loading at {level}"))
    };
    let reference = load_level(reference_level)?;
    let tokens = reference.tokenizer.encode(&text, true)?;
    // Every level is loaded at once so the text streams through them window group by window group.
    let mut others = Vec::new();
    for &level in &args.levels {
        if level != reference_level && !others.iter().any(|(l, _)| *l == level) {
            others.push((level, load_level(level)?));
        }
    }
    let candidates: Vec<Candidate<'_>> = args
        .levels
        .iter()
        .map(|&level| Candidate {
            level: level.to_string(),
            model: others
                .iter()
                .find(|(l, _)| *l == level)
                .map_or(reference.forward.as_ref(), |(_, m)| m.forward.as_ref()),
        })
        .collect();
    let opts = EvalOptions {
        window: args.window,
        windows_per_step: args.batch_windows,
        max_tokens: args.max_tokens,
        time_budget: args.time_budget,
    };
    let comparison = evaluate(reference.forward.as_ref(), &candidates, &tokens, &opts)?;
    let weight_bytes = |name: &str| -> Option<u64> {
        let level: QuantLevel = name.parse().ok()?;
        Some(header.weight_bytes(level))
    };
    let report = EvalReport::new(
        reference.forward.info().name.clone(),
        reference_level.to_string(),
        args.text
            .as_ref()
            .map_or_else(|| "builtin".into(), |p| p.display().to_string()),
        &comparison,
        &weight_bytes,
    );
    let table = match args.format.as_str() {
        "json" => false,
        "table" => true,
        _ => std::io::stdout().is_terminal(),
    };
    if table {
        print!("{}", report.table());
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(path) = &args.output {
        std::fs::write(path, serde_json::to_string(&report)?)
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(())
}
