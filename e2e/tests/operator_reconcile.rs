//! The operator against the local control plane: children, rollouts, garbage collection, pools,
//! permanent errors and idempotence.

mod operator_support;

use bitscale_api::v1alpha1::{InferenceService, QuantLevel};
use bitscale_e2e::{await_condition, await_deleted, await_list};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod, Service},
    events::v1::Event,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use operator_support::*;

fn engine_args(d: &Deployment) -> Vec<String> {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.iter().find(|c| c.name == "engine"))
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

async fn pool_of_pods(client: &Client, namespace: &str, selector: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let scheduled = await_list(
        &pods,
        &ListParams::default().labels(selector),
        |ps| {
            !ps.is_empty()
                && ps
                    .iter()
                    .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        },
        TIMEOUT,
    )
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut pools = Vec::new();
    for pod in scheduled {
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        let node = nodes.get(&node).await?;
        pools.push(
            node.labels()
                .get("bitscale.dev/pool")
                .cloned()
                .unwrap_or_default(),
        );
    }
    Ok(pools)
}

#[tokio::test]
async fn create_rollout_switch_and_garbage_collect() -> anyhow::Result<()> {
    let scene = Scene::start("op-lifecycle", |ns| vec![cpu_class(ns)]).await?;
    let (client, ns) = (&scene.client, &scene.ns);

    let isvcs: Api<InferenceService> = scene.api();
    let cpu = format!("{}-cpu", ns.name);
    // Applied the way a user (or Argo CD) would, so `kubectl diff` can check idempotence below.
    let manifest = serde_yaml::to_string(&smol("chat", &ns.name, &[&cpu]))?;
    let path = std::env::temp_dir().join(format!("{}-chat.yaml", ns.name));
    std::fs::write(&path, manifest)?;
    let applied = scene
        .cluster
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&path)
        .output()?;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let isvc = await_condition(isvcs.clone(), "chat", ready, TIMEOUT).await?;
    let status = isvc.status.clone().unwrap_or_default();
    let decision = status.decision.clone().expect("a decision");
    assert_eq!(decision.variant.hardware_class, cpu);
    assert!(
        !decision.alternatives.is_empty(),
        "alternatives explain the choice"
    );
    assert_eq!(status.replicas, 1);
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://chat.{}.svc:8000", ns.name).as_str())
    );

    // Children: the variant's Deployment on the CPU pool, a Service, a PDB.
    let deployments: Api<Deployment> = scene.api();
    let level = decision.variant.level;
    let name = format!("chat-{}-{cpu}", level.as_str().replace('_', "-"));
    let deployment = deployments.get(&name).await?;
    let args = engine_args(&deployment);
    assert!(
        args.windows(2).any(|w| w == ["--quantization", level.as_str()]),
        "{args:?}"
    );
    assert!(args.windows(2).any(|w| w == ["--device", "cpu"]), "{args:?}");
    let pod_spec = deployment.spec.template.spec.clone().expect("pod spec");
    let limits = pod_spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("4Gi"));
    let selector = status.selector.clone().expect("selector");
    assert!(
        pool_of_pods(client, &ns.name, &selector)
            .await?
            .iter()
            .all(|p| p == "cpu")
    );
    let service = scene.api::<Service>().get("chat").await?;
    let port = &service.spec.and_then(|s| s.ports).expect("ports")[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8000));
    scene.api::<PodDisruptionBudget>().get("chat").await?;

    // Re-applying the user's manifest changes nothing: the operator never writes spec.
    let diff = scene
        .cluster
        .kubectl()
        .args(["diff", "--server-side", "-f"])
        .arg(&path)
        .output()?;
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let before = deployments.get(&name).await?.resource_version();

    // A spec change rolls the Deployment.
    let patch = serde_json::json!({ "spec": { "engine": { "maxRunning": 2 } } });
    isvcs
        .patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    await_condition(isvcs.clone(), "chat", ready, TIMEOUT).await?;
    let rolled = deployments.get(&name).await?;
    assert!(
        engine_args(&rolled)
            .windows(2)
            .any(|w| w == ["--max-running", "2"])
    );
    assert_ne!(rolled.resource_version(), before);

    // Pinning another level switches variant: the new Deployment, then the Service, then the old one goes.
    let other = if level == QuantLevel::Q8_0 {
        QuantLevel::Q6K
    } else {
        QuantLevel::Q8_0
    };
    let patch = serde_json::json!({ "spec": { "quantization": { "pinned": other.as_str() } } });
    isvcs
        .patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let switched = await_condition(isvcs.clone(), "chat", ready, TIMEOUT).await?;
    assert_eq!(
        switched.status.and_then(|s| s.decision).map(|d| d.variant.level),
        Some(other)
    );
    let new_name = format!("chat-{}-{cpu}", other.as_str().replace('_', "-"));
    deployments.get(&new_name).await?;
    await_deleted(deployments.clone(), &name, TIMEOUT).await?;
    let service = scene.api::<Service>().get("chat").await?;
    let selected = service.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(
        selected.get("bitscale.dev/variant").map(String::as_str),
        Some(format!("{other}.{cpu}").as_str())
    );

    // Each decision is an Event on the InferenceService, which `kubectl describe` shows.
    let events: Api<Event> = scene.api();
    let decided: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("chat"))
        .filter(|e| e.reason.as_deref() == Some("Decided"))
        .collect();
    assert!(decided.len() >= 2, "a Decided Event per variant: {decided:?}");
    assert!(
        decided
            .iter()
            .all(|e| e.reporting_controller.as_deref() == Some("bitscale-operator")),
        "{decided:?}"
    );
    let switch_note = bitscale_api::v1alpha1::Variant {
        level: other,
        hardware_class: cpu.clone(),
    }
    .to_string();
    assert!(
        decided
            .iter()
            .any(|e| e.note.as_deref().is_some_and(|n| n.contains(&switch_note))),
        "the switch's Event names the new variant: {decided:?}"
    );
    let described = scene
        .cluster
        .kubectl()
        .args(["describe", "inferenceservice", "chat", "-n", &ns.name])
        .output()?;
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("Decided") && described.contains(&switch_note),
        "kubectl describe tells the story:\n{described}"
    );

    // Hand edits to children are undone and a deleted child comes back: the operator skips
    // re-applying children it last applied, but only while they stay as it left them.
    let scale = serde_json::json!({ "spec": { "replicas": 3 } });
    deployments
        .patch(&new_name, &PatchParams::default(), &Patch::Merge(&scale))
        .await?;
    let one_replica = |d: Option<&Deployment>| d.and_then(|d| d.spec.replicas) == Some(1);
    await_condition(deployments.clone(), &new_name, one_replica, TIMEOUT).await?;
    let services: Api<Service> = scene.api();
    let old_uid = services.get("chat").await?.uid();
    services.delete("chat", &Default::default()).await?;
    let recreated = |s: Option<&Service>| s.is_some_and(|s| s.uid() != old_uid);
    await_condition(services.clone(), "chat", recreated, TIMEOUT).await?;

    // Deleting the InferenceService garbage-collects its children (kube-controller-manager).
    isvcs.delete("chat", &Default::default()).await?;
    await_deleted(deployments.clone(), &new_name, TIMEOUT).await?;
    await_deleted(scene.api::<Service>(), "chat", TIMEOUT).await?;

    scene.stop().await?;
    Ok(())
}

