//! The API server itself refuses invalid InferenceServices and HardwareClasses, from the CRD's
//! schema and CEL rules, with a message that names the field.

mod operator_support;

use bitscale_e2e::{Cluster, TestNamespace};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use operator_support::*;
use serde_json::{Value, json};

fn valid_isvc() -> Value {
    json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": { "name": "bad" },
        "spec": {
            "model": { "source": "hf://org/model@main/model.gguf", "parameters": "135M" },
            "scaling": { "minReplicas": 1, "maxReplicas": 2 }
        }
    })
}

fn valid_class() -> Value {
    json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "HardwareClass",
        "metadata": { "name": "bad-class" },
        "spec": {
            "resources": { "cpu": "1", "memory": "1Gi" },
            "costPerHour": 0.1,
            "memoryBandwidth": "10GB/s"
        }
    })
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let mut target = &mut base;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        target = target
            .as_object_mut()
            .expect("object")
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    target
        .as_object_mut()
        .expect("object")
        .insert(key.to_owned(), value);
    base
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let client = cluster.client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-validation").await?;

    let isvc_kind = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "bitscale.dev",
        "v1alpha1",
        "InferenceService",
    ));
    let class_kind = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bitscale.dev", "v1alpha1", "HardwareClass"),
        "hardwareclasses",
    );
    let isvcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &isvc_kind);
    let classes: Api<DynamicObject> = Api::all_with(client.clone(), &class_kind);

    // (what, manifest, text the refusal must contain)
    let cases: Vec<(&str, bool, Value, &str)> = vec![
        (
            "min above max",
            true,
            with(valid_isvc(), "/spec/scaling/minReplicas", json!(3)),
            "spec.scaling.minReplicas",
        ),
        (
            "unknown level",
            true,
            with(
                valid_isvc(),
                "/spec/quantization/allowed",
                json!(["q4_k", "q9_z"]),
            ),
            "spec.quantization.allowed",
        ),
        (
            "pinned outside allowed",
            true,
            with(
                with(valid_isvc(), "/spec/quantization/allowed", json!(["q4_k"])),
                "/spec/quantization/pinned",
                json!("q8_0"),
            ),
            "spec.quantization.pinned",
        ),
        (
            "negative quality budget",
            true,
            with(valid_isvc(), "/spec/quantization/maxQualityLoss", json!(-0.1)),
            "spec.quantization.maxQualityLoss",
        ),
        (
            "unsupported source scheme",
            true,
            with(
                valid_isvc(),
                "/spec/model/source",
                json!("s3://bucket/model.gguf"),
            ),
            "spec.model.source",
        ),
        (
            "hf source without a file",
            true,
            with(valid_isvc(), "/spec/model/source", json!("hf://org/model")),
            "spec.model.source",
        ),
        (
            "malformed duration",
            true,
            with(valid_isvc(), "/spec/slo/interTokenLatency", json!("fast")),
            "spec.slo.interTokenLatency",
        ),
        (
            "zero duration",
            true,
            with(valid_isvc(), "/spec/slo/timeToFirstToken", json!("0s")),
            "spec.slo.timeToFirstToken",
        ),
        (
            "negative replicas",
            true,
            with(valid_isvc(), "/spec/scaling/minReplicas", json!(-1)),
            "spec.scaling.minReplicas",
        ),
        (
            "replicas without External owner",
            true,
            with(valid_isvc(), "/spec/scaling/replicas", json!(2)),
            "spec.scaling.replicas",
        ),
        (
            "unknown replicas owner",
            true,
            with(valid_isvc(), "/spec/scaling/replicasOwner", json!("Somebody")),
            "spec.scaling.replicasOwner",
        ),
        (
            "bad sha256",
            true,
            with(valid_isvc(), "/spec/model/sha256", json!("xyz")),
            "spec.model.sha256",
        ),
        (
            "unknown format",
            true,
            with(valid_isvc(), "/spec/model/format", json!("onnx")),
            "spec.model.format",
        ),
        (
            "missing source",
            true,
            with(valid_isvc(), "/spec/model", json!({ "parameters": "135M" })),
            "spec.model.source",
        ),
        (
            "negative cost",
            false,
            with(valid_class(), "/spec/costPerHour", json!(-1)),
            "spec.costPerHour",
        ),
        (
            "unknown device",
            false,
            with(valid_class(), "/spec/device", json!("tpu")),
            "spec.device",
        ),
        (
            "cuda without accelerator",
            false,
            with(valid_class(), "/spec/device", json!("cuda")),
            "spec.resources.accelerator",
        ),
        (
            "malformed memoryBandwidth",
            false,
            with(valid_class(), "/spec/memoryBandwidth", json!("fast")),
            "spec.memoryBandwidth",
        ),
        (
            "memoryBandwidth with an unknown unit",
            false,
            with(valid_class(), "/spec/memoryBandwidth", json!("15GB/h")),
            "spec.memoryBandwidth",
        ),
        (
            "zero memoryBandwidth",
            false,
            with(valid_class(), "/spec/memoryBandwidth", json!(0)),
            "spec.memoryBandwidth",
        ),
        (
            "memoryBandwidth neither number nor string",
            false,
            with(valid_class(), "/spec/memoryBandwidth", json!(true)),
            "spec.memoryBandwidth",
        ),
        (
            "malformed peakFlops",
            false,
            with(valid_class(), "/spec/peakFlops", json!("lots")),
            "spec.peakFlops",
        ),
        (
            "negative peakFlops",
            false,
            with(valid_class(), "/spec/peakFlops", json!(-5)),
            "spec.peakFlops",
        ),
    ];

    // A class left by an interrupted earlier run would make "already exists" the refusal.
    let _ = classes.delete("bad-class", &Default::default()).await;
    let mut failures = Vec::new();
    for (what, namespaced, manifest, field) in &cases {
        let object: DynamicObject = serde_json::from_value(manifest.clone())?;
        let api = if *namespaced { &isvcs } else { &classes };
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) if status.message.contains(field) => {}
            Err(kube::Error::Api(status)) => failures.push(format!(
                "{what}: refused without naming {field}: {}",
                status.message
            )),
            Err(other) => failures.push(format!("{what}: {other}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The valid base manifests are accepted, so the refusals above are about the one bad field;
    // so are the other spellings of a rate.
    isvcs
        .create(&PostParams::default(), &serde_json::from_value(valid_isvc())?)
        .await?;
    for (bandwidth, flops) in [
        (json!("10GB/s"), json!("200G")),
        (json!("900GiB/s"), json!("20TFLOP/s")),
        (json!(15_000_000_000u64), json!(200_000_000_000u64)),
    ] {
        let manifest = with(
            with(valid_class(), "/spec/memoryBandwidth", bandwidth.clone()),
            "/spec/peakFlops",
            flops.clone(),
        );
        let class = classes
            .create(&PostParams::default(), &serde_json::from_value(manifest)?)
            .await;
        let _ = classes.delete("bad-class", &Default::default()).await;
        if let Err(error) = class {
            anyhow::bail!("memoryBandwidth {bandwidth} with peakFlops {flops} refused: {error}");
        }
        // The next create must not see the deleted class still terminating.
        bitscale_e2e::await_deleted(classes.clone(), "bad-class", TIMEOUT).await?;
    }
    ns.delete().await?;
    Ok(())
}
