//! Shared setup for the operator's cluster tests: CRDs, HardwareClasses, the operator running
//! in-process against one test namespace, and conditions to wait on.

#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod live;

use std::time::Duration;

use bitscale_api::v1alpha1::{HardwareClass, InferenceService};
use bitscale_e2e::{Cluster, TestNamespace};
use bitscale_operator::{Config, build::EngineImages, metrics::Metrics};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};

/// Generous: the local control plane shares two cores with compilers.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Installs (or updates) the CRDs from the operator's types and waits until they are established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in bitscale_operator::crd::all() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("bitscale-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = |c: Option<&CustomResourceDefinition>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        };
        bitscale_e2e::await_condition(api.clone(), &name, established, TIMEOUT).await?;
    }
    Ok(())
}

/// A HardwareClass named `name` with this spec.
pub fn hardware_class(name: String, spec: serde_json::Value) -> HardwareClass {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "HardwareClass",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("valid HardwareClass")
}

/// A CPU class named `<prefix>-cpu` on the `cpu` pool.
pub fn cpu_class(prefix: &str) -> HardwareClass {
    hardware_class(
        format!("{prefix}-cpu"),
        serde_json::json!({
            "resources": { "cpu": "2", "memory": "4Gi" },
            "nodeSelector": { "bitscale.dev/pool": "cpu" },
            "costPerHour": 0.12,
            "memoryBandwidth": "20GB/s"
        }),
    )
}

/// A GPU class named `<prefix>-gpu` on the tainted `gpu` pool.
pub fn gpu_class(prefix: &str) -> HardwareClass {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "HardwareClass",
        "metadata": { "name": format!("{prefix}-gpu") },
        "spec": {
            "device": "cuda",
            "resources": {
                "cpu": "2", "memory": "8Gi",
                "accelerator": { "resourceName": "nvidia.com/gpu", "count": 1, "memory": "24Gi" }
            },
            "nodeSelector": { "bitscale.dev/pool": "gpu" },
            "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
            "costPerHour": 0.9,
            "memoryBandwidth": "300GB/s"
        }
    }))
    .expect("valid HardwareClass")
}

/// Creates or updates HardwareClasses.
pub async fn apply_classes(client: &Client, classes: &[HardwareClass]) -> anyhow::Result<()> {
    let api: Api<HardwareClass> = Api::all(client.clone());
    for class in classes {
        api.patch(
            &class.name_any(),
            &PatchParams::apply("bitscale-e2e").force(),
            &Patch::Apply(class),
        )
        .await?;
    }
    Ok(())
}

/// Deletes HardwareClasses, ignoring ones already gone.
pub async fn delete_classes(client: &Client, classes: &[HardwareClass]) {
    let api: Api<HardwareClass> = Api::all(client.clone());
    for class in classes {
        let _ = api.delete(&class.name_any(), &Default::default()).await;
    }
}

/// An InferenceService `namespace/name` with this spec.
pub fn inference_service(name: &str, namespace: &str, spec: serde_json::Value) -> InferenceService {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    }))
    .expect("valid InferenceService")
}

/// An InferenceService for SmolLM2-135M restricted to `classes`.
pub fn smol(name: &str, namespace: &str, classes: &[&str]) -> InferenceService {
    inference_service(
        name,
        namespace,
        serde_json::json!({
            "model": {
                "source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@main/smollm2-135m-instruct-q8_0.gguf",
                "parameters": "135M",
                "contextLength": 2048
            },
            "quantization": { "maxQualityLoss": 0.05 },
            "placement": { "hardwareClasses": classes },
            // Generous, so these tests do not hinge on the calibration of the priors: the 2-CPU
            // class meets it at every level.
            "slo": { "timeToFirstToken": "5s", "interTokenLatency": "200ms" },
            "scaling": { "minReplicas": 1, "maxReplicas": 3 }
        }),
    )
}

/// One operator test's world: the shared cluster with the CRDs installed, a fresh namespace, the
/// HardwareClasses `classes` makes from its name, and the operator running in it.
///
/// `stop` tears it down; a test that fails before `stop` (an error or a failed assertion) still
/// deletes its classes and namespace when the scene drops, so a rerun on the same local cluster
/// does not find stale HardwareClasses.
pub struct Scene {
    pub cluster: Cluster,
    pub client: Client,
    pub ns: TestNamespace,
    classes: Vec<HardwareClass>,
    operator: tokio::task::JoinHandle<anyhow::Result<()>>,
    stopped: bool,
}

