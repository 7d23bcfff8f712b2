//! The local cluster is live: engine pods of an InferenceService run as real `bitscale-engine`
//! processes at their pod IPs, readiness follows the engine's `/ready`, a killed engine shows as a
//! restart and comes back while its sibling keeps serving, deleting the InferenceService stops its
//! processes, and a real Prometheus scrapes the engines under the InferenceService and variant
//! labels.
//!
//! Each test has its own namespace, class and in-process operator; engines serve the generated
//! tiny model with one thread each.

mod operator_support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bitscale_api::v1alpha1::InferenceService;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use operator_support::{live::*, *};

/// Engines load the tiny model in well under a second; pods also wait for a probe period (5 s).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

async fn live_scene(prefix: &str) -> anyhow::Result<Scene> {
    Scene::start_with(prefix, |p| vec![tiny_class(p)], ENGINE_IMAGES).await
}

async fn engine_pods(pods: &Api<Pod>, service: &str) -> anyhow::Result<Vec<Pod>> {
    let selector = format!("bitscale.dev/inference-service={service}");
    Ok(pods.list(&ListParams::default().labels(&selector)).await?.items)
}

/// Creates the InferenceService `name` of the tiny model with `replicas` replicas in the scene and
/// waits for that many Ready engine pods.
async fn serve(scene: &Scene, name: &str, replicas: i32) -> anyhow::Result<(Api<Pod>, Vec<Pod>)> {
    let class = format!("{}-tiny", scene.ns.name);
    let service = tiny_service(name, &scene.ns.name, &class, &tiny_model()?, replicas);
    scene
        .api::<InferenceService>()
        .create(&PostParams::default(), &service)
        .await?;
    let pods: Api<Pod> = scene.api();
    let ready = ready_pods(&pods, name, usize::try_from(replicas)?).await?;
    Ok((pods, ready))
}

async fn ready_pods(pods: &Api<Pod>, service: &str, count: usize) -> anyhow::Result<Vec<Pod>> {
    eventually(
        &format!("{count} Ready engine pods of {service}"),
        READY_TIMEOUT,
        || async {
            let all = engine_pods(pods, service).await?;
            let ready: Vec<Pod> = all.into_iter().filter(pod_ready).collect();
            Ok((ready.len() == count).then_some(ready))
        },
    )
    .await
}

