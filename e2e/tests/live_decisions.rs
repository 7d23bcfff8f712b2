//! Live decisions on the local cluster: the in-process operator reads what real engine pods
//! report to the real Prometheus, and scales on it — up at once when load rises, down only after
//! `scaleDownDelay` when it stops — and holds its decision, saying why, when Prometheus goes away.
//!
//! Engines serve the generated tiny model with one thread each; load comes from closed-loop
//! clients in this process at the pods' IPs.

mod operator_support;

use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bitscale_api::v1alpha1::InferenceService;
use bitscale_e2e::{Cluster, Layout};
use bitscale_operator::{Config, observe};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use operator_support::{live::*, *};

/// The harness's Prometheus scrapes every 2 s; decisions every 4 s over a 10 s window.
const PERIOD: Duration = Duration::from_secs(4);
const WINDOW: Duration = Duration::from_secs(10);

fn observing(cluster: &Cluster) -> anyhow::Result<impl FnOnce(&mut Config) + use<>> {
    let url = cluster
        .prometheus_url()
        .ok_or_else(|| anyhow::anyhow!("the local cluster runs no Prometheus"))?;
    Ok(move |config: &mut Config| {
        config.observe = Some(observe::Config {
            url,
            period: PERIOD,
            window: WINDOW,
            timeout: Duration::from_secs(2),
        });
    })
}

/// The tiny model at q8_0 on `class`, between `min` and `max` replicas, with no demand given:
/// what it needs comes from what its pods report.
fn scaling_service(
    name: &str,
    namespace: &str,
    class: &str,
    min: i32,
    max: i32,
    delay: &str,
) -> anyhow::Result<InferenceService> {
    let mut service = tiny_service(name, namespace, class, &tiny_model()?, min);
    service.spec.scaling.max_replicas = max;
    service.spec.scaling.scale_down_delay = delay.to_owned();
    Ok(service)
}

/// Closed-loop clients sending completions to `ip` until `stop` is set.
fn load(
    ip: Ipv4Addr,
    model: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..clients)
        .map(|_| {
            let (stop, model, http) = (stop.clone(), model.to_owned(), http());
            tokio::spawn(async move {
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    let response = http
                        .post(format!("http://{ip}:{ENGINE_PORT}/v1/completions"))
                        .json(&serde_json::json!({
                            "model": model,
                            "prompt": "the quick brown fox jumps over the lazy dog",
                            "max_tokens": 48,
                            "ignore_eos": true,
                            "temperature": 0
                        }))
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().is_success() => answered += 1,
                        // Overload (429) or a pod going away: back off a little and go on.
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                answered
            })
        })
        .collect()
}

fn decided_replicas(service: &InferenceService) -> Option<i32> {
    service.status.as_ref()?.decision.as_ref().map(|d| d.replicas)
}

async fn first_ready_ip(pods: &Api<Pod>, service: &str) -> anyhow::Result<Ipv4Addr> {
    eventually(&format!("a Ready engine pod of {service}"), TIMEOUT, || async {
        let selector = format!("bitscale.dev/inference-service={service}");
        let list = pods.list(&ListParams::default().labels(&selector)).await?.items;
        Ok(list.iter().filter(|p| pod_ready(p)).find_map(pod_ip))
    })
    .await
}

