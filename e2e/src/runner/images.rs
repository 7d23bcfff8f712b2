//! Which container images the pod runner runs, and as which of this workspace's binaries.
//!
//! An image runs here when its repository's last path component names one of the workspace's
//! binaries (`ghcr.io/bitscale-dev/bitscale-engine:0.1.0`, `bitscale-engine:test`,
//! `…/bitscale-operator@sha256:…`); its entrypoint is that binary. Every other image stays
//! KWOK's to fake: [`KWOK_SKIP_QUERY`] is the same rule as a KWOK stage selector.

/// A workspace binary that stands in for an image's entrypoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `bitscale-engine`: the inference server (and `pull`, `eval`, …).
    Engine,
    /// `bitscale-operator`: the controller the Helm chart deploys.
    Operator,
}

impl Program {
    /// Every program the runner knows.
    pub const ALL: [Program; 2] = [Program::Engine, Program::Operator];

    /// The binary's file name, also the image repository's last path component.
    pub fn binary(self) -> &'static str {
        match self {
            Program::Engine => "bitscale-engine",
            Program::Operator => "bitscale-operator",
        }
    }

    /// The arguments the image runs with when a container sets none (its `CMD`).
    pub fn default_args(self) -> &'static [&'static str] {
        match self {
            Program::Engine => &["serve", "--help"],
            Program::Operator => &[],
        }
    }
}

/// The program an image runs as, if the runner runs it.
pub fn program_for(image: &str) -> Option<Program> {
    // `registry:5000/org/name:tag@sha256:…` → `name`.
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repository = last.split(':').next().unwrap_or(last);
    Program::ALL.into_iter().find(|p| p.binary() == repository)
}

/// Whether the runner owns a pod: any of its containers or init containers runs a known image.
pub fn runs_pod(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.image.as_deref().and_then(program_for).is_some())
}

/// A KWOK stage selector key (a jq query) that yields `true` for pods the runner owns; KWOK's
/// pod stages require it `NotIn [true]`, so KWOK never writes their status or deletes them.
pub const KWOK_SKIP_QUERY: &str = r#"(.spec.containers + (.spec.initContainers // [])) | map(.image // "" | split("@")[0] | split("/")[-1] | split(":")[0] | IN("bitscale-engine", "bitscale-operator")) | any"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_to_workspace_binaries_by_repository_name() {
        for (image, program) in [
            (
                "ghcr.io/bitscale-dev/bitscale-engine:0.1.0",
                Some(Program::Engine),
            ),
            (
                "ghcr.io/bitscale-dev/bitscale-engine:0.1.0-cuda",
                Some(Program::Engine),
            ),
            ("bitscale-engine:test", Some(Program::Engine)),
            (
                "localhost:5000/bitscale-operator@sha256:abc",
                Some(Program::Operator),
            ),
            ("bitscale-operator", Some(Program::Operator)),
            ("registry.k8s.io/pause:3.10", None),
            ("example.com/bitscale-engine-fake:1", None),
            ("", None),
        ] {
            assert_eq!(program_for(image), program, "{image}");
        }
    }

    #[test]
    fn the_kwok_query_names_every_program() {
        for program in Program::ALL {
            assert!(KWOK_SKIP_QUERY.contains(&format!("\"{}\"", program.binary())));
        }
    }
}
