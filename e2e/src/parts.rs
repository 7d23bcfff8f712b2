//! The upstream programs the cluster is made of, and building them once into a per-version cache.
//!
//! Each part is a small Go wrapper module under `e2e/go/<part>/` whose `go.mod`/`go.sum` pin the
//! upstream version; `go build` turns it into binaries under `<cache>/<part>-<version>/bin/`. A part
//! whose binaries are all there is not built again.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Error,
    error::tail,
    paths::{self, Layout},
};

/// The build runs for minutes; a progress line this often tells the user it is alive.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// One upstream part, built from its wrapper module.
#[derive(Debug)]
pub struct Part {
    /// Short name, also the wrapper module's directory under `e2e/go/`.
    pub name: &'static str,
    /// The upstream version the wrapper module pins; names the cache directory.
    pub version: &'static str,
    /// Go packages to build, one binary each.
    packages: &'static [&'static str],
    /// The binaries `go build` produces from `packages`.
    pub binaries: &'static [&'static str],
    /// Linker flags; Kubernetes and Helm read their version from here.
    ldflags: &'static str,
    /// Go build tags (comma-separated), if any.
    tags: &'static str,
    /// A rough first-build time on 2 cores, shown while building.
    estimate: &'static str,
}

/// Kubernetes control plane and kubectl.
pub const KUBERNETES: Part = Part {
    name: "kubernetes",
    version: "v1.37.2",
    packages: &[
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kubectl",
    ],
    binaries: &[
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
    ],
    // Without these the binaries report v0.0.0, which kubectl, Helm and version checks reject.
    ldflags: "-s -w \
        -X k8s.io/component-base/version.gitVersion=v1.37.2 \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=37 \
        -X k8s.io/component-base/version.gitTreeState=clean \
        -X k8s.io/client-go/pkg/version.gitVersion=v1.37.2 \
        -X k8s.io/client-go/pkg/version.gitMajor=1 \
        -X k8s.io/client-go/pkg/version.gitMinor=37 \
        -X k8s.io/client-go/pkg/version.gitTreeState=clean",
    tags: "",
    estimate: "15-30 min",
};

/// etcd, the API server's storage.
pub const ETCD: Part = Part {
    name: "etcd",
    version: "v3.6.16",
    // The server module's root package is etcd's `main`.
    packages: &["go.etcd.io/etcd/server/v3"],
    binaries: &["etcd"],
    ldflags: "-s -w",
    tags: "",
    estimate: "3-6 min",
};

/// KWOK, which plays kubelet for fake nodes.
pub const KWOK: Part = Part {
    name: "kwok",
    version: "v0.8.0",
    packages: &["sigs.k8s.io/kwok/cmd/kwok"],
    binaries: &["kwok"],
    ldflags: "-s -w",
    tags: "",
    estimate: "3-6 min",
};

/// Helm, for installing the chart in tests.
pub const HELM: Part = Part {
    name: "helm",
    version: "v3.22.0",
    packages: &["helm.sh/helm/v3/cmd/helm"],
    binaries: &["helm"],
    ldflags: "-s -w -X helm.sh/helm/v3/internal/version.version=v3.22.0 \
        -X helm.sh/helm/v3/internal/version.gitTreeState=clean",
    tags: "",
    estimate: "3-6 min",
};

/// Prometheus, scraping the engine pods; module v0.316.0 is Prometheus 3.16.0. Built with only
/// its Kubernetes service discovery: the other plugins' cloud SDKs would double the build, and
/// Debian's package leaves Kubernetes discovery out.
pub const PROMETHEUS: Part = Part {
    name: "prometheus",
    version: "v3.16.0",
    packages: &["github.com/prometheus/prometheus/cmd/prometheus"],
    binaries: &["prometheus"],
    ldflags: "-s -w -X github.com/prometheus/common/version.Version=3.16.0",
    tags: "remove_all_sd,enable_kubernetes_sd",
    estimate: "4-8 min",
};

/// Every part, in build order.
pub const ALL: [&Part; 5] = [&ETCD, &KUBERNETES, &KWOK, &HELM, &PROMETHEUS];

impl Part {
    /// The directory this part's binaries are cached in.
    pub fn bin_dir(&self, layout: &Layout) -> PathBuf {
        layout
            .root()
            .join(format!("{}-{}", self.name, self.version))
            .join("bin")
    }

    /// The path of one of this part's binaries.
    pub fn binary(&self, layout: &Layout, name: &str) -> PathBuf {
        self.bin_dir(layout).join(name)
    }

