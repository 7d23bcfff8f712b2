//! `down` leaves no engine process behind, whatever state its pods were in: serving, starting,
//! crash-looping. Runs its own small cluster beside the shared one (its own state directory, ports
//! and pod range), so stopping it disturbs no other test.

mod operator_support;

use std::time::Duration;

use bitscale_e2e::{Cluster, Layout};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use operator_support::live::*;

fn engine_pod(name: &str, args: &[&str]) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "containers": [{
                "name": "engine",
                "image": ENGINE_IMAGES[0],
                "args": args,
                "ports": [{ "name": "http", "containerPort": ENGINE_PORT }],
                "readinessProbe": { "httpGet": { "path": "/ready", "port": "http" }, "periodSeconds": 1 },
                "resources": { "limits": { "cpu": "1", "memory": "512Mi" } },
            }],
            "nodeSelector": { "bitscale.dev/pool": "cpu" },
        },
    }))
    .expect("valid pod")
}

#[tokio::test]
async fn down_stops_every_engine_process_of_the_cluster() -> anyhow::Result<()> {
    let layout = Layout::from_env()?.named("down-test");
    let cluster = Cluster::up(layout.clone()).await?;
    let client = cluster.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let model = tiny_model()?;
    let model = model.to_string_lossy();
    let serve = [
        "serve",
        "--model",
        &model,
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--threads",
        "1",
    ];
    for (name, args) in [
        ("serving", serve.to_vec()),
        ("crashing", vec!["serve", "--model", "/nonexistent/model.gguf"]),
    ] {
        pods.create(&PostParams::default(), &engine_pod(name, &args))
            .await?;
    }
    let serving = eventually("the serving pod Ready", Duration::from_secs(90), || async {
        let pod = pods.get("serving").await?;
        Ok(pod_ready(&pod).then_some(pod))
    })
    .await?;
    let pid = engine_pid(&serving).expect("serving pid");
    eventually("the crashing pod restarted", Duration::from_secs(60), || async {
        Ok((restarts(&pods.get("crashing").await?) >= 1).then_some(()))
    })
    .await?;
    // A third pod still starting when the cluster goes.
    pods.create(&PostParams::default(), &engine_pod("starting", &serve))
        .await?;

    let stopped = Cluster::down(layout.clone()).await?;
    assert!(stopped.iter().any(|c| c == "pod-runner"), "stopped: {stopped:?}");
    assert!(
        !bitscale_e2e::process_is_running(pid),
        "the serving engine {pid} outlived down"
    );
    let state = layout.cluster_dir();
    let left = bitscale_e2e::processes_with_env("BITSCALE_E2E_STATE", &state.to_string_lossy());
    assert!(
        left.is_empty(),
        "processes of the stopped cluster still run: {left:?}"
    );
    assert!(!state.exists(), "{} was not removed", state.display());
    Ok(())
}
