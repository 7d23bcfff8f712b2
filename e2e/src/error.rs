//! The one error type of the harness, with enough context to act on without reading the code.

use std::{path::PathBuf, process::ExitStatus, time::Duration};

/// Everything that can go wrong while building, starting, using or stopping the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `go` is not on `PATH`, so the control-plane binaries cannot be built.
    #[error(
        "the Go toolchain is needed to build {part} once (cached afterwards), but `go` was not found on PATH: {source}\n\
         install Go 1.26 or newer (e.g. from https://go.dev/dl, or a distribution package of that version) and retry"
    )]
    GoMissing {
        /// The part that needed building.
        part: &'static str,
        /// Why running `go version` failed.
        source: std::io::Error,
    },

    /// `go build` of one part failed; its full output is in `log`.
    #[error("building {part} failed ({status}); see {log}:\n{tail}", log = log.display())]
    GoBuild {
        /// The part being built, e.g. `kubernetes v1.37.2`.
        part: String,
        /// How `go build` exited.
        status: ExitStatus,
        /// The build log.
        log: PathBuf,
        /// The last lines of the build log.
        tail: String,
    },

    /// A file or directory operation failed.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What the harness was doing, e.g. "writing".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A program could not be started at all.
    #[error("starting {program}: {source}", program = program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Neither `BITSCALE_CACHE_DIR`, `XDG_CACHE_HOME` nor `HOME` is set, so there is nowhere to cache.
    #[error("cannot find a cache directory: set BITSCALE_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,

    /// Generating a certificate or key failed.
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),

    /// A manifest or state file could not be (de)serialized.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The underlying error.
        source: serde_json::Error,
    },

    /// The generated kubeconfig could not be loaded.
    #[error("loading kubeconfig {path}: {source}", path = path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The underlying error.
        source: kube::config::KubeconfigError,
    },

    /// A request to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// A control-plane process exited while the harness waited for it.
    #[error("{component} exited ({status}) during start-up; last lines of {log}:\n{tail}", log = log.display())]
    Exited {
        /// The component, e.g. `kube-apiserver`.
        component: &'static str,
        /// How it exited, as far as the harness can tell.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// Something did not happen in time; `last` is the last state the harness saw.
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// What the harness waited for.
        what: String,
        /// How long it waited.
        timeout: Duration,
        /// The last observed state (an object, a status, or an error).
        last: String,
    },

    /// The object waited on was deleted, or never existed, when the condition held.
    #[error("{kind} {name} does not exist")]
    Missing {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
    },

    /// A background task (a blocking build or stop) panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),

    /// An HTTP health probe client could not be set up.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),

    /// A raw API request could not be built.
    #[error("building a request: {0}")]
    Request(#[from] http::Error),

    /// A command that needs a running cluster found none.
    #[error("no local cluster is running; start one with `cargo run -p bitscale-e2e -- up`")]
    NotRunning,

    /// A component a command needs is not running.
    #[error("{0} is not running in this cluster")]
    ComponentNotRunning(String),
}

impl Error {
    /// An [`Error::Io`] for `path`, for use with `map_err`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { action, path, source }
    }
}

/// The last `lines` lines of a log file, or a note saying why it could not be read.
pub(crate) fn tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
