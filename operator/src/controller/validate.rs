//! Validate: turn an InferenceService and the HardwareClasses into decision inputs, or a
//! permanent error naming what is wrong. Client-free.

use std::{collections::BTreeMap, time::Duration};

use bitscale_api::v1alpha1::{
    Device, HardwareClass, InferenceService, QuantLevel, ReplicasOwner, parse_rate,
};
use kube::Resource;

use crate::{
    build::{Owner, deployment_cpu_cores},
    decision::{Class, Inputs, priors::*},
    error::{Error, Result},
};

/// An InferenceService that passed validation, ready for the decision and the builders.
#[derive(Clone, Debug)]
pub struct Validated {
    /// Identity and owner reference.
    pub owner: Owner,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Inputs of the decision.
    pub inputs: Inputs,
    /// The candidate HardwareClasses by name.
    pub classes: BTreeMap<String, HardwareClass>,
    /// `spec.scaling.scaleDownDelay`.
    pub scale_down_delay: Duration,
}

/// Validates `isvc` against the existing HardwareClasses.
pub fn validate(isvc: &InferenceService, all_classes: &[HardwareClass]) -> Result<Validated> {
    let name = isvc
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let namespace = isvc
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let reference = isvc
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let spec = &isvc.spec;

    let by_name: BTreeMap<String, &HardwareClass> = all_classes
        .iter()
        .filter_map(|c| c.metadata.name.clone().map(|n| (n, c)))
        .collect();
    if by_name.is_empty() {
        return Err(Error::NoHardwareClass);
    }
    let wanted: Vec<String> = if spec.placement.hardware_classes.is_empty() {
        by_name.keys().cloned().collect()
    } else {
        spec.placement.hardware_classes.clone()
    };
    let missing: Vec<String> = wanted
        .iter()
        .filter(|n| !by_name.contains_key(*n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(Error::UnknownHardwareClass(missing));
    }
    let classes: BTreeMap<String, HardwareClass> =
        wanted.iter().map(|n| (n.clone(), by_name[n].clone())).collect();
    let decision_classes = classes
        .iter()
        .map(|(n, c)| class_inputs(n, c))
        .collect::<Result<Vec<_>>>()?;

    let (parameters, parameters_basis) = match spec.model.parameters.as_deref() {
        Some(text) => (
            parse_parameters(text).ok_or_else(|| {
                Error::InvalidSpec(format!("spec.model.parameters {text:?} is not a count"))
            })?,
            format!("{text} parameters from spec.model.parameters"),
        ),
        None => {
            let (count, word) = parameters_from_source(&spec.model.source)
                .ok_or_else(|| Error::ModelSizeUnknown(spec.model.source.clone()))?;
            (
                count,
                format!(
                    "{word} parameters read from the model name in spec.model.source \
                     (set spec.model.parameters to override)"
                ),
            )
        }
    };

    let q = &spec.quantization;
    let (levels, pinned) = match q.pinned {
        Some(level) => (vec![level], true),
        None if q.allowed.is_empty() => (QuantLevel::ALL.to_vec(), false),
        None => (q.allowed.clone(), false),
    };
    let duration = |field: &str, value: &Option<String>| -> Result<Option<Duration>> {
        value
            .as_deref()
            .map(|v| {
                parse_duration(v)
                    .ok_or_else(|| Error::InvalidSpec(format!("{field} {v:?} is not a duration")))
            })
            .transpose()
    };

    let scaling = &spec.scaling;
    let scale_down_delay = parse_duration(&scaling.scale_down_delay).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "spec.scaling.scaleDownDelay {:?} is not a duration",
            scaling.scale_down_delay
        ))
    })?;
    Ok(Validated {
        owner: Owner {
            name,
            namespace,
            reference,
        },
        generation: isvc.metadata.generation,
        inputs: Inputs {
            parameters,
            parameters_basis,
            context_length: spec.model.context_length,
            max_running: spec.engine.max_running.unwrap_or(DEFAULT_MAX_RUNNING),
            levels,
            pinned,
            max_quality_loss: q.max_quality_loss.unwrap_or(DEFAULT_MAX_QUALITY_LOSS),
            ttft_slo: duration("spec.slo.timeToFirstToken", &spec.slo.time_to_first_token)?,
            itl_slo: duration("spec.slo.interTokenLatency", &spec.slo.inter_token_latency)?,
            demand: spec.demand.as_ref().map(|d| d.tokens_per_second),
            prompt_tokens: spec
                .demand
                .as_ref()
                .and_then(|d| d.prompt_tokens)
                .unwrap_or(DEFAULT_PROMPT_TOKENS),
            completion_tokens: spec
                .demand
                .as_ref()
                .and_then(|d| d.completion_tokens)
                .unwrap_or(DEFAULT_COMPLETION_TOKENS),
            min_replicas: scaling.min_replicas,
            max_replicas: scaling.max_replicas,
            external_replicas: scaling.replicas,
            external: scaling.replicas_owner == ReplicasOwner::External,
            classes: decision_classes,
        },
        classes,
        scale_down_delay,
    })
}