#[tokio::test]
async fn replicas_rise_with_measured_load_and_fall_only_after_the_delay() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let configure = observing(&cluster)?;
    let scene =
        Scene::start_configured("live-load", |p| vec![tiny_class(p)], ENGINE_IMAGES, configure).await?;
    let class = format!("{}-tiny", scene.ns.name);
    let delay = Duration::from_secs(30);
    let services: Api<InferenceService> = scene.api();
    services
        .create(
            &PostParams::default(),
            &scaling_service("tiny", &scene.ns.name, &class, 1, 3, "30s")?,
        )
        .await?;
    let ip = first_ready_ip(&scene.api(), "tiny").await?;
    // Idle, one replica, and the decision says the demand was measured.
    eventually("a measured idle decision", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        let basis = s
            .status
            .as_ref()
            .and_then(|s| s.decision.as_ref())
            .map(|d| d.basis.clone());
        Ok(
            (decided_replicas(&s) == Some(1) && basis.is_some_and(|b| b.starts_with("demand measured")))
                .then_some(()),
        )
    })
    .await?;

    // Eight closed-loop clients keep the one replica (four sequences at a time) saturated.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients = load(ip, "tiny", 8, stop.clone());
    let raised = eventually("more replicas under load", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        Ok(decided_replicas(&s).filter(|r| *r >= 2).map(|r| (r, s)))
    })
    .await;
    let rise = started.elapsed();
    let (replicas, raised) = match raised {
        Ok(found) => found,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    eprintln!(
        "replicas 1 → {replicas} after {rise:?} of load (scrape 2 s, period {PERIOD:?}, window {WINDOW:?})"
    );
    let status = raised.status.as_ref().expect("status");
    let observed = status.observed.as_ref().expect("status.observed under load");
    assert!(observed.generated_tokens_per_second > 0.0, "{observed:?}");
    // The roofline prior knows the tiny model only by its parameter count (its KV floor is a
    // real model's): the engine's measured steps correct it, and the decision says its capacity
    // was measured.
    let profile = status
        .profiles
        .iter()
        .find(|p| p.samples > 0)
        .unwrap_or_else(|| panic!("a measured profile: {:?}", status.profiles));
    assert!(
        profile.slowdown.is_finite() && profile.slowdown > 0.0 && profile.slowdown != 1.0,
        "{profile:?}"
    );
    let decision = status.decision.as_ref().expect("decision");
    assert!(decision.basis.contains("capacity measured"), "{}", decision.basis);
    eprintln!("profile under load: {profile:?}");
    let deployments: Api<Deployment> = scene.api();
    eventually("the Deployment scaled up", TIMEOUT, || async {
        let list = deployments
            .list(&ListParams::default().labels("bitscale.dev/inference-service=tiny"))
            .await?;
        Ok(list
            .items
            .iter()
            .any(|d| d.spec.replicas == Some(replicas))
            .then_some(()))
    })
    .await?;

    // Load stops: the decision calls for one replica at once, but the running ones stay for the
    // whole delay.
    stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    for client in clients {
        client.await?;
    }
    let fell = eventually("replicas back to 1", TIMEOUT + delay, || async {
        let s = services.get("tiny").await?;
        if decided_replicas(&s).is_some_and(|r| r < replicas) {
            return Ok(Some((stopped.elapsed(), s)));
        }
        Ok(None)
    })
    .await?;
    eprintln!(
        "replicas {replicas} → fewer {:?} after the load stopped (delay {delay:?})",
        fell.0
    );
    assert!(
        fell.0 >= delay,
        "scaled down {:?} after the load stopped, before the {delay:?} delay",
        fell.0
    );
    scene.stop().await
}

#[tokio::test]
async fn without_prometheus_nothing_scales_down_and_metrics_available_says_why() -> anyhow::Result<()> {
    // Its own cluster: stopping the shared one's Prometheus would blind the other tests.
    let layout = Layout::from_env()?.named("metrics-down");
    let cluster = Cluster::up(layout.clone()).await?;
    let result = prometheus_stops_and_returns(&cluster).await;
    Cluster::down(layout).await?;
    result
}

