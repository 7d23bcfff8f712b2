//! Where the engine finds the weights: a path in the image, a file on a PVC, or a download into a
//! cache volume by an init container.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Volume, VolumeMount,
};

/// Mount point of the model volume in the engine container.
pub const MODEL_DIR: &str = "/models";

/// What the pod needs to see the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelMount {
    /// Path of the weights file inside the engine container.
    pub path: String,
    /// The volume holding the weights, if any.
    pub volume: Option<Volume>,
    /// How the engine container mounts it.
    pub mount: Option<VolumeMount>,
    /// Whether an init container must fetch the file (https and hf sources).
    pub fetch: bool,
}

/// Resolves `spec.model.source` into a path, a volume and whether to fetch. The source has passed
/// the CRD's pattern, so only the four schemes reach here; anything else is treated as a path.
pub fn model_mount(source: &str) -> ModelMount {
    if let Some(path) = source.strip_prefix("file://") {
        return ModelMount {
            path: path.to_owned(),
            ..ModelMount::default()
        };
    }
    if let Some(rest) = source.strip_prefix("pvc://") {
        let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
        return ModelMount {
            path: format!("{MODEL_DIR}/{path}"),
            volume: Some(Volume {
                name: "model".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_owned(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            }),
            mount: Some(VolumeMount {
                name: "model".into(),
                mount_path: MODEL_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }),
            fetch: false,
        };
    }
    let file = source
        .split(['?', '#'])
        .next()
        .and_then(|s| s.rsplit('/').next())
        .filter(|f| !f.is_empty())
        .unwrap_or("model");
    ModelMount {
        path: format!("{MODEL_DIR}/{file}"),
        volume: Some(Volume {
            name: "model".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }),
        mount: Some(VolumeMount {
            name: "model".into(),
            mount_path: MODEL_DIR.into(),
            ..VolumeMount::default()
        }),
        fetch: true,
    }
}

/// The init containers a pod of `base` needs to see the model: the download, when the source is
/// remote.
pub(crate) fn pull_containers(
    image: &str,
    model: &bitscale_api::v1alpha1::ModelSpec,
    mount: &ModelMount,
    base: &Container,
) -> Option<Vec<Container>> {
    mount.fetch.then(|| {
        vec![pull_container(
            image,
            &model.source,
            model.sha256.as_deref(),
            mount,
            base,
        )]
    })
}

/// The init container that downloads the weights into the cache volume.
fn pull_container(
    image: &str,
    source: &str,
    sha256: Option<&str>,
    mount: &ModelMount,
    base: &Container,
) -> Container {
    let mut args = vec![
        "pull".to_owned(),
        source.to_owned(),
        "--dest".to_owned(),
        mount.path.clone(),
    ];
    if let Some(sha) = sha256 {
        args.extend(["--sha256".to_owned(), sha.to_owned()]);
    }
    Container {
        name: "pull".into(),
        image: Some(image.to_owned()),
        args: Some(args),
        env: base.env.clone(),
        volume_mounts: mount.mount.clone().map(|m| vec![m]),
        security_context: base.security_context.clone(),
        resources: base.resources.clone().map(|mut r| {
            // Downloads need no accelerator; keep cpu and memory.
            for list in [&mut r.requests, &mut r.limits].into_iter().flatten() {
                list.retain(|k, _| k == "cpu" || k == "memory");
            }
            r
        }),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sources_are_paths_in_the_image() {
        let m = model_mount("file:///opt/models/smol.gguf");
        assert_eq!(m.path, "/opt/models/smol.gguf");
        assert!(m.volume.is_none() && !m.fetch);
    }

    #[test]
    fn pvc_sources_mount_the_claim_read_only() {
        let m = model_mount("pvc://weights/llama/q4.gguf");
        assert_eq!(m.path, "/models/llama/q4.gguf");
        let pvc = m
            .volume
            .and_then(|v| v.persistent_volume_claim)
            .expect("pvc volume");
        assert_eq!((pvc.claim_name.as_str(), pvc.read_only), ("weights", Some(true)));
        assert!(!m.fetch);
    }

    #[test]
    fn remote_sources_are_fetched_into_a_cache() {
        let m = model_mount("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main/smol.Q4_1.gguf");
        assert_eq!(m.path, "/models/smol.Q4_1.gguf");
        assert!(m.fetch);
        assert!(m.volume.and_then(|v| v.empty_dir).is_some());
        assert_eq!(
            model_mount("https://example.com/a/b.gguf?download=1").path,
            "/models/b.gguf"
        );
    }
}
