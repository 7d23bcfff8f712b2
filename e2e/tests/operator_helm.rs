//! `helm install` of the chart, then the operator, running in-process as the chart's
//! ServiceAccount (a token from the TokenRequest API), makes an example InferenceService Ready.
//! This proves the chart's RBAC is enough for everything the operator does.

mod operator_support;

use bitscale_api::v1alpha1::InferenceService;
use bitscale_e2e::{Cluster, TestNamespace, await_condition};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{
    Api, Client,
    api::PostParams,
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};
use operator_support::*;

async fn client_as(cluster: &Cluster, namespace: &str, service_account: &str) -> anyhow::Result<Client> {
    let admin = cluster.client().await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin, namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await?;
    let token = token
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow::anyhow!("no token issued"))?;
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info = AuthInfo {
        token: Some(token.into()),
        ..AuthInfo::default()
    };
    Ok(Client::try_from(config)?)
}

#[tokio::test]
async fn helm_install_then_an_example_becomes_ready_as_the_chart_service_account() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let admin = cluster.client().await?;
    let ns = TestNamespace::create(&admin, "op-helm").await?;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/bitscale");

    // Classes named after the namespace, so parallel runs do not collide; null drops the defaults.
    let cpu = format!("{}-cpu", ns.name);
    let values = format!(
        "hardwareClasses:\n  cpu-standard: null\n  gpu-small: null\n  {cpu}:\n    device: cpu\n    resources: {{ cpu: \"2\", memory: 4Gi }}\n    nodeSelector: {{ bitscale.dev/pool: cpu }}\n    costPerHour: 0.12\n    memoryBandwidth: 20GB/s\n"
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

    // The chart names its objects `<release>-bitscale-operator` unless the release name says bitscale.
    let service_account = format!("{release}-bitscale-operator");
    let client = client_as(&cluster, &ns.name, &service_account).await?;
    let operator = start_operator(client, &ns.name);

    let isvcs: Api<InferenceService> = Api::namespaced(admin.clone(), &ns.name);
    isvcs
        .create(&PostParams::default(), &smol("smollm2", &ns.name, &[&cpu]))
        .await?;
    let result = await_condition(isvcs.clone(), "smollm2", ready, TIMEOUT).await;
    let finished = operator.is_finished();
    operator.abort();

    let uninstall = cluster
        .helm()
        .args(["uninstall", &release, "--namespace", &ns.name])
        .output()?;
    ns.delete().await?;
    assert!(!finished, "the operator stopped early (insufficient RBAC?)");
    result?;
    assert!(
        uninstall.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    Ok(())
}
