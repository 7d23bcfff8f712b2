//! Where the harness keeps things: the binary cache, the cluster's state directory, and locks.
//!
//! ```text
//! <cache>/                      BITSCALE_CACHE_DIR, else $XDG_CACHE_HOME/bitscale, else ~/.cache/bitscale
//!   <part>-<version>/bin/       built binaries, kept across clusters
//!   cluster.lock                held while a cluster is being started or stopped
//!   cluster/                    the running cluster: pki/, kubeconfigs, etcd data, logs/, pids/,
//!                               prometheus/, pods/ (one folder per pod the pod runner runs)
//! ```
//!
//! Another cluster beside the default one (a test of `down`, say) lives in `<cache>/<name>/`
//! with its own lock and its own pod range ([`Layout::named`]).

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use crate::Error;

/// The harness's directories on this machine.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
    cluster: String,
}

/// The default cluster's name, its directory under the cache.
const DEFAULT_CLUSTER: &str = "cluster";

impl Layout {
    /// The layout under the cache directory chosen by the environment (see the module docs).
    pub fn from_env() -> Result<Self, Error> {
        let root = if let Some(dir) = std::env::var_os("BITSCALE_CACHE_DIR") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(dir).join("bitscale")
        } else if let Some(home) = std::env::var_os("HOME") {
            PathBuf::from(home).join(".cache").join("bitscale")
        } else {
            return Err(Error::NoCacheDir);
        };
        Ok(Self {
            root,
            cluster: DEFAULT_CLUSTER.to_owned(),
        })
    }

    /// The same cache, another cluster: `<cache>/<name>/`, its own lock and pod range.
    pub fn named(&self, name: &str) -> Self {
        Self {
            root: self.root.clone(),
            cluster: name.to_owned(),
        }
    }

    /// The first two octets of this cluster's pod range, `127.x.0.0/16`: 127.2 for the default
    /// cluster, 127.100–127.199 by name for others (KWOK's own fake pods use 127.1).
    pub fn pod_range(&self) -> [u8; 2] {
        if self.cluster == DEFAULT_CLUSTER {
            return [127, 2];
        }
        let hash = self
            .cluster
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        [127, 100 + (hash % 100) as u8]
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The running cluster's state directory.
    pub fn cluster_dir(&self) -> PathBuf {
        self.root.join(&self.cluster)
    }

    /// The lock serializing start and stop of the cluster; outside `cluster/` so removing that keeps it.
    pub fn cluster_lock(&self) -> PathBuf {
        self.root.join(format!("{}.lock", self.cluster))
    }
}

/// An exclusive advisory lock on a file, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Blocks until the exclusive lock on `path` is ours, creating the file if needed.
pub fn lock(path: &Path) -> Result<FileLock, Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io("opening lock", path))?;
    if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
        eprintln!(
            "bitscale-e2e: waiting for {} (another run holds it)",
            path.display()
        );
    }
    file.lock().map_err(Error::io("locking", path))?;
    Ok(FileLock { _file: file })
}

/// `BITSCALE_BIN_DIR` names where the workspace's binaries are (`bitscale-engine`,
/// `bitscale-operator`, `bitscale-e2e`) for the pod runner.
pub const BIN_DIR_ENV: &str = "BITSCALE_BIN_DIR";

/// Where this workspace's binaries are: `$BITSCALE_BIN_DIR`, else the Cargo profile directory of
/// the running executable (`target/debug` for `target/debug/bitscale-e2e`, for a test binary in
/// `target/debug/deps/` and for an example in `target/debug/examples/`).
pub fn workspace_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(Error::io("finding", "the running executable"))?;
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps" || n == "examples") {
        dir.pop();
    }
    Ok(dir)
}