#[tokio::test]
async fn an_engine_pod_answers_at_its_ip_turns_ready_after_its_engine_and_is_scraped() -> anyhow::Result<()> {
    let scene = live_scene("live-serve").await?;
    let model = tiny_model()?;
    let class = format!("{}-tiny", scene.ns.name);
    let services: Api<InferenceService> = scene.api();
    services
        .create(
            &PostParams::default(),
            &tiny_service("tiny", &scene.ns.name, &class, &model, 1),
        )
        .await?;
    let pods: Api<Pod> = scene.api();
    let http = http();

    // Watch the pod from the moment it has an IP: whenever the API says Ready, the engine's own
    // /ready must already answer 200; and before that, the pod must have been seen not Ready.
    let mut seen_unready = false;
    let deadline = Instant::now() + READY_TIMEOUT;
    let pod = loop {
        anyhow::ensure!(Instant::now() < deadline, "the engine pod did not turn Ready");
        let pod = engine_pods(&pods, "tiny").await?.into_iter().next();
        if let Some(pod) = pod
            && let Some(ip) = pod_ip(&pod)
        {
            if pod_ready(&pod) {
                let ready = http
                    .get(format!("http://{ip}:{ENGINE_PORT}/ready"))
                    .send()
                    .await?;
                assert!(
                    ready.status().is_success(),
                    "pod Ready while /ready says {}",
                    ready.status()
                );
                break pod;
            }
            seen_unready = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen_unready, "the pod was never seen before it was Ready");
    let ip = pod_ip(&pod).expect("ip");
    assert!(ip.is_loopback(), "pod IP {ip} is not a loopback address");
    let reply = chat(&http, ip, "tiny").await?;
    assert!(!reply.is_empty(), "an empty reply");
    let pid = engine_pid(&pod).expect("a running engine");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    assert!(
        String::from_utf8_lossy(&cmdline).contains("bitscale-engine"),
        "pid {pid} is not the engine"
    );

    let url = scene.cluster.prometheus_url().expect("prometheus url");
    let variant = pod
        .labels()
        .get("bitscale.dev/variant")
        .cloned()
        .expect("variant label");
    let selector = format!(
        "namespace=\"{}\",pod=\"{}\",inference_service=\"tiny\",variant=\"{variant}\"",
        scene.ns.name,
        pod.name_any()
    );
    // Two scrape intervals are 4 s; discovery of a new pod and the first scrape take a few more.
    let started = Instant::now();
    let info = eventually(
        "bitscale_engine_info in Prometheus",
        Duration::from_secs(30),
        || async {
            let result =
                prometheus_query(&http, &url, &format!("bitscale_engine_info{{{selector}}}")).await?;
            Ok(result.into_iter().next())
        },
    )
    .await?;
    assert_eq!(info["metric"]["quantization"], "q8_0", "{info}");
    let tokens = eventually(
        "generated tokens in Prometheus",
        Duration::from_secs(30),
        || async {
            let query = format!("bitscale_engine_generation_tokens_total{{{selector}}}");
            let result = prometheus_query(&http, &url, &query).await?;
            let value = result
                .first()
                .and_then(|r| r["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok());
            Ok(value.filter(|v| *v > 0.0))
        },
    )
    .await?;
    eprintln!(
        "scraped: info and {tokens} generated tokens for {} within {:.1}s",
        pod.name_any(),
        started.elapsed().as_secs_f64()
    );
    scene.stop().await
}

#[tokio::test]
async fn a_killed_engine_restarts_while_its_sibling_keeps_answering() -> anyhow::Result<()> {
    let scene = live_scene("live-kill").await?;
    let (pods, ready) = serve(&scene, "pair", 2).await?;
    let (victim, sibling) = (&ready[0], &ready[1]);
    let victim_pid = engine_pid(victim).expect("victim pid");
    let sibling_ip = pod_ip(sibling).expect("sibling ip");

    // Requests to the sibling, throughout the kill and the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            let http = http();
            while !stop.load(Ordering::Relaxed) {
                match chat(&http, sibling_ip, "pair").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("sibling failed: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(victim_pid)?).expect("pid"),
        rustix::process::Signal::KILL,
    )?;
    let name = victim.name_any();
    let down = eventually(
        "the killed pod unready with a restart",
        Duration::from_secs(30),
        || async {
            let pod = pods.get(&name).await?;
            Ok((!pod_ready(&pod) && restarts(&pod) >= 1).then_some(pod))
        },
    )
    .await?;
    let last = down
        .status
        .as_ref()
        .and_then(|s| {
            s.container_statuses
                .as_ref()?
                .first()?
                .last_state
                .clone()?
                .terminated
        })
        .expect("last state terminated");
    assert_eq!(last.exit_code, 137, "SIGKILL shows as 128 + 9");
    let back = eventually("the killed pod Ready again", READY_TIMEOUT, || async {
        let pod = pods.get(&name).await?;
        Ok(pod_ready(&pod).then_some(pod))
    })
    .await?;
    let new_pid = engine_pid(&back).expect("a new engine");
    assert_ne!(new_pid, victim_pid);
    assert!(!bitscale_e2e::process_is_running(victim_pid));
    chat(&http(), pod_ip(&back).expect("ip"), "pair").await?;

    stop.store(true, Ordering::Relaxed);
    load.await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "the sibling failed {failed} of {} requests",
        ok + failed
    );
    assert!(ok > 0, "no request reached the sibling");
    scene.stop().await
}

#[tokio::test]
async fn deleting_the_inference_service_stops_its_engines_within_the_grace_period() -> anyhow::Result<()> {
    let scene = live_scene("live-delete").await?;
    let services: Api<InferenceService> = scene.api();
    let (pods, ready) = serve(&scene, "gone", 2).await?;
    let pids: Vec<u32> = ready.iter().filter_map(engine_pid).collect();
    assert_eq!(pids.len(), 2);
    let grace = ready[0]
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);

    let deleted = Instant::now();
    services.delete("gone", &DeleteParams::foreground()).await?;
    eventually(
        "the engine processes gone",
        Duration::from_secs(u64::try_from(grace)?),
        || async {
            Ok(pids
                .iter()
                .all(|p| !bitscale_e2e::process_is_running(*p))
                .then_some(()))
        },
    )
    .await?;
    eventually("the engine pods removed", Duration::from_secs(30), || async {
        Ok(engine_pods(&pods, "gone").await?.is_empty().then_some(()))
    })
    .await?;
    eprintln!(
        "engines {pids:?} stopped {:.1}s after the delete (grace {grace}s)",
        deleted.elapsed().as_secs_f64()
    );
    scene.stop().await
}

fn engine_job(name: &str, args: &[&str], message_policy: &str) -> k8s_openapi::api::batch::v1::Job {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "nodeSelector": { "bitscale.dev/pool": "cpu" },
                "containers": [{
                    "name": "engine",
                    "image": ENGINE_IMAGES[0],
                    "args": args,
                    "terminationMessagePolicy": message_policy,
                    "resources": { "limits": { "cpu": "1", "memory": "512Mi" } },
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
                        "capabilities": { "drop": ["ALL"] }, "seccompProfile": { "type": "RuntimeDefault" },
                    },
                }],
            }},
        },
    }))
    .expect("valid Job")
}

