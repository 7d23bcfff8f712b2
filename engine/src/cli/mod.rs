//! The `bitscale-engine` command line: `serve`, `bench`, `eval`, `plan`, `quantize`, `pull` and
//! `gen-test-model`.

pub mod eval;
pub mod plan;
pub mod quantize;
pub mod resources;
pub mod serve;
pub mod tools;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

/// Bitscale's inference engine.
#[derive(Debug, Parser)]
#[command(name = "bitscale-engine", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `auto` (JSON when stderr is not a terminal), `json` or `text`.
    #[arg(long, global = true, default_value = "auto", env = "BITSCALE_LOG_FORMAT")]
    pub log_format: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Load-test a running server (loopback only) and print latency and throughput as JSON.
    Bench(crate::bench::BenchArgs),
    /// Measure quality loss (perplexity, KL, top-1) of quantization levels against a reference level.
    Eval(eval::EvalArgs),
    /// Print the memory a replica needs (weights + KV + overhead) at a level, context and concurrency.
    Plan(plan::PlanArgs),
    /// Download a model (https or hf://) into a cache path, resumable, with an optional SHA-256 check.
    Pull(tools::PullArgs),
    /// Write a tiny random-weight Llama as GGUF and as a Hugging Face folder, for tests.
    GenTestModel(tools::GenTestModelArgs),
    /// Requantize a GGUF file or HF folder to a level, with the engine's per-tensor dtypes, into GGUF.
    Quantize(quantize::QuantizeArgs),
}

/// Sets up tracing to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the command line; the process exit code is 0 on `Ok`.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(&cli.log_format);
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => crate::bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Pull(args) => tools::pull(args),
        Command::GenTestModel(args) => tools::gen_test_model(args),
        Command::Quantize(args) => quantize::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// The flags the operator's Deployment builder passes (operator/src/build/deployment.rs) must
    /// stay accepted here; a rename on either side breaks every pod.
    #[test]
    fn accepts_the_operators_engine_flags() {
        let argv = "bitscale-engine serve --model /models/m.gguf --quantization q4_k --device cpu --port 8000 \
                    --threads 4 --max-running 4 --context-length 2048 --kv-cache-tokens 8192 --log-format json";
        let cli = Cli::try_parse_from(argv.split_whitespace()).expect("operator flags parse");
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.context_length, Some(2048));
        assert_eq!(args.kv_cache_tokens, Some(8192));
        assert_eq!(cli.log_format, "json");
    }

    #[test]
    fn accepts_the_operators_pull_flags() {
        let argv = "bitscale-engine pull hf://org/name@main/m.gguf --dest /models/m.gguf --sha256 abcd";
        let cli = Cli::try_parse_from(argv.split_whitespace()).expect("pull flags parse");
        assert!(matches!(cli.command, Command::Pull(_)));
    }
}
