//! A GPU variant whose rollout cannot finish is set aside and a CPU variant serves until it can:
//! the GPU pool is full (its pods stay Pending), or a ResourceQuota refuses its pods (they are
//! never created). The operator returns to the GPU once a GPU is free or the quota is lifted,
//! and the cool-off is over.
//!
//! The full pool runs on a cluster of its own: filling the shared cluster's GPU nodes would
//! starve other tests. The quota is the test namespace's own, on the shared cluster.

mod operator_support;

use std::time::Duration;

use bitscale_api::v1alpha1::InferenceService;
use bitscale_e2e::{Cluster, Layout};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use operator_support::{live::*, *};

/// A pod KWOK fakes that holds one GPU.
fn gpu_blocker(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "containers": [{
                "name": "hold",
                "image": FAKE_ENGINE_IMAGES[1],
                "resources": { "limits": { "nvidia.com/gpu": "1" } },
            }],
            "nodeSelector": { "bitscale.dev/pool": "gpu" },
            "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
        },
    }))
    .expect("valid pod")
}

fn classes(prefix: &str) -> Vec<bitscale_api::v1alpha1::HardwareClass> {
    // The GPU is the cheaper one here, and its engine (run on this CPU) gets one thread.
    let mut gpu = gpu_class(prefix);
    gpu.spec.cost_per_hour = 0.1;
    gpu.spec.resources.cpu = k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into());
    gpu.spec.threads = Some(1);
    let mut cpu = tiny_class(prefix);
    cpu.spec.cost_per_hour = 0.5;
    vec![gpu, cpu]
}

fn serving_class(service: &InferenceService) -> Option<String> {
    service
        .status
        .as_ref()?
        .decision
        .as_ref()
        .map(|d| d.variant.hardware_class.clone())
}

#[tokio::test]
async fn a_full_gpu_pool_falls_back_to_cpu_and_returns_when_a_gpu_frees() -> anyhow::Result<()> {
    let layout = Layout::from_env()?.named("gpu-full");
    let cluster = Cluster::up(layout.clone()).await?;
    let result = fall_back_and_return(&cluster).await;
    Cluster::down(layout).await?;
    result
}

async fn fall_back_and_return(cluster: &Cluster) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let blockers: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes = bitscale_e2e::nodes::NODES
        .iter()
        .map(|n| n.gpus as usize)
        .sum::<usize>();
    for i in 0..nodes {
        blockers
            .create(&PostParams::default(), &gpu_blocker(&format!("gpu-hold-{i}")))
            .await?;
    }
    eventually("every GPU taken", TIMEOUT, || async {
        let list = blockers.list(&ListParams::default()).await?.items;
        let placed = list
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        Ok((placed == nodes).then_some(()))
    })
    .await?;

    let scene = Scene::start_on(cluster.clone(), "live-gpu", classes, ENGINE_IMAGES, |config| {
        config.pending_timeout = Duration::from_secs(5);
        config.cool_off = Duration::from_secs(30);
        config.switch.window = Duration::from_secs(5);
    })
    .await?;
    let gpu = format!("{}-gpu", scene.ns.name);
    let cpu = format!("{}-tiny", scene.ns.name);
    let mut service = tiny_service("tiny", &scene.ns.name, &gpu, &tiny_model()?, 1);
    service.spec.placement.hardware_classes = vec![gpu.clone(), cpu.clone()];
    let services: Api<InferenceService> = scene.api();
    services.create(&PostParams::default(), &service).await?;

    // The GPU is cheaper, so it is decided first; its pod cannot be placed.
    let (fallen, aside) = falls_back(&services, &gpu, &cpu).await?;
    let status = fallen.status.as_ref().expect("status");
    assert!(aside.reason.contains("nvidia.com/gpu"), "{}", aside.reason);
    let gpu_alternative = status
        .decision
        .as_ref()
        .and_then(|d| d.alternatives.iter().find(|a| a.variant.hardware_class == gpu))
        .expect("the GPU variant listed");
    assert!(
        gpu_alternative.reason.contains("could not be scheduled"),
        "{}",
        gpu_alternative.reason
    );
    let pods: Api<Pod> = scene.api();
    let ip = first_ready_engine(&pods).await?;
    chat(&http(), ip, "tiny").await?;

    // A GPU frees; after the cool-off and the switch window, the GPU variant serves again.
    blockers.delete("gpu-hold-0", &DeleteParams::default()).await?;
    eventually("back on the GPU, Ready", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        Ok((serving_class(&s).as_deref() == Some(gpu.as_str()) && ready(Some(&s))).then_some(()))
    })
    .await?;
    scene.stop().await
}