#[tokio::test]
async fn gpu_class_lands_on_a_gpu_node_with_the_toleration() -> anyhow::Result<()> {
    let scene = Scene::start("op-gpu", |ns| vec![gpu_class(ns)]).await?;
    let (client, ns) = (&scene.client, &scene.ns);

    let isvcs: Api<InferenceService> = scene.api();
    let gpu = format!("{}-gpu", ns.name);
    isvcs
        .create(&PostParams::default(), &smol("chat", &ns.name, &[&gpu]))
        .await?;
    let isvc = await_condition(isvcs.clone(), "chat", ready, TIMEOUT).await?;
    let selector = isvc.status.and_then(|s| s.selector).expect("selector");
    assert!(
        pool_of_pods(client, &ns.name, &selector)
            .await?
            .iter()
            .all(|p| p == "gpu")
    );
    let pods: Api<Pod> = scene.api();
    let pod = &pods.list(&ListParams::default().labels(&selector)).await?.items[0];
    let spec = pod.spec.as_ref().expect("pod spec");
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"))
    );
    let limits = spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits.get("nvidia.com/gpu").map(|q| q.0.as_str()), Some("1"));

    scene.stop().await?;
    Ok(())
}

#[tokio::test]
async fn cpu_only_placement_never_uses_gpu_nodes() -> anyhow::Result<()> {
    // Both exist; the spec allows only CPU, and three replicas spread over the CPU nodes.
    let scene = Scene::start("op-cpu-only", |ns| vec![cpu_class(ns), gpu_class(ns)]).await?;
    let (client, ns) = (&scene.client, &scene.ns);

    let isvcs: Api<InferenceService> = scene.api();
    let mut isvc = smol("chat", &ns.name, &[&format!("{}-cpu", ns.name)]);
    isvc.spec.scaling.min_replicas = 3;
    isvcs.create(&PostParams::default(), &isvc).await?;
    let isvc = await_condition(isvcs.clone(), "chat", ready, TIMEOUT).await?;
    let selector = isvc.status.and_then(|s| s.selector).expect("selector");
    let pools = pool_of_pods(client, &ns.name, &selector).await?;
    assert_eq!(pools, ["cpu", "cpu", "cpu"]);

    scene.stop().await?;
    Ok(())
}