async fn prometheus_stops_and_returns(cluster: &Cluster) -> anyhow::Result<()> {
    let configure = observing(cluster)?;
    let scene = Scene::start_on(
        cluster.clone(),
        "live-prom",
        |p| vec![tiny_class(p)],
        ENGINE_IMAGES,
        configure,
    )
    .await?;
    let class = format!("{}-tiny", scene.ns.name);
    let services: Api<InferenceService> = scene.api();
    // Two replicas of an idle service; lowering its minimum later lets it go to one after 1 s,
    // so only the absence of data can keep it at two.
    let service = scaling_service("tiny", &scene.ns.name, &class, 2, 2, "1s")?;
    services.create(&PostParams::default(), &service).await?;
    eventually("two replicas measured", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        Ok(
            (condition_is(Some(&s), "MetricsAvailable", "True") && decided_replicas(&s) == Some(2))
                .then_some(()),
        )
    })
    .await?;

    cluster.stop_prometheus()?;
    let blind = eventually("MetricsAvailable=False", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        Ok(condition_is(Some(&s), "MetricsAvailable", "False").then_some(s))
    })
    .await;
    let lowered = match &blind {
        Ok(_) => {
            let patch = serde_json::json!({ "spec": { "scaling": { "minReplicas": 1 } } });
            services
                .patch(
                    "tiny",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .map(|_| ())
        }
        Err(_) => Ok(()),
    };
    // Several decision periods without data.
    tokio::time::sleep(PERIOD * 3).await;
    let held = services.get("tiny").await?;
    let restarted = cluster.restart_prometheus().await;
    let blind = blind?;
    lowered?;
    restarted?;
    let condition = blind
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "MetricsAvailable"))
        .expect("MetricsAvailable");
    assert_eq!(condition.reason, "PrometheusUnavailable", "{condition:?}");
    assert_eq!(held.spec.scaling.min_replicas, 1);
    assert_eq!(
        decided_replicas(&held),
        Some(2),
        "scaled down without data: {:?}",
        held.status
    );

    // Data returns: measured again, and the idle service goes down to its new minimum.
    eventually("measured again and scaled to one", TIMEOUT, || async {
        let s = services.get("tiny").await?;
        Ok(
            (condition_is(Some(&s), "MetricsAvailable", "True") && decided_replicas(&s) == Some(1))
                .then_some(()),
        )
    })
    .await?;
    scene.stop().await
}

/// The real SmolLM2 file `scripts/fetch-smollm2.sh` fetches.
fn smollm2() -> anyhow::Result<std::path::PathBuf> {
    let models = match std::env::var_os("BITSCALE_MODELS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => Layout::from_env()?.root().join("models"),
    };
    let path = models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run scripts/fetch-smollm2.sh",
        path.display()
    );
    Ok(path)
}

/// The profiling Job's figure for the level `decision` serves, printed beside the pods' `loss`.
fn profiled_and_served(
    quality: &bitscale_api::v1alpha1::QualityMeasurement,
    decision: &bitscale_api::v1alpha1::Decision,
    loss: f64,
) -> anyhow::Result<f64> {
    let level = decision.variant.level;
    let profiled = quality
        .levels
        .iter()
        .find(|l| l.level == level)
        .map(|l| l.ppl_increase)
        .ok_or_else(|| anyhow::anyhow!("{level} was not profiled: {quality:?}"))?;
    eprintln!(
        "served {level} at {loss:+.4} (profiled {profiled:+.4}): {}",
        decision.basis
    );
    Ok(profiled)
}