fn class_inputs(name: &str, class: &HardwareClass) -> Result<Class> {
    let spec = &class.spec;
    let invalid = |reason: String| Error::InvalidHardwareClass {
        name: name.to_owned(),
        reason,
    };
    let memory_bytes = parse_quantity(&spec.resources.memory.0).ok_or_else(|| {
        invalid(format!(
            "resources.memory {:?} is not a quantity",
            spec.resources.memory.0
        ))
    })?;
    let accelerator_memory_bytes = match &spec.resources.accelerator {
        Some(acc) => Some(
            parse_quantity(&acc.memory.0).ok_or_else(|| {
                invalid(format!(
                    "resources.accelerator.memory {:?} is not a quantity",
                    acc.memory.0
                ))
            })? * f64::from(acc.count),
        ),
        None => None,
    };
    let bandwidth = parse_rate(&spec.memory_bandwidth)
        .ok_or_else(|| invalid(format!("memoryBandwidth {} is not a rate", spec.memory_bandwidth)))?;
    let threads = spec
        .threads
        .unwrap_or_else(|| deployment_cpu_cores(&spec.resources.cpu));
    let flops = match &spec.peak_flops {
        Some(v) => parse_rate(v).ok_or_else(|| invalid(format!("peakFlops {v} is not a rate")))?,
        None => match spec.device {
            Device::Cpu => f64::from(threads) * CPU_FLOPS_PER_THREAD,
            Device::Cuda => GPU_FLOPS * f64::from(spec.resources.accelerator.as_ref().map_or(1, |a| a.count)),
        },
    };
    if !spec.cost_per_hour.is_finite() || spec.cost_per_hour < 0.0 {
        return Err(invalid("costPerHour must be a non-negative number".to_owned()));
    }
    Ok(Class {
        name: name.to_owned(),
        device: spec.device,
        memory_bytes,
        accelerator_memory_bytes,
        bandwidth,
        flops,
        cost_per_hour: spec.cost_per_hour,
    })
}

/// Parses a Kubernetes quantity ("16Gi", "500M", "1.5G", "1024") into a number.
pub fn parse_quantity(value: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let value = value.trim();
    for (suffix, multiplier) in SUFFIXES.iter().chain([("P", 1e15), ("E", 1e18)].iter()) {
        if let Some(number) = value.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * multiplier);
        }
    }
    value.parse::<f64>().ok()
}

/// Parses a Go-style duration ("500ms", "1m30s", "1.5s").
pub fn parse_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    let mut total = 0.0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::*;

    #[test]
    fn durations_and_quantities_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_quantity("8Gi"), Some(8.0 * 1_073_741_824.0));
        assert_eq!(parse_quantity("500M"), Some(500e6));
        assert_eq!(parse_quantity("250m"), Some(0.25));
    }

    #[test]
    fn validates_into_decision_inputs() {
        let v = validate(&smol(), &[cpu_class(), gpu_class()]).expect("valid");
        assert_eq!(v.owner.name, "chat");
        assert_eq!(v.owner.reference.uid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(v.inputs.parameters, 135e6);
        assert_eq!(v.inputs.max_running, 4);
        assert_eq!(v.inputs.levels.len(), QuantLevel::ALL.len());
        assert_eq!(v.inputs.classes.len(), 2);
        let gpu = v
            .inputs
            .classes
            .iter()
            .find(|c| c.name == "gpu-small")
            .expect("gpu");
        assert_eq!(gpu.accelerator_memory_bytes, Some(24.0 * 1_073_741_824.0));
        assert_eq!(gpu.bandwidth, 300e9);
    }

    #[test]
    fn unknown_classes_and_missing_sizes_are_permanent_errors() {
        let mut isvc = smol();
        isvc.spec.placement.hardware_classes = vec!["cpu-standard".into(), "tpu-huge".into()];
        let err = validate(&isvc, &[cpu_class()]).expect_err("unknown class");
        assert!(matches!(&err, Error::UnknownHardwareClass(n) if n == &["tpu-huge".to_owned()]));
        assert!(err.is_permanent());
        assert_eq!(err.category(), "unknown_hardware_class");

        let mut isvc = smol();
        isvc.spec.model.parameters = None;
        isvc.spec.model.source = "pvc://models/model.gguf".into();
        let err = validate(&isvc, &[cpu_class()]).expect_err("no size anywhere");
        assert!(matches!(err, Error::ModelSizeUnknown(_)));
        assert!(err.is_permanent());
        assert!(err.to_string().contains("set spec.model.parameters"), "{err}");
        assert!(matches!(validate(&smol(), &[]), Err(Error::NoHardwareClass)));

        let mut isvc = smol();
        isvc.metadata.uid = None;
        assert!(matches!(
            validate(&isvc, &[cpu_class()]),
            Err(Error::MissingObjectKey("metadata.uid"))
        ));
    }

    #[test]
    fn without_parameters_the_size_comes_from_the_model_name() {
        let mut isvc = smol();
        isvc.spec.model.parameters = None;
        let v = validate(&isvc, &[cpu_class()]).expect("the name says 135M");
        assert_eq!(v.inputs.parameters, 135e6);
        assert!(
            v.inputs.parameters_basis.contains("model name")
                && v.inputs.parameters_basis.contains("spec.model.parameters"),
            "{}",
            v.inputs.parameters_basis
        );
    }

    #[test]
    fn placement_restricts_the_candidates() {
        let mut isvc = smol();
        isvc.spec.placement.hardware_classes = vec!["cpu-standard".into()];
        let v = validate(&isvc, &[cpu_class(), gpu_class()]).expect("valid");
        assert_eq!(v.classes.keys().collect::<Vec<_>>(), ["cpu-standard"]);
    }
}
