//! The quality-profiling Job: `bitscale-engine eval` over an InferenceService's allowed levels,
//! once per model source, its report returned through the container's termination message
//! (the Kubernetes-native channel a Job's result reaches `status.containerStatuses` by, readable
//! with the pod permission the operator already needs, and kept after the pod exits).

use std::collections::BTreeMap;

use bitscale_api::v1alpha1::{HardwareClass, LevelQuality, ModelSpec, QuantLevel};
use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::{
    EngineImages, Owner,
    deployment::{restricted_container, restricted_pod, volumes_for},
    labels::{LABEL_APP_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, fnv1a, shorten},
    model::{model_mount, pull_containers},
};

/// Label on quality-profiling Jobs and their pods (`app.kubernetes.io/component`).
pub const QUALITY_COMPONENT: &str = "quality-profile";
/// Name of the eval container.
pub const QUALITY_CONTAINER: &str = "eval";
/// Tokens of the calibration text each level is scored on.
pub const QUALITY_TOKENS: u32 = 256;
/// Where the report goes: the kubelet's default `terminationMessagePath`.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Name of the Job that profiles `levels` of `source` for the InferenceService `owner_name`: a
/// new source or a new set of allowed levels is a new Job (a Job's pod template is immutable).
pub fn quality_job_name(owner_name: &str, source: &str, levels: &[QuantLevel]) -> String {
    let names: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
    let hash = fnv1a(&format!("{source}\n{}", names.join(","))) as u32;
    // The hash stays whole: the name is cut before it.
    let head: String = owner_name.chars().take(63 - "-quality-".len() - 8).collect();
    format!("{head}-quality-{hash:08x}")
}

/// The Job that runs `eval` over `levels` on a replica of `class`.
pub fn quality_job(
    owner: &Owner,
    model: &ModelSpec,
    image: Option<&str>,
    images: &EngineImages,
    class: &HardwareClass,
    levels: &[QuantLevel],
) -> Job {
    let spec = &class.spec;
    // eval runs on the CPU; a GPU class's node has one too.
    let image = image.map_or_else(|| images.cpu.clone(), str::to_owned);
    let mount = model_mount(&model.source);
    let name = quality_job_name(&owner.name, &model.source, levels);
    let levels: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
    let args = [
        "eval",
        "--model",
        &mount.path,
        "--levels",
        &levels.join(","),
        "--max-tokens",
        &QUALITY_TOKENS.to_string(),
        "--format",
        "json",
        "--output",
        TERMINATION_LOG,
    ]
    .map(str::to_owned)
    .to_vec();
    let quantities = BTreeMap::from([
        ("cpu".to_owned(), spec.resources.cpu.clone()),
        ("memory".to_owned(), spec.resources.memory.clone()),
    ]);
    let (mounts, volumes) = volumes_for(&mount);
    let container = Container {
        name: QUALITY_CONTAINER.into(),
        image: Some(image.clone()),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(quantities.clone()),
            limits: Some(quantities),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container()),
        volume_mounts: Some(mounts),
        termination_message_path: Some(TERMINATION_LOG.into()),
        // A crash leaves its last log lines as the message, which status then shows.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let init_containers = pull_containers(&image, model, &mount, &container);
    // Not the engine's app label: nothing scrapes or selects this pod as a server.
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "bitscale-quality".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            QUALITY_COMPONENT.to_owned(),
        ),
        (LABEL_APP_INSTANCE.to_owned(), shorten(&owner.name, 63, '-')),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ]);
    let node_selector = (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone());
    let tolerations = (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone());
    Job {
        metadata: owner.child_meta(name, labels.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(1),
            active_deadline_seconds: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    init_containers,
                    volumes: Some(volumes),
                    node_selector,
                    tolerations,
                    restart_policy: Some("Never".into()),
                    security_context: Some(restricted_pod()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// What `eval --format json` reports, as far as the operator reads it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Report {
    /// The reference level.
    pub reference: String,
    /// Tokens scored per level.
    pub tokens: i64,
    /// One row per level.
    pub levels: Vec<ReportLevel>,
}

/// One level of a [`Report`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ReportLevel {
    /// The level's name.
    pub level: String,
    /// Relative perplexity increase.
    pub ppl_increase: f64,
    /// Mean KL divergence, nats.
    pub kl_mean: f64,
}

/// Reads a termination message as an eval report.
///
/// # Errors
/// A message that is not a report (the log tail of a crash, a truncated one), as text.
pub fn parse_report(message: &str) -> Result<(Report, Vec<LevelQuality>), String> {
    let report: Report = serde_json::from_str(message.trim()).map_err(|e| {
        let tail: String = message
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("the eval Job did not report ({e}): {tail}")
    })?;
    let levels = report
        .levels
        .iter()
        .filter(|l| l.ppl_increase.is_finite() && l.kl_mean.is_finite())
        .filter_map(|l| {
            Some(LevelQuality {
                level: l.level.parse().ok()?,
                ppl_increase: (l.ppl_increase * 1e4).round() / 1e4,
                kl_mean: (l.kl_mean * 1e4).round() / 1e4,
            })
        })
        .collect();
    Ok((report, levels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{cpu_class, images, owner, smol};

    #[test]
    fn the_job_evaluates_the_levels_into_the_termination_message() {
        let isvc = smol();
        let job = quality_job(
            &owner(),
            &isvc.spec.model,
            None,
            &images(),
            &cpu_class(),
            &[QuantLevel::Q8_0, QuantLevel::Q4K],
        );
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap_or_default().join(" ");
        assert!(
            args.starts_with("eval --model /models/smol.gguf --levels q8_0,q4_k"),
            "{args}"
        );
        assert!(args.ends_with("--output /dev/termination-log"), "{args}");
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        // A remote source is pulled first, as for the engine.
        assert_eq!(pod.init_containers.as_ref().map(Vec::len), Some(1));
        let name = job.metadata.name.expect("named");
        assert!(name.starts_with("chat-quality-") && name.len() <= 63, "{name}");
        let levels = [QuantLevel::Q8_0, QuantLevel::Q4K];
        assert_eq!(name, quality_job_name("chat", &isvc.spec.model.source, &levels));
        assert_ne!(name, quality_job_name("chat", "file:///other.gguf", &levels));
        assert_ne!(
            name,
            quality_job_name("chat", &isvc.spec.model.source, &levels[..1]),
            "other levels are another Job"
        );
    }

    #[test]
    fn reports_parse_and_crashes_say_why() {
        let (report, levels) = parse_report(
            r#"{"model":"m","reference":"q4_1","text":"builtin","tokens":255,"window":256,
               "reference_perplexity":9.1,"truncated":false,"elapsed_s":3.2,"levels":[
               {"level":"q8_0","perplexity":9.2,"ppl_increase":0.00601,"kl_mean":0.0051,"top1_agreement":0.97},
               {"level":"q4_k","perplexity":9.8,"ppl_increase":0.0766,"kl_mean":0.0633,"top1_agreement":0.85}]}"#,
        )
        .expect("a report");
        assert_eq!(report.reference, "q4_1");
        assert_eq!(levels[1].level, QuantLevel::Q4K);
        assert_eq!(levels[0].ppl_increase, 0.006);
        let crash = parse_report("Error: loading at q4_k: out of memory").expect_err("not a report");
        assert!(crash.contains("out of memory"), "{crash}");
    }
}