    fn is_built(&self, layout: &Layout) -> bool {
        let dir = self.bin_dir(layout);
        self.binaries
            .iter()
            .all(|b| std::fs::metadata(dir.join(b)).is_ok_and(|m| m.is_file() && m.len() > 0))
    }

    fn module_dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("go").join(self.name)
    }

    /// Builds this part unless its binaries are cached. Blocks; progress goes to stderr.
    pub fn ensure_built(&self, layout: &Layout) -> Result<(), Error> {
        if self.is_built(layout) {
            return Ok(());
        }
        let part_dir = layout.root().join(format!("{}-{}", self.name, self.version));
        std::fs::create_dir_all(&part_dir).map_err(Error::io("creating", &part_dir))?;
        // Two processes (parallel test binaries, a test and `up`) must not build the same part at once.
        let _lock = paths::lock(&part_dir.join("build.lock"))?;
        if self.is_built(layout) {
            return Ok(());
        }
        check_go(self.name)?;

        let staging = part_dir.join("bin.partial");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(Error::io("removing", &staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(Error::io("creating", &staging))?;
        let log_path = part_dir.join("build.log");
        let log = File::create(&log_path).map_err(Error::io("creating", &log_path))?;
        let log_err = log.try_clone().map_err(Error::io("opening", &log_path))?;

        eprintln!(
            "bitscale-e2e: building {} {} from {} (first time only, about {} on 2 cores; log: {})",
            self.name,
            self.version,
            self.module_dir().display(),
            self.estimate,
            log_path.display()
        );
        let started = Instant::now();
        // With one package `-o` names the binary (etcd's would otherwise be called "server");
        // with several it is a directory, which Go marks by a trailing slash.
        let output = match self.binaries {
            [single] if self.packages.len() == 1 => staging.join(single).into_os_string(),
            _ => {
                let mut dir = staging.clone().into_os_string();
                dir.push("/");
                dir
            }
        };
        let mut child = Command::new("go")
            .current_dir(self.module_dir())
            // -v lists each package as it is compiled: the progress count below reads it.
            .args(["build", "-v", "-trimpath", "-ldflags", self.ldflags])
            .args(if self.tags.is_empty() {
                vec![]
            } else {
                vec!["-tags", self.tags]
            })
            .arg("-o")
            .arg(&output)
            .args(self.packages)
            .env("GOFLAGS", "-buildvcs=false")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: "go".into(),
                source,
            })?;

        let mut next_report = started + REPORT_EVERY;
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(Error::io("waiting for go build of", self.module_dir()))?
            {
                break status;
            }
            std::thread::sleep(Duration::from_millis(500));
            if Instant::now() >= next_report {
                next_report += REPORT_EVERY;
                let elapsed = started.elapsed().as_secs();
                let packages = std::fs::read_to_string(&log_path)
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
                eprintln!(
                    "bitscale-e2e:   {} {}: {}m{:02}s, {packages} packages compiled",
                    self.name,
                    self.version,
                    elapsed / 60,
                    elapsed % 60
                );
            }
        };
        if !status.success() {
            return Err(Error::GoBuild {
                part: format!("{} {}", self.name, self.version),
                status,
                log: log_path.clone(),
                tail: tail(&log_path, 30),
            });
        }

        let bin_dir = self.bin_dir(layout);
        std::fs::create_dir_all(&bin_dir).map_err(Error::io("creating", &bin_dir))?;
        for binary in self.binaries {
            let from = staging.join(binary);
            let to = bin_dir.join(binary);
            std::fs::rename(&from, &to).map_err(Error::io("moving built binary", &from))?;
        }
        std::fs::remove_dir_all(&staging).map_err(Error::io("removing", &staging))?;
        eprintln!(
            "bitscale-e2e: built {} {} in {}m{:02}s",
            self.name,
            self.version,
            started.elapsed().as_secs() / 60,
            started.elapsed().as_secs() % 60
        );
        Ok(())
    }
}

/// Builds every part that is not cached yet, one at a time (each `go build` already uses every core).
pub fn ensure_all_built(layout: &Layout) -> Result<(), Error> {
    for part in ALL {
        part.ensure_built(layout)?;
    }
    Ok(())
}

fn check_go(part: &'static str) -> Result<(), Error> {
    let output = Command::new("go")
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::GoMissing { part, source })?;
    if !output.status.success() {
        return Err(Error::GoMissing {
            part,
            source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
        });
    }
    eprintln!(
        "bitscale-e2e: using {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
    Ok(())
}