#[tokio::test]
async fn permanent_errors_set_ready_false_and_recover_on_change() -> anyhow::Result<()> {
    let scene = Scene::start("op-errors", |ns| vec![cpu_class(ns)]).await?;
    let ns = &scene.ns;

    let isvcs: Api<InferenceService> = scene.api();
    isvcs
        .create(
            &PostParams::default(),
            &smol("chat", &ns.name, &["no-such-class"]),
        )
        .await?;
    let failed = |o: Option<&InferenceService>| {
        condition_is(o, "Ready", "False")
            && o.and_then(|o| o.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "UnknownHardwareClass"))
    };
    await_condition(isvcs.clone(), "chat", failed, TIMEOUT).await?;

    // A 400B-parameter model fits nowhere: NoFeasibleVariant, naming every candidate.
    let patch = serde_json::json!({ "spec": {
        "placement": { "hardwareClasses": [format!("{}-cpu", ns.name)] },
        "model": { "parameters": "400B" } } });
    isvcs
        .patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let infeasible = |o: Option<&InferenceService>| {
        condition_is(o, "Ready", "False")
            && o.and_then(|o| o.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "NoFeasibleVariant" && c.message.contains("of memory"))
            })
    };
    await_condition(isvcs.clone(), "chat", infeasible, TIMEOUT).await?;

    // Fixing the spec recovers.
    let patch = serde_json::json!({ "spec": { "model": { "parameters": "135M" } } });
    isvcs
        .patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    await_condition(isvcs.clone(), "chat", ready, TIMEOUT).await?;

    scene.stop().await?;
    Ok(())
}

#[tokio::test]
async fn fewer_replicas_wait_for_the_scale_down_delay() -> anyhow::Result<()> {
    let scene = Scene::start("op-scale-down", |ns| vec![cpu_class(ns)]).await?;
    let ns = &scene.ns;

    let isvcs: Api<InferenceService> = scene.api();
    let mut isvc = smol("chat", &ns.name, &[&format!("{}-cpu", ns.name)]);
    isvc.spec.scaling.min_replicas = 2;
    isvc.spec.scaling.scale_down_delay = "8s".into();
    isvcs.create(&PostParams::default(), &isvc).await?;
    await_condition(isvcs.clone(), "chat", ready, TIMEOUT).await?;

    // The decision drops to one replica; the two running ones stay for the delay.
    let lowered = serde_json::json!({ "spec": { "scaling": { "minReplicas": 1 } } });
    isvcs
        .patch("chat", &PatchParams::default(), &Patch::Merge(&lowered))
        .await?;
    let held = await_condition(
        isvcs.clone(),
        "chat",
        |o: Option<&InferenceService>| {
            ready(o)
                && o.and_then(|o| o.status.as_ref())
                    .is_some_and(|s| s.scale_down_since.is_some())
        },
        TIMEOUT,
    )
    .await?;
    let status = held.status.expect("status");
    let decision = status.decision.expect("decision");
    assert_eq!(
        decision.replicas, 2,
        "held at the running count: {}",
        decision.reason
    );
    assert!(decision.reason.contains("scaleDownDelay"), "{}", decision.reason);
    let deployments: Api<Deployment> = scene.api();
    let running = deployments.list(&ListParams::default()).await?;
    assert!(
        running.items.iter().all(|d| d.spec.replicas == Some(2)),
        "the Deployment keeps two replicas during the delay"
    );

    // After the delay the operator comes back by itself (no event needed) and scales down.
    let done = await_condition(
        isvcs.clone(),
        "chat",
        |o: Option<&InferenceService>| {
            o.and_then(|o| o.status.as_ref()).is_some_and(|s| {
                s.scale_down_since.is_none() && s.decision.as_ref().is_some_and(|d| d.replicas == 1)
            })
        },
        TIMEOUT,
    )
    .await?;
    let since = status.scale_down_since.expect("since").0;
    let waited = k8s_openapi::jiff::Timestamp::now().duration_since(since);
    assert!(
        waited.as_secs() >= 8,
        "scaled down after {waited:?}, before the 8 s delay"
    );
    assert!(
        done.status
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready"))
    );
    await_list(
        &deployments,
        &ListParams::default(),
        |ds: &[Deployment]| !ds.is_empty() && ds.iter().all(|d| d.spec.replicas == Some(1)),
        TIMEOUT,
    )
    .await?;

    scene.stop().await?;
    Ok(())
}
