//! The `bitscale-engine` command line: `serve`, `bench`, `pull` and `gen-test-model`.

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
    /// Download a model (https or hf://) into a cache path, resumable, with an optional SHA-256 check.
    Pull(tools::PullArgs),
    /// Write a tiny random-weight Llama as GGUF and as a Hugging Face folder, for tests.
    GenTestModel(tools::GenTestModelArgs),
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
        Command::Pull(args) => tools::pull(args),
        Command::GenTestModel(args) => tools::gen_test_model(args),
    }
}
