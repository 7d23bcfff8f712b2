//! Where the harness keeps things: the binary cache, the cluster's state directory, and locks.
//!
//! ```text
//! <cache>/                      BITSCALE_CACHE_DIR, else $XDG_CACHE_HOME/bitscale, else ~/.cache/bitscale
//!   <part>-<version>/bin/       built binaries, kept across clusters
//!   cluster.lock                held while a cluster is being started or stopped
//!   cluster/                    the running cluster: pki/, kubeconfigs, etcd data, logs/, pids/
//! ```

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use crate::Error;

/// The harness's directories on this machine.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

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
        Ok(Self { root })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The running cluster's state directory.
    pub fn cluster_dir(&self) -> PathBuf {
        self.root.join("cluster")
    }

    /// The lock serializing start and stop of the cluster; outside `cluster/` so removing that keeps it.
    pub fn cluster_lock(&self) -> PathBuf {
        self.root.join("cluster.lock")
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