/// Waits for the GPU variant to be decided, then for the CPU variant to serve, Ready; returns
/// the service then and the GPU variant's entry in `status.unavailable`.
async fn falls_back(
    services: &Api<InferenceService>,
    gpu: &str,
    cpu: &str,
) -> anyhow::Result<(InferenceService, bitscale_api::v1alpha1::UnavailableVariant)> {
    eventually("the GPU variant decided", TIMEOUT, || async {
        Ok((serving_class(&services.get("tiny").await?).as_deref() == Some(gpu)).then_some(()))
    })
    .await?;
    let fallen = eventually("the CPU variant serving, Ready", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        Ok((serving_class(&s).as_deref() == Some(cpu) && ready(Some(&s))).then_some(s))
    })
    .await?;
    let status = fallen.status.as_ref().expect("status");
    let aside = status
        .unavailable
        .iter()
        .find(|u| u.variant.hardware_class == gpu)
        .cloned()
        .unwrap_or_else(|| panic!("the GPU variant set aside: {status:?}"));
    Ok((fallen, aside))
}

async fn first_ready_engine(pods: &Api<Pod>) -> anyhow::Result<std::net::Ipv4Addr> {
    eventually("a Ready engine pod", TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels("bitscale.dev/inference-service=tiny"))
            .await?
            .items;
        Ok(list.iter().filter(|p| pod_ready(p)).find_map(pod_ip))
    })
    .await
}

/// A quota of no GPUs in `namespace`: the API server refuses every pod that asks for one.
fn no_gpus() -> ResourceQuota {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "no-gpus" },
        "spec": { "hard": { "requests.nvidia.com/gpu": "0" } },
    }))
    .expect("valid ResourceQuota")
}

#[tokio::test]
async fn a_quota_that_refuses_gpu_pods_falls_back_to_cpu_and_returns_when_lifted() -> anyhow::Result<()> {
    let scene = Scene::start_configured("gpu-quota", classes, FAKE_ENGINE_IMAGES, |config| {
        config.pending_timeout = Duration::from_secs(5);
        config.cool_off = Duration::from_secs(20);
        config.switch.window = Duration::from_secs(5);
    })
    .await?;
    let quotas: Api<ResourceQuota> = scene.api();
    quotas.create(&PostParams::default(), &no_gpus()).await?;
    let gpu = format!("{}-gpu", scene.ns.name);
    let cpu = format!("{}-tiny", scene.ns.name);
    let mut service = tiny_service(
        "tiny",
        &scene.ns.name,
        &gpu,
        std::path::Path::new("/models/tiny.gguf"),
        1,
    );
    service.spec.placement.hardware_classes = vec![gpu.clone(), cpu.clone()];
    let services: Api<InferenceService> = scene.api();
    services.create(&PostParams::default(), &service).await?;

    // The GPU is cheaper, so it is decided first; the quota refuses its pod.
    let (_, aside) = falls_back(&services, &gpu, &cpu).await?;
    assert!(aside.reason.contains("could not be created"), "{}", aside.reason);
    assert!(aside.reason.contains("quota"), "{}", aside.reason);

    // The quota is lifted; after the cool-off the GPU variant serves again.
    quotas.delete("no-gpus", &DeleteParams::default()).await?;
    eventually("back on the GPU, Ready", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        Ok((serving_class(&s).as_deref() == Some(gpu.as_str()) && ready(Some(&s))).then_some(()))
    })
    .await?;
    scene.stop().await
}
