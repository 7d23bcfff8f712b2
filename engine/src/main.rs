//! `bitscale-engine`: see `bitscale-engine --help`.

use clap::Parser;

use bitscale_engine::cli::{self, Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        set_thread_env(cli::serve::threads(args));
        bitscale_engine::model::cap_malloc_arenas();
    }
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bitscale-engine: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// candle and rayon read their thread counts from the environment when their pools start, so
/// this must run before any candle op and before any other thread exists.
///
/// Our kernels run on rayon's pool (`threads` workers). candle keeps a separate spinning pool for
/// the formats it still serves (Q2_K, Q3_K, f32): two pools of `threads` spinners on `threads` cores
/// starve each other (measured: half the tokens per CPU-second), so candle gets one thread.
#[expect(unsafe_code)]
fn set_thread_env(threads: usize) {
    for (var, n) in [("CANDLE_NUM_THREADS", 1), ("RAYON_NUM_THREADS", threads)] {
        if std::env::var_os(var).is_none() {
            // SAFETY: called first thing in `main`, while the process has a single thread, so no
            // other thread can be reading the environment.
            unsafe { std::env::set_var(var, n.to_string()) };
        }
    }
}
