//! Test fixtures: objects parsed from inline YAML, with names that catch swapped label values.

use bitscale_api::v1alpha1::{Decision, Estimate, HardwareClass, InferenceService, QuantLevel, Variant};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{BuildInput, Desired, EngineImages, Owner, desired};

pub(crate) fn isvc(yaml: &str) -> InferenceService {
    serde_yaml::from_str(yaml).expect("valid InferenceService fixture")
}

pub(crate) fn smol() -> InferenceService {
    isvc(
        "
apiVersion: bitscale.dev/v1alpha1
kind: InferenceService
metadata: { name: chat, namespace: team-a, uid: 11111111-2222-3333-4444-555555555555, generation: 3 }
spec:
  model: { source: 'hf://HuggingFaceTB/SmolLM2-135M-Instruct@main/smol.gguf', parameters: 135M, contextLength: 2048 }
  engine: { maxRunning: 4, args: [--log-format, json] }
",
    )
}

pub(crate) fn class(yaml: &str) -> HardwareClass {
    serde_yaml::from_str(yaml).expect("valid HardwareClass fixture")
}

pub(crate) fn cpu_class() -> HardwareClass {
    class(
        "
apiVersion: bitscale.dev/v1alpha1
kind: HardwareClass
metadata: { name: cpu-standard }
spec:
  resources: { cpu: '4', memory: 8Gi }
  nodeSelector: { bitscale.dev/pool: cpu }
  costPerHour: 0.1
  memoryBandwidth: 20GB/s
",
    )
}

pub(crate) fn gpu_class() -> HardwareClass {
    class(
        "
apiVersion: bitscale.dev/v1alpha1
kind: HardwareClass
metadata: { name: gpu-small }
spec:
  resources:
    cpu: '2'
    memory: 16Gi
    accelerator: { resourceName: nvidia.com/gpu, count: 1, memory: 24Gi }
  nodeSelector: { bitscale.dev/pool: gpu }
  tolerations: [{ key: nvidia.com/gpu, operator: Exists, effect: NoSchedule }]
  device: cuda
  costPerHour: 0.9
  memoryBandwidth: 300GB/s
  threads: 2
",
    )
}

pub(crate) fn owner() -> Owner {
    Owner {
        name: "chat".into(),
        namespace: "team-a".into(),
        reference: OwnerReference {
            api_version: "bitscale.dev/v1alpha1".into(),
            kind: "InferenceService".into(),
            name: "chat".into(),
            uid: "11111111-2222-3333-4444-555555555555".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    }
}

pub(crate) fn decision(level: QuantLevel, class: &str, replicas: i32) -> Decision {
    Decision {
        variant: Variant {
            level,
            hardware_class: class.into(),
        },
        replicas,
        reason: "test".into(),
        basis: "test".into(),
        cost_per_hour: 0.1,
        cost_per_million_tokens: 1.0,
        estimate: Estimate {
            memory_bytes: 1,
            quality_loss: 0.0,
            tokens_per_second: 1.0,
            inter_token_latency_ms: 1.0,
            time_to_first_token_ms: 1.0,
            step_tokens: None,
        },
        alternatives: vec![],
    }
}

pub(crate) fn images() -> EngineImages {
    EngineImages {
        cpu: "engine:cpu".into(),
        cuda: "engine:cuda".into(),
    }
}

/// The children of `smol()` at one q8_0 replica on `cpu_class()`, serving that variant.
pub(crate) fn desired_q8_0() -> Desired {
    let (isvc, owner, class, images) = (smol(), owner(), cpu_class(), images());
    let decision = decision(QuantLevel::Q8_0, "cpu-standard", 1);
    let input = BuildInput {
        owner: &owner,
        model: &isvc.spec.model,
        engine: &isvc.spec.engine,
        class: &class,
        decision: &decision,
        images: &images,
        itl_target: None,
        measure_quality: false,
    };
    desired(&input, "q8_0.cpu-standard")
}
