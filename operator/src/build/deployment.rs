//! The engine Deployment of one variant.

use std::collections::BTreeMap;

use bitscale_api::v1alpha1::Device;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, PodSecurityContext,
            PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    BuildInput,
    labels::*,
    model::{model_mount, pull_containers},
};
use crate::decision::priors::DEFAULT_MAX_RUNNING;
use bitscale_api::telemetry::ENGINE_PORT_NAME;

/// Name of the engine container.
pub const ENGINE_CONTAINER: &str = "engine";
/// Port the engine listens on.
pub const ENGINE_PORT: i32 = 8000;
// The distroless "nonroot" user.
const NON_ROOT_UID: i64 = 65532;

/// Name of the Deployment of the decided variant: `<service>-<level>-<class>`.
pub fn deployment_name(owner_name: &str, variant_label: &str) -> String {
    let name = format!("{owner_name}-{}", variant_label.replace(['_', '.'], "-")).to_lowercase();
    // Leaves room for the ReplicaSet and pod suffixes within the 253-character limit.
    shorten(&name, 200, '-')
}

/// Builds the Deployment of the decided variant.
pub fn deployment(input: &BuildInput<'_>) -> Deployment {
    let BuildInput {
        owner,
        model,
        engine,
        class,
        decision,
        images,
        itl_target,
        measure_quality,
    } = input;
    let variant = variant_label(&decision.variant);
    let selector = variant_selector(&owner.name, &variant);
    let mut labels = common_labels(&owner.name);
    labels.insert(LABEL_VARIANT.to_owned(), variant.clone());

    let spec = &class.spec;
    let threads = spec
        .threads
        .unwrap_or_else(|| cpu_cores(&spec.resources.cpu).max(1));
    let max_running = engine.max_running.unwrap_or(DEFAULT_MAX_RUNNING);
    let mount = model_mount(&model.source);
    let image = engine.image.clone().unwrap_or_else(|| match spec.device {
        Device::Cpu => images.cpu.clone(),
        Device::Cuda => images.cuda.clone(),
    });

    let mut args: Vec<String> = [
        "serve",
        "--model",
        &mount.path,
        "--quantization",
        decision.variant.level.as_str(),
        "--device",
        spec.device.as_str(),
        // Every address of the pod: the Service, probes and Prometheus reach it at the pod IP.
        "--host",
        "0.0.0.0",
        "--port",
        &ENGINE_PORT.to_string(),
        "--threads",
        &threads.to_string(),
        "--max-running",
        &max_running.to_string(),
        "--context-length",
        &model.context_length.to_string(),
        // KV pool: every running sequence may reach the full context.
        "--kv-cache-tokens",
        &(i64::from(model.context_length) * i64::from(max_running)).to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Sized to the ITL objective by the decision (a flag of the user's own comes last and wins):
    // the step-token estimate, from a compute prior, caps the steps, and the objective itself
    // lets the engine size them from its own measured time per token below that cap.
    let user_sets = |flag: &str| engine.args.iter().any(|a| a.starts_with(flag));
    // Clients name the model by the InferenceService, whatever the weights file is called.
    if !user_sets("--served-model-name") {
        args.extend(["--served-model-name".to_owned(), owner.name.clone()]);
    }
    if let Some(tokens) = decision.estimate.step_tokens
        && !user_sets("--max-batch-tokens")
    {
        args.extend(["--max-batch-tokens".to_owned(), tokens.to_string()]);
    }
    if let Some(itl) = itl_target
        && !user_sets("--itl-target")
    {
        // Milliseconds, the one unit both Kubernetes-style durations ("1m30s") and the engine's
        // parser agree on.
        args.extend([
            "--itl-target".to_owned(),
            format!("{}ms", itl.as_secs_f64() * 1e3),
        ]);
    }
    // The pods confirm the profiled loss of the level they serve (`bitscale_engine_quality_loss`).
    if *measure_quality && !user_sets("--measure-quality") {
        args.extend([
            "--measure-quality".to_owned(),
            "--measure-quality-tokens".to_owned(),
            super::quality::QUALITY_TOKENS.to_string(),
        ]);
    }
    args.extend(engine.args.iter().cloned());

    let mut quantities = BTreeMap::from([
        ("cpu".to_owned(), spec.resources.cpu.clone()),
        ("memory".to_owned(), spec.resources.memory.clone()),
    ]);
    if let Some(acc) = &spec.resources.accelerator {
        quantities.insert(acc.resource_name.clone(), Quantity(acc.count.to_string()));
    }

    let (mounts, volumes) = volumes_for(&mount);

    let mut env = engine.env.clone();
    // The engine reads these too; set only when the user did not.
    if !env.iter().any(|e| e.name == "RUST_LOG") {
        env.push(k8s_openapi::api::core::v1::EnvVar {
            name: "RUST_LOG".into(),
            value: Some("info".into()),
            ..Default::default()
        });
    }

    let container = Container {
        name: ENGINE_CONTAINER.into(),
        image: Some(image.clone()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ENGINE_PORT_NAME.into()),
            container_port: ENGINE_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities.clone()),
            limits: Some(quantities),
            ..ResourceRequirements::default()
        }),
        // Loading and quantizing weights can take minutes; liveness waits for startup.
        startup_probe: Some(http_probe("/health", 5, 120)),
        liveness_probe: Some(http_probe("/health", 10, 3)),
        readiness_probe: Some(http_probe("/ready", 5, 1)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let init_containers = pull_containers(&image, model, &mount, &container);

    Deployment {
        metadata: owner.child_meta(deployment_name(&owner.name, &variant), labels.clone()),
        spec: DeploymentSpec {
            replicas: Some(decision.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    init_containers,
                    volumes: Some(volumes),
                    node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    security_context: Some(restricted_pod()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    // In-flight requests finish; the engine stops admitting on SIGTERM.
                    termination_grace_period_seconds: Some(60),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ENGINE_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// A writable `/tmp` (the root file system is read-only) and the model's volume, as mounts and
/// volumes.
pub(crate) fn volumes_for(mount: &super::ModelMount) -> (Vec<VolumeMount>, Vec<Volume>) {
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    mounts.extend(mount.mount.clone());
    volumes.extend(mount.volume.clone());
    (mounts, volumes)
}

/// The pod-level half of the restricted Pod Security Standard.
pub(crate) fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_UID),
        run_as_group: Some(NON_ROOT_UID),
        fs_group: Some(NON_ROOT_UID),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

pub(crate) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// Whole cores in a CPU quantity ("4" → 4, "3500m" → 3), at least 1.
pub fn cpu_cores(q: &Quantity) -> i32 {
    let s = q.0.trim();
    let cores = match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => s.parse::<f64>(),
    };
    cores.map(|c| c.floor() as i32).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use bitscale_api::v1alpha1::{Decision, InferenceService, QuantLevel};
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;
    use crate::build::{BuildInput, fixtures::*};

    fn build(class: &bitscale_api::v1alpha1::HardwareClass, level: QuantLevel, replicas: i32) -> Deployment {
        build_measuring(class, level, replicas, false)
    }

    fn build_measuring(
        class: &bitscale_api::v1alpha1::HardwareClass,
        level: QuantLevel,
        replicas: i32,
        measure_quality: bool,
    ) -> Deployment {
        let isvc = smol();
        let owner = owner();
        let decision = decision(
            level,
            class.metadata.name.as_deref().unwrap_or_default(),
            replicas,
        );
        let images = images();
        deployment(&BuildInput {
            owner: &owner,
            model: &isvc.spec.model,
            engine: &isvc.spec.engine,
            class,
            decision: &decision,
            images: &images,
            itl_target: None,
            measure_quality,
        })
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.template.spec.as_ref().expect("pod spec")
    }

    fn engine(d: &Deployment) -> &Container {
        pod(d)
            .containers
            .iter()
            .find(|c| c.name == ENGINE_CONTAINER)
            .expect("engine container")
    }

    #[test]
    fn cpu_variant_gets_its_flags_resources_and_pool() {
        let d = build(&cpu_class(), QuantLevel::Q4K, 2);
        assert_eq!(d.metadata.name.as_deref(), Some("chat-q4-k-cpu-standard"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("team-a"));
        let spec = &d.spec;
        assert_eq!(spec.replicas, Some(2));
        let selector = spec.selector.match_labels.as_ref().expect("selector");
        assert_eq!(selector.get(LABEL_INSTANCE).map(String::as_str), Some("chat"));
        assert_eq!(
            selector.get(LABEL_VARIANT).map(String::as_str),
            Some("q4_k.cpu-standard")
        );
        // The pod template carries every selector label.
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert!(selector.iter().all(|(k, v)| template_labels.get(k) == Some(v)));

        let c = engine(&d);
        assert_eq!(c.image.as_deref(), Some("engine:cpu"));
        let args = c.args.as_ref().expect("args").join(" ");
        assert_eq!(
            args,
            "serve --model /models/smol.gguf --quantization q4_k --device cpu --host 0.0.0.0 --port 8000 --threads 4 \
             --max-running 4 --context-length 2048 --kv-cache-tokens 8192 --served-model-name chat --log-format json"
        );
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(limits.get("cpu"), Some(&Quantity("4".into())));
        assert_eq!(limits.get("memory"), Some(&Quantity("8Gi".into())));
        assert_eq!(
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
            Some(limits)
        );

        let p = pod(&d);
        assert_eq!(
            p.node_selector
                .as_ref()
                .and_then(|n| n.get("bitscale.dev/pool"))
                .map(String::as_str),
            Some("cpu")
        );
        assert!(p.tolerations.is_none());
        assert_eq!(
            d.metadata.owner_references.as_ref().map(|o| o[0].uid.as_str()),
            Some("11111111-2222-3333-4444-555555555555")
        );
    }

    #[test]
    fn step_tokens_and_the_itl_objective_reach_the_engine_unless_the_user_sets_them() {
        let (class, owner, images) = (cpu_class(), owner(), images());
        let mut isvc = smol();
        let mut decision = decision(QuantLevel::Q4K, "cpu-standard", 1);
        decision.estimate.step_tokens = Some(40);
        let itl = Some(std::time::Duration::from_millis(50));
        let args = |isvc: &InferenceService, decision: &Decision, itl_target| {
            let d = deployment(&BuildInput {
                owner: &owner,
                model: &isvc.spec.model,
                engine: &isvc.spec.engine,
                class: &class,
                decision,
                images: &images,
                itl_target,
                measure_quality: false,
            });
            engine(&d).args.clone().unwrap_or_default().join(" ")
        };
        assert!(
            args(&isvc, &decision, itl)
                .ends_with("--max-batch-tokens 40 --itl-target 50ms --log-format json")
        );
        isvc.spec.engine.args.push("--max-batch-tokens=64".into());
        isvc.spec.engine.args.push("--itl-target=80ms".into());
        let own = args(&isvc, &decision, itl);
        assert!(
            own.ends_with("--max-batch-tokens=64 --itl-target=80ms")
                && !own.contains("--max-batch-tokens 40")
                && !own.contains("--itl-target 50ms"),
            "{own}"
        );
        decision.estimate.step_tokens = None;
        isvc.spec.engine.args.clear();
        let none = args(&isvc, &decision, None);
        assert!(
            !none.contains("--max-batch-tokens") && !none.contains("--itl-target"),
            "{none}"
        );
    }

    #[test]
    fn pods_asked_to_confirm_quality_score_the_jobs_tokens() {
        let class = cpu_class();
        let d = build_measuring(&class, QuantLevel::Q8_0, 1, true);
        let args = engine(&d).args.clone().unwrap_or_default().join(" ");
        assert!(
            args.contains("--measure-quality --measure-quality-tokens 256"),
            "{args}"
        );
        let quiet = engine(&build(&class, QuantLevel::Q8_0, 1))
            .args
            .clone()
            .unwrap_or_default();
        assert!(
            !quiet.iter().any(|a| a.starts_with("--measure-quality")),
            "{quiet:?}"
        );
    }

    #[test]
    fn gpu_variant_requests_the_accelerator_and_tolerates_the_taint() {
        let d = build(&gpu_class(), QuantLevel::Q8_0, 1);
        let c = engine(&d);
        assert_eq!(c.image.as_deref(), Some("engine:cuda"));
        assert!(
            c.args
                .as_ref()
                .expect("args")
                .windows(2)
                .any(|w| w == ["--device", "cuda"])
        );
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(limits.get("nvidia.com/gpu"), Some(&Quantity("1".into())));
        let p = pod(&d);
        let tolerations = p.tolerations.as_ref().expect("tolerations");
        assert_eq!(tolerations[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(
            p.node_selector
                .as_ref()
                .and_then(|n| n.get("bitscale.dev/pool"))
                .map(String::as_str),
            Some("gpu")
        );
        // The download needs no GPU.
        let init = &p.init_containers.as_ref().expect("pull init container")[0];
        let init_limits = init
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert!(!init_limits.contains_key("nvidia.com/gpu"));
    }

    #[test]
    fn remote_models_are_pulled_by_an_init_container() {
        let d = build(&cpu_class(), QuantLevel::Q4K, 1);
        let init = &pod(&d).init_containers.as_ref().expect("init containers")[0];
        assert_eq!(
            init.args.as_ref().expect("args").join(" "),
            "pull hf://HuggingFaceTB/SmolLM2-135M-Instruct@main/smol.gguf --dest /models/smol.gguf"
        );
        assert_eq!(init.image.as_deref(), Some("engine:cpu"));
        assert!(
            init.volume_mounts
                .as_ref()
                .expect("mounts")
                .iter()
                .any(|m| m.mount_path == "/models")
        );
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        let d = build(&cpu_class(), QuantLevel::Q4K, 1);
        let p = pod(&d);
        let psc = p.security_context.as_ref().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        for c in p.containers.iter().chain(p.init_containers.iter().flatten()) {
            let sc = c.security_context.as_ref().expect("container security context");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()])
            );
        }
        assert_eq!(p.termination_grace_period_seconds, Some(60));
        let c = engine(&d);
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/health"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/ready"));
    }

    #[test]
    fn cpu_quantities_round_down_to_whole_threads() {
        assert_eq!(cpu_cores(&Quantity("3500m".into())), 3);
        assert_eq!(cpu_cores(&Quantity("500m".into())), 1);
        assert_eq!(cpu_cores(&Quantity("16".into())), 16);
    }
}
