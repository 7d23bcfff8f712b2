//! `HardwareClass`: a pool of nodes the operator may place engine replicas on, with its price.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Toleration, apimachinery::pkg::api::resource::Quantity};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A kind of node an InferenceService replica may run on, like a StorageClass for compute: what
/// one replica gets, where it lands, what it costs and how fast its memory is.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bitscale.dev",
    version = "v1alpha1",
    kind = "HardwareClass",
    shortname = "hwc",
    category = "bitscale",
    derive = "PartialEq",
    doc = "A kind of node an InferenceService replica may run on, with its price per hour.",
    printcolumn(name = "Device", type_ = "string", json_path = ".spec.device"),
    printcolumn(name = "CPU", type_ = "string", json_path = ".spec.resources.cpu"),
    printcolumn(name = "Memory", type_ = "string", json_path = ".spec.resources.memory"),
    printcolumn(name = "$/h", type_ = "number", json_path = ".spec.costPerHour"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.device != 'cuda' || has(self.resources.accelerator)").message("a cuda HardwareClass needs resources.accelerator").field_path(".resources.accelerator"))]
pub struct HardwareClassSpec {
    /// What one engine replica requests (and is limited to).
    pub resources: HardwareResources,

    /// Node labels a replica's node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints a replica tolerates, such as a GPU pool's taint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Price of one replica per hour, as a non-negative number (any currency, used consistently).
    #[schemars(range(min = 0.0))]
    pub cost_per_hour: f64,

    /// Engine device: `cpu` or `cuda`.
    #[serde(default)]
    pub device: Device,

    /// Memory bandwidth one replica can use, in bytes per second: a number or a string with a
    /// unit such as "15GB/s" or "900GiB/s". A prior for the roofline estimate (decode speed ≈
    /// bandwidth / weight bytes) until the variant has been measured.
    #[schemars(schema_with = "bandwidth_schema")]
    pub memory_bandwidth: serde_json::Value,

    /// Peak compute one replica can use, in FLOP/s ("200G", "20T" or a number). A prior for the
    /// prefill (time to first token) estimate. Defaults to 50 GFLOP/s per thread on cpu and
    /// 20 TFLOP/s on cuda.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "flops_schema")]
    pub peak_flops: Option<serde_json::Value>,

    /// Engine worker threads. Defaults to the CPU request rounded down (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<i32>,
}

/// Per-replica resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HardwareResources {
    /// CPU cores, as a Kubernetes quantity ("4", "3500m").
    pub cpu: Quantity,
    /// Memory, as a Kubernetes quantity ("16Gi"). Weights, KV cache and overhead must fit on cpu.
    pub memory: Quantity,
    /// An accelerator, for cuda classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accelerator>,
}

/// An extended resource such as a GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Accelerator {
    /// Extended resource name, such as `nvidia.com/gpu`.
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
    ))]
    pub resource_name: String,
    /// How many per replica.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub count: i32,
    /// Memory of one accelerator ("24Gi"); weights and KV cache must fit in count × memory.
    pub memory: Quantity,
}

fn one() -> i32 {
    1
}

/// The engine's compute device.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CPU kernels.
    #[default]
    Cpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
}

impl Device {
    /// The engine's `--device` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

// A positive integer, or a string with an optional SI/IEC prefix and unit. `x-kubernetes-int-or-string`
// is the only structural way to accept both (fractional numbers must then be written as strings).
// The check is a CEL rule rather than `anyOf` branches: a structural schema may not name a type
// inside `anyOf`, and without one a string vacuously passes `minimum` and a number `pattern`, so
// the API server accepted anything. `maxLength` bounds the rule's estimated cost.
fn rate_schema(pattern: &str, field: &str, example: &str, description: &str) -> schemars::Schema {
    let rule = format!(
        "type(self) == int ? int(self) >= 1 : (type(self) == string && string(self).matches('{}'))",
        pattern.replace('\\', "\\\\")
    );
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "maxLength": 32,
        "x-kubernetes-validations": [{
            "rule": rule,
            "message": format!("{field} must be a positive integer or a string such as {example:?}"),
        }],
        "description": description
    })
}

fn bandwidth_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    rate_schema(
        BANDWIDTH_PATTERN,
        "memoryBandwidth",
        "15GB/s",
        "Memory bandwidth one replica can use, in bytes per second: an integer or a string such as \"15GB/s\" or \"900GiB/s\".",
    )
}

fn flops_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    rate_schema(
        FLOPS_PATTERN,
        "peakFlops",
        "200G",
        "Peak compute one replica can use, in FLOP/s: an integer or a string such as \"200G\" or \"20T\".",
    )
}

/// Accepted `memoryBandwidth` strings.
pub const BANDWIDTH_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?)?(B/s)?$";
/// Accepted `peakFlops` strings.
pub const FLOPS_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?\s*[KMGTP]?(FLOP/s)?$";

/// Parses a rate such as `15GB/s`, `900GiB/s`, `20T` or a plain number into units per second.
pub fn parse_rate(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64().filter(|v| *v > 0.0),
        serde_json::Value::String(s) => {
            let s = s
                .trim()
                .trim_end_matches("/s")
                .trim_end_matches("FLOP")
                .trim_end_matches('B');
            let s = s.trim();
            let (number, multiplier) = if let Some(n) = s.strip_suffix("i") {
                let (n, p) = n.split_at(n.len().checked_sub(1)?);
                (n, 1024f64.powi(prefix_power(p)?))
            } else if let Some(last) = s.chars().last().filter(char::is_ascii_alphabetic) {
                (&s[..s.len() - 1], 1000f64.powi(prefix_power(&last.to_string())?))
            } else {
                (s, 1.0)
            };
            number
                .trim()
                .parse::<f64>()
                .ok()
                .map(|n| n * multiplier)
                .filter(|v| *v > 0.0)
        }
        _ => None,
    }
}

fn prefix_power(prefix: &str) -> Option<i32> {
    Some(match prefix {
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rates_parse_with_si_and_iec_prefixes() {
        assert_eq!(parse_rate(&json!("15GB/s")), Some(15e9));
        assert_eq!(parse_rate(&json!("1GiB/s")), Some(1024f64.powi(3)));
        assert_eq!(parse_rate(&json!("20T")), Some(20e12));
        assert_eq!(parse_rate(&json!("200 GFLOP/s")), Some(200e9));
        assert_eq!(parse_rate(&json!(1000)), Some(1000.0));
        assert_eq!(parse_rate(&json!("0")), None);
        assert_eq!(parse_rate(&json!("fast")), None);
    }
}
