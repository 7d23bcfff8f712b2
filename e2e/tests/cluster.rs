//! The local cluster behaves like the clusters Bitscale targets: CPU and GPU pools, real scheduling
//! of `nvidia.com/gpu`, and working kubectl and Helm.
//!
//! Each test works in its own namespace (Pod Security `restricted`), so they run in parallel.

use std::time::Duration;

use bitscale_e2e::{Cluster, TestNamespace, await_condition, await_list, nodes::POOL_LABEL};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
    runtime::wait::conditions,
};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A container that passes Pod Security `restricted`. The image never runs: KWOK fakes it.
fn container(name: &str, gpus: u32) -> serde_json::Value {
    let mut resources = serde_json::json!({ "requests": { "cpu": "100m", "memory": "64Mi" } });
    if gpus > 0 {
        resources["requests"]["nvidia.com/gpu"] = gpus.to_string().into();
        resources["limits"] = serde_json::json!({ "nvidia.com/gpu": gpus.to_string() });
    }
    serde_json::json!({
        "name": name,
        "image": "registry.k8s.io/pause:3.10",
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
    })
}

fn gpu_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "app": "gpu-test" } },
        "spec": {
            "containers": [container("main", 1)],
            "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
        },
    }))
    .expect("valid pod")
}

async fn pool_of(client: &Client, node: &str) -> String {
    let node = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .expect("node exists");
    node.metadata
        .labels
        .unwrap_or_default()
        .get(POOL_LABEL)
        .cloned()
        .unwrap_or_default()
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn is_running_with_ip(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
}

#[tokio::test]
async fn deployment_becomes_available_on_cpu_nodes() {
    let cluster = Cluster::shared().await.expect("cluster");
    let client = cluster.client().await.expect("client");
    let ns = TestNamespace::create(&client, "deploy").await.expect("namespace");

    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [container("web", 0)] },
            },
        },
    }))
    .expect("valid deployment");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    await_condition(deployments, "web", conditions::is_deployment_completed(), TIMEOUT)
        .await
        .expect("deployment available");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let running = await_list(
        &pods,
        &ListParams::default().labels("app=web"),
        |pods| pods.iter().filter(|p| is_running_with_ip(p)).count() == 2,
        TIMEOUT,
    )
    .await
    .expect("two running pods");
    for pod in &running {
        let node = node_name(pod).expect("scheduled");
        assert_eq!(pool_of(&client, node).await, "cpu", "pod on {node}");
    }
    ns.delete().await.expect("delete namespace");
}

#[tokio::test]
async fn gpu_pods_fill_gpu_nodes_then_stay_pending() {
    let cluster = Cluster::shared().await.expect("cluster");
    let client = cluster.client().await.expect("client");
    let ns = TestNamespace::create(&client, "gpu").await.expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // The cluster is shared, but no other test asks for GPUs, so both GPU nodes are free here.
    for name in ["gpu-a", "gpu-b"] {
        pods.create(&PostParams::default(), &gpu_pod(name))
            .await
            .expect("create gpu pod");
    }
    let placed = await_list(
        &pods,
        &ListParams::default().labels("app=gpu-test"),
        |pods| pods.len() == 2 && pods.iter().all(is_running_with_ip),
        TIMEOUT,
    )
    .await
    .expect("both gpu pods running");
    let mut nodes = Vec::new();
    for pod in &placed {
        let node = node_name(pod).expect("scheduled").to_owned();
        assert_eq!(pool_of(&client, &node).await, "gpu", "pod on {node}");
        nodes.push(node);
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 2, "one GPU pod per GPU node");

    pods.create(&PostParams::default(), &gpu_pod("gpu-c"))
        .await
        .expect("create third gpu pod");
    let unschedulable = |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    };
    let pending = await_condition(pods.clone(), "gpu-c", unschedulable, TIMEOUT)
        .await
        .expect("unschedulable");
    let status = pending.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let message = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "scheduler said: {message}"
    );
    ns.delete().await.expect("delete namespace");
}

#[tokio::test]
async fn kubectl_and_helm_talk_to_a_v1_37_server() {
    let cluster = Cluster::shared().await.expect("cluster");

    let output = cluster
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl version: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&output.stdout).expect("kubectl json");
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(server.starts_with("v1.37."), "server version {server}");
    let client_version = version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(
        client_version.starts_with("v1.37."),
        "kubectl version {client_version}"
    );

    let output = cluster
        .helm()
        .args(["version", "--short"])
        .output()
        .expect("run helm");
    assert!(
        output.status.success(),
        "helm version: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("v3."),
        "helm version"
    );

    // Helm reaching the API server, not just printing its own version.
    let output = cluster
        .helm()
        .args(["list", "--all-namespaces"])
        .output()
        .expect("run helm list");
    assert!(
        output.status.success(),
        "helm list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
