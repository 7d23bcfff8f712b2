//! For tests against real engine processes: the generated tiny model, a one-CPU class, an
//! InferenceService of it, and reading pods, engines and Prometheus the way a user would.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use bitscale_api::v1alpha1::{HardwareClass, InferenceService};
use bitscale_e2e::paths::workspace_bin_dir;
use k8s_openapi::api::core::v1::Pod;

/// The engine images the pod runner runs (cpu, cuda).
pub const ENGINE_IMAGES: [&str; 2] = ["bitscale-engine:test", "bitscale-engine:test-cuda"];

/// The engine's HTTP port in every pod the operator builds.
pub const ENGINE_PORT: u16 = 8000;

/// The generated tiny Llama (GGUF, f32, ~0.3 MB), written once under the cache.
pub fn tiny_model() -> anyhow::Result<PathBuf> {
    let layout = bitscale_e2e::Layout::from_env()?;
    let dir = layout.root().join("models").join("test-llama");
    let gguf = dir.join("test-llama.gguf");
    if gguf.is_file() {
        return Ok(gguf);
    }
    // Parallel tests (threads of one process, or several processes): each writes its own copy into
    // a fresh folder, then the first rename wins.
    let models = layout.root().join("models");
    std::fs::create_dir_all(&models)?;
    let partial = tempfile::Builder::new()
        .prefix("test-llama.partial-")
        .tempdir_in(&models)?;
    let engine = workspace_bin_dir()?.join("bitscale-engine");
    let status = std::process::Command::new(&engine)
        .args(["gen-test-model", "--out"])
        .arg(partial.path())
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "{} gen-test-model failed", engine.display());
    // A lost race leaves `partial` to be removed when it drops.
    let _ = std::fs::rename(partial.path(), &dir);
    Ok(gguf)
}

/// A one-CPU class on the `cpu` pool named `<prefix>-tiny`: one engine thread per replica.
pub fn tiny_class(prefix: &str) -> HardwareClass {
    super::hardware_class(
        format!("{prefix}-tiny"),
        serde_json::json!({
            "resources": { "cpu": "1", "memory": "1Gi" },
            "nodeSelector": { "bitscale.dev/pool": "cpu" },
            "costPerHour": 0.05,
            "memoryBandwidth": "10GB/s",
            "threads": 1
        }),
    )
}

/// An InferenceService of the tiny model at q8_0 on `class` with exactly `replicas` replicas.
pub fn tiny_service(
    name: &str,
    namespace: &str,
    class: &str,
    model: &std::path::Path,
    replicas: i32,
) -> InferenceService {
    super::inference_service(
        name,
        namespace,
        serde_json::json!({
            "model": {
                "source": format!("file://{}", model.display()),
                "format": "gguf",
                "parameters": "300K",
                "contextLength": 256
            },
            "quantization": { "pinned": "q8_0" },
            "placement": { "hardwareClasses": [class] },
            "slo": { "timeToFirstToken": "5s", "interTokenLatency": "500ms" },
            "scaling": { "minReplicas": replicas, "maxReplicas": replicas },
            "engine": { "maxRunning": 4 }
        }),
    )
}

/// The pod's IP, once it has one.
pub fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The engine container's PID (from its container ID, `bitscale-e2e://<pid>`) while it runs.
pub fn engine_pid(pod: &Pod) -> Option<u32> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    status.state.as_ref()?.running.as_ref()?;
    status
        .container_id
        .as_deref()?
        .strip_prefix("bitscale-e2e://")?
        .parse()
        .ok()
}

/// The engine container's restart count.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}

/// A loopback-only HTTP client for the engines and Prometheus.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// A short greedy chat completion at an engine; the reply's text.
pub async fn chat(http: &reqwest::Client, ip: Ipv4Addr, model: &str) -> anyhow::Result<String> {
    let response = http
        .post(format!("http://{ip}:{ENGINE_PORT}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": model,
            "messages": [{ "role": "user", "content": "Name the capital of France." }],
            "max_tokens": 4,
            "temperature": 0
        }))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "chat completion: {status}: {body}");
    body["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no content in {body}"))
}

/// The result vector of an instant query.
pub async fn prometheus_query(
    http: &reqwest::Client,
    url: &str,
    query: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let body: serde_json::Value = http
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(body["status"] == "success", "query {query}: {body}");
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Polls `check` every 200 ms until it yields a value, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last error: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