fn job_condition(job: &k8s_openapi::api::batch::v1::Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

async fn termination_message(pods: &Api<Pod>, job: &str) -> anyhow::Result<String> {
    let selector = format!("job-name={job}");
    let pod = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no pod of job {job}"))?;
    pod.status
        .and_then(|s| s.container_statuses?.first()?.state.clone()?.terminated?.message)
        .ok_or_else(|| anyhow::anyhow!("no termination message on the pod of job {job}"))
}

#[tokio::test]
async fn a_job_completes_or_fails_with_its_termination_message_in_the_pod_status() -> anyhow::Result<()> {
    let scene = live_scene("live-job").await?;
    let model = tiny_model()?;
    let model = model.to_string_lossy();
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = scene.api();
    let eval = [
        "eval",
        "--model",
        &model,
        "--levels",
        "q8_0",
        "--max-tokens",
        "64",
        "--format",
        "json",
        "--output",
        "/dev/termination-log",
    ];
    jobs.create(&PostParams::default(), &engine_job("eval", &eval, "File"))
        .await?;
    let failing = ["serve", "--model", "/nonexistent/weights.gguf"];
    jobs.create(
        &PostParams::default(),
        &engine_job("broken", &failing, "FallbackToLogsOnError"),
    )
    .await?;
    for (name, condition) in [("eval", "Complete"), ("broken", "Failed")] {
        eventually(&format!("job {name} {condition}"), READY_TIMEOUT, || async {
            Ok(job_condition(&jobs.get(name).await?, condition).then_some(()))
        })
        .await?;
    }
    let pods: Api<Pod> = scene.api();
    let report: serde_json::Value = serde_json::from_str(&termination_message(&pods, "eval").await?)?;
    assert!(
        report.to_string().contains("q8_0"),
        "the eval report names the level: {report}"
    );
    let logs = termination_message(&pods, "broken").await?;
    assert!(
        logs.contains("nonexistent"),
        "the log tail says what failed: {logs}"
    );
    scene.stop().await
}

#[tokio::test]
async fn a_model_on_a_claim_is_read_from_the_persistent_volumes_path() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let scene = live_scene("live-pvc").await?;
    let model = tiny_model()?;
    let dir = model
        .parent()
        .expect("model folder")
        .to_string_lossy()
        .into_owned();
    let (ns, claim) = (scene.ns.name.clone(), "weights");
    // Bound by the real PV controller: a static volume on this machine's folder, and a claim of it.
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": { "name": ns },
        "spec": {
            "capacity": { "storage": "1Gi" }, "accessModes": ["ReadOnlyMany"],
            "storageClassName": "", "hostPath": { "path": dir, "type": "Directory" },
            "claimRef": { "namespace": ns, "name": claim },
        },
    }))?;
    let volumes: Api<PersistentVolume> = Api::all(scene.client.clone());
    volumes.create(&PostParams::default(), &pv).await?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": { "name": claim },
        "spec": {
            "accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": ns,
            "resources": { "requests": { "storage": "1Gi" } },
        },
    }))?;
    scene
        .api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &pvc)
        .await?;

    let class = format!("{ns}-tiny");
    let mut service = tiny_service("claimed", &ns, &class, &model, 1);
    service.spec.model.source = format!("pvc://{claim}/test-llama.gguf");
    scene
        .api::<InferenceService>()
        .create(&PostParams::default(), &service)
        .await?;
    let pods: Api<Pod> = scene.api();
    let result = async {
        let ready = ready_pods(&pods, "claimed", 1).await?;
        chat(&http(), pod_ip(&ready[0]).expect("ip"), "claimed").await
    }
    .await;
    let _ = volumes.delete(&ns, &DeleteParams::default()).await;
    result?;
    scene.stop().await
}