#[tokio::test]
async fn measured_quality_refuses_the_levels_over_the_budget_and_says_so() -> anyhow::Result<()> {
    let model = smollm2()?;
    let observe = observing(&Cluster::shared().await?)?;
    let scene = Scene::start_configured(
        "live-quality",
        |p| {
            vec![hardware_class(
                format!("{p}-cpu"),
                serde_json::json!({
                    "resources": { "cpu": "1", "memory": "2Gi" },
                    "nodeSelector": { "bitscale.dev/pool": "cpu" },
                    "costPerHour": 0.05,
                    "memoryBandwidth": "10GB/s",
                    "threads": 1
                }),
            )]
        },
        ENGINE_IMAGES,
        |config| {
            observe(config);
            config.profile_quality = true;
        },
    )
    .await?;
    let service = inference_service(
        "smol",
        &scene.ns.name,
        serde_json::json!({
            "model": {
                "source": format!("file://{}", model.display()),
                "format": "gguf",
                "parameters": "135M",
                "contextLength": 1024
            },
            // The README example's levels and budget.
            "quantization": { "allowed": ["q8_0", "q6_k", "q5_k", "q4_k", "q4_1"], "maxQualityLoss": 0.05 },
            "placement": { "hardwareClasses": [format!("{}-cpu", scene.ns.name)] },
            "slo": { "timeToFirstToken": "10s", "interTokenLatency": "1s" },
            "scaling": { "minReplicas": 1, "maxReplicas": 1 },
            "engine": { "maxRunning": 2 }
        }),
    );
    let services: Api<InferenceService> = scene.api();
    services.create(&PostParams::default(), &service).await?;
    // Before the Job reports, the decision says its quality figures are priors.
    let first = eventually("a first decision", TIMEOUT, || async {
        let s = services.get("smol").await?;
        Ok(s.status.and_then(|s| s.decision))
    })
    .await?;
    assert!(
        first.basis.contains("quality loss from priors"),
        "{}",
        first.basis
    );

    // eval over five levels of the real model, one Job, its report in the termination message.
    let measured = eventually("the quality measurement", Duration::from_secs(600), || async {
        let s = services.get("smol").await?;
        let status = s.status.unwrap_or_default();
        match (status.quality, status.decision) {
            (Some(q), _) if q.failure.is_some() => anyhow::bail!("the eval Job failed: {:?}", q.failure),
            (Some(q), Some(d)) if d.basis.contains("measured by Job") => Ok(Some((q, d))),
            _ => Ok(None),
        }
    })
    .await?;
    let (quality, decision) = measured;
    eprintln!(
        "measured: {quality:?}\ndecision: {} ({})",
        decision.reason, decision.basis
    );
    assert_eq!(quality.levels.len(), 5, "{quality:?}");
    assert_eq!(quality.reference.as_deref(), Some("q4_1"));
    for level in ["q5_k", "q4_k"] {
        let alternative = decision
            .alternatives
            .iter()
            .find(|a| a.variant.level.as_str() == level)
            .ok_or_else(|| anyhow::anyhow!("{level} is not listed: {decision:?}"))?;
        assert!(
            alternative.reason.contains("exceeds the budget 5.00%"),
            "{level}: {}",
            alternative.reason
        );
    }
    assert!(
        !matches!(decision.variant.level.as_str(), "q5_k" | "q4_k"),
        "{decision:?}"
    );

    // The pods of the level it serves measure that level themselves at start, and Prometheus
    // brings their figure back: it confirms the profile.
    let confirmed = eventually(
        "the serving pods' own quality loss",
        Duration::from_secs(300),
        || async {
            let s = services.get("smol").await?;
            let status = s.status.unwrap_or_default();
            let loss = status.observed.and_then(|o| o.quality_loss);
            Ok(loss.zip(
                status
                    .decision
                    .filter(|d| d.basis.contains("confirmed by its pods")),
            ))
        },
    )
    .await?;
    let (loss, decision) = confirmed;
    let profiled = profiled_and_served(&quality, &decision, loss)?;
    assert!(
        (loss - profiled).abs() <= 0.001,
        "pods {loss} against the profile {profiled}"
    );

    // Without q4_1 the allowed levels change: a second Job measures the new set, and the pods
    // of the level now chosen, not the source's own precision, load that reference beside
    // their weights to confirm the Job's figure on the same tokens.
    let first_job = quality.job.clone();
    let allowed =
        serde_json::json!({ "spec": { "quantization": { "allowed": ["q8_0", "q6_k", "q5_k", "q4_k"] } } });
    services
        .patch("smol", &PatchParams::default(), &Patch::Merge(&allowed))
        .await?;
    let (quality, loss, decision) = eventually(
        "a second Job and a confirmed level",
        Duration::from_secs(600),
        || async {
            let status = services.get("smol").await?.status.unwrap_or_default();
            let loss = status.observed.as_ref().and_then(|o| o.quality_loss);
            Ok(match (status.quality, loss, status.decision) {
                (Some(q), Some(loss), Some(d))
                    if q.job != first_job
                        && d.variant.level.as_str() != "q4_1"
                        && d.basis
                            .contains(&format!("confirmed by its pods: {}", d.variant.level)) =>
                {
                    Some((q, loss, d))
                }
                _ => None,
            })
        },
    )
    .await?;
    let profiled = profiled_and_served(&quality, &decision, loss)?;
    assert!(
        profiled > 0.0,
        "a level below the source's precision loses something"
    );
    assert!(
        (loss - profiled).abs() <= 0.001,
        "pods {loss} against the profile {profiled}"
    );
    scene.stop().await
}
