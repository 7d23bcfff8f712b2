//! `helm install` of the chart alone brings up a working operator: the pod runner runs the
//! chart's operator pod as the real `bitscale-operator` process, talking to the API server as the
//! chart's ServiceAccount (a TokenRequest token), so its least-privilege RBAC is exercised by
//! everything it does; an InferenceService then becomes Ready with a real engine answering.

mod operator_support;

use bitscale_api::v1alpha1::InferenceService;
use bitscale_e2e::{TestNamespace, await_condition};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use operator_support::{live::*, *};

#[tokio::test]
async fn helm_install_alone_runs_an_operator_that_serves_an_inference_service() -> anyhow::Result<()> {
    let cluster = bitscale_e2e::Cluster::shared().await?;
    let admin = cluster.client().await?;
    let ns = TestNamespace::create(&admin, "op-helm").await?;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/bitscale");

    // Classes named after the namespace, so parallel runs do not collide; null drops the defaults.
    // The operator watches only this namespace: other tests run operators of their own.
    let tiny = format!("{}-tiny", ns.name);
    let values = format!(
        "watchNamespace: {ns}\nlogFormat: text\nhardwareClasses:\n  cpu-standard: null\n  gpu-small: null\n  {tiny}:\n    device: cpu\n    resources: {{ cpu: \"1\", memory: 1Gi }}\n    threads: 1\n    nodeSelector: {{ bitscale.dev/pool: cpu }}\n    costPerHour: 0.05\n    memoryBandwidth: 10GB/s\n",
        ns = ns.name
    );
    let values_path = std::env::temp_dir().join(format!("{}-values.yaml", ns.name));
    std::fs::write(&values_path, values)?;
    let release = ns.name.clone();
    let install = cluster
        .helm()
        .args([
            "install",
            &release,
            chart,
            "--namespace",
            &ns.name,
            "--wait",
            "--timeout",
            "2m",
            "-f",
        ])
        .arg(&values_path)
        .output()?;
    assert!(
        install.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&install.stderr)
    );

    // `--wait` returned: the operator pod is Ready, which the runner reports only once the
    // process's /healthz answers at the pod IP.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let operator_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=bitscale-operator"))
        .await?
        .items;
    let operator_pid = operator_pods
        .first()
        .and_then(engine_pid)
        .expect("a running operator");
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{operator_pid}/cmdline"))?).into_owned();
    assert!(
        cmdline.contains("bitscale-operator"),
        "pid {operator_pid} runs {cmdline}"
    );

    let isvcs: Api<InferenceService> = Api::namespaced(admin.clone(), &ns.name);
    isvcs
        .create(
            &PostParams::default(),
            &tiny_service("tiny", &ns.name, &tiny, &tiny_model()?, 1),
        )
        .await?;
    let result = await_condition(isvcs.clone(), "tiny", ready, TIMEOUT).await;
    let engine = pods
        .list(&ListParams::default().labels("bitscale.dev/inference-service=tiny"))
        .await?
        .items
        .into_iter()
        .find(pod_ready);
    let answer = match engine.as_ref().and_then(pod_ip) {
        Some(ip) => chat(&http(), ip, "tiny").await.map(|_| ()),
        None => Err(anyhow::anyhow!("no Ready engine pod")),
    };
    let operator_alive = bitscale_e2e::process_is_running(operator_pid);

    let uninstall = cluster
        .helm()
        .args(["uninstall", &release, "--namespace", &ns.name, "--wait"])
        .output()?;
    let operator_gone = eventually(
        "the operator process gone",
        std::time::Duration::from_secs(40),
        || async { Ok((!bitscale_e2e::process_is_running(operator_pid)).then_some(())) },
    )
    .await;
    ns.delete().await?;
    assert!(
        operator_alive,
        "the operator process stopped early (insufficient RBAC?)"
    );
    result?;
    answer?;
    assert!(
        uninstall.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    operator_gone
}

#[tokio::test]
async fn the_chart_scrapes_engines_with_a_pod_monitor_only_where_its_api_exists() -> anyhow::Result<()> {
    use bitscale_api::telemetry::{SERIES_INSTANCE, SERIES_NAMESPACE, SERIES_POD, SERIES_VARIANT};
    let cluster = bitscale_e2e::Cluster::shared().await?;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/bitscale");
    let render = |extra: &[&str]| -> anyhow::Result<String> {
        let out = cluster
            .helm()
            .args(["template", "x", chart])
            .args(extra)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let with = render(&["--api-versions", "monitoring.coreos.com/v1/PodMonitor"])?;
    assert!(with.contains("kind: PodMonitor"), "{with}");
    for label in [SERIES_NAMESPACE, SERIES_POD, SERIES_INSTANCE, SERIES_VARIANT] {
        assert!(
            with.contains(&format!("targetLabel: {label}")),
            "no {label} relabeling"
        );
    }
    let without = render(&[])?;
    assert!(
        !without.contains("kind: PodMonitor"),
        "a PodMonitor without the Prometheus Operator"
    );
    Ok(())
}