impl Scene {
    pub async fn start(prefix: &str, classes: impl Fn(&str) -> Vec<HardwareClass>) -> anyhow::Result<Self> {
        Self::start_with(prefix, classes, FAKE_ENGINE_IMAGES).await
    }

    /// A scene whose operator launches `images` (cpu, cuda).
    pub async fn start_with(
        prefix: &str,
        classes: impl Fn(&str) -> Vec<HardwareClass>,
        images: [&str; 2],
    ) -> anyhow::Result<Self> {
        Self::start_configured(prefix, classes, images, |_| {}).await
    }

    /// A scene whose operator launches `images` with its configuration changed by `configure`.
    pub async fn start_configured(
        prefix: &str,
        classes: impl Fn(&str) -> Vec<HardwareClass>,
        images: [&str; 2],
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        Self::start_on(Cluster::shared().await?, prefix, classes, images, configure).await
    }

    /// As [`Self::start_configured`], on `cluster`.
    pub async fn start_on(
        cluster: Cluster,
        prefix: &str,
        classes: impl Fn(&str) -> Vec<HardwareClass>,
        images: [&str; 2],
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let client = cluster.client().await?;
        install_crds(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let classes = classes(&ns.name);
        let mut config = operator_config(&ns.name, images);
        configure(&mut config);
        let operator = tokio::spawn(bitscale_operator::run(client.clone(), config, Metrics::default()));
        let scene = Self {
            cluster,
            client,
            ns,
            classes,
            operator,
            stopped: false,
        };
        apply_classes(&scene.client, &scene.classes).await?;
        Ok(scene)
    }

    /// The API of `K` objects in the scene's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Stops the operator and deletes the classes and the namespace.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        self.operator.abort();
        delete_classes(&self.client, &self.classes).await;
        self.ns.clone().delete().await?;
        Ok(())
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.operator.abort();
        let (cluster, classes, ns) = (self.cluster.clone(), self.classes.clone(), self.ns.name.clone());
        // Drop cannot await, and the test's runtime is the one unwinding (its client's connection
        // task cannot run): clean up on a thread with a runtime and a client of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = cluster.client().await?;
                delete_classes(&client, &classes).await;
                let namespaces: Api<Namespace> = Api::all(client);
                let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
                anyhow::Ok(())
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("cleaning up after a failed test: {e:#}");
        }
    }
}

/// Engine images KWOK fakes (the pod runner runs only images named `bitscale-engine`): the
/// tests that use them are about the API objects the operator writes, not about engines.
pub const FAKE_ENGINE_IMAGES: [&str; 2] = [
    "example.invalid/fake-engine:test",
    "example.invalid/fake-engine:test-cuda",
];

/// Runs the operator in-process, watching only `namespace`, until the handle is aborted. Its
/// engine pods are KWOK's fakes ([`FAKE_ENGINE_IMAGES`]).
pub fn start_operator(client: Client, namespace: &str) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    start_operator_with(client, namespace, FAKE_ENGINE_IMAGES)
}

/// Runs the operator in-process with these engine images (cpu, cuda).
pub fn start_operator_with(
    client: Client,
    namespace: &str,
    images: [&str; 2],
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(bitscale_operator::run(
        client,
        operator_config(namespace, images),
        Metrics::default(),
    ))
}

/// The in-process operator's configuration: these engine images (cpu, cuda), watching only
/// `namespace`.
pub fn operator_config(namespace: &str, images: [&str; 2]) -> Config {
    Config {
        images: EngineImages {
            cpu: images[0].into(),
            cuda: images[1].into(),
        },
        namespace: Some(namespace.to_owned()),
        instance: Some(format!("e2e-{namespace}")),
        ..Config::default()
    }
}

/// True once `Ready` is `True` for the object's current generation.
pub fn ready(object: Option<&InferenceService>) -> bool {
    condition_is(object, "Ready", "True")
}

/// True once condition `type_` has `status` for the object's current generation.
pub fn condition_is(object: Option<&InferenceService>, type_: &str, status: &str) -> bool {
    let Some(object) = object else { return false };
    let generation = object.metadata.generation;
    object.status.as_ref().is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == status && c.observed_generation == generation)
    })
}
