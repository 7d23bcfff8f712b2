//! `InferenceService`: one model served at the lowest cost that meets a latency SLO and a quality
//! budget.

use k8s_openapi::{
    api::core::v1::EnvVar,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    QuantLevel,
    schema::{DURATION_PATTERN, SOURCE_PATTERN},
};

/// An LLM served by Bitscale's engine. The operator picks the quantization level and the
/// HardwareClass (together: the variant) that meet the latency SLO and the quality budget at the
/// lowest cost, runs it as a Deployment behind a Service named after this object, and explains its
/// choice in `status.decision`. The operator never writes `spec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bitscale.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    shortname = "bis",
    shortname = "infsvc",
    category = "bitscale",
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    doc = "An LLM served at the lowest cost that meets a latency SLO and a quality budget.",
    scale(
        spec_replicas_path = ".spec.scaling.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Variant",
        type_ = "string",
        json_path = ".status.variant",
        description = "The serving quantization level and HardwareClass"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "$/1M tokens",
        type_ = "number",
        json_path = ".status.decision.costPerMillionTokens",
        description = "Estimated cost per million generated tokens"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// The model to serve.
    pub model: ModelSpec,

    /// Which quantization levels may be used and how much quality may be traded for cost.
    #[serde(default)]
    pub quantization: QuantizationSpec,

    /// Where the model may run.
    #[serde(default)]
    pub placement: PlacementSpec,

    /// The latency objective every replica must meet at the 95th percentile.
    #[serde(default)]
    pub slo: SloSpec,

    /// Replica bounds and who owns the replica count.
    #[serde(default)]
    pub scaling: ScalingSpec,

    /// Expected load, used for the first decision before anything has been measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<DemandSpec>,

    /// Overrides for the engine container.
    #[serde(default)]
    pub engine: EngineSpec,
}

/// Where the weights come from and what they are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Location of the weights. One of: `file:///path` (a path inside the engine image or an
    /// attached volume), `pvc://claim/path` (a file in a PersistentVolumeClaim of this
    /// namespace, mounted read-only), `https://host/path` or `hf://org/name[@revision]/file`
    /// (fetched by an init container into a cache volume).
    #[schemars(regex(pattern = SOURCE_PATTERN))]
    pub source: String,

    /// File format of the weights. Inferred from the file name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ModelFormat>,

    /// Expected SHA-256 of the downloaded file (lowercase hex); the download fails on mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,

    /// Number of parameters, such as "135M", "1.7B" or "8000000000". Sizes the weights for the
    /// first decision. When unset, the count is read from the model's name in `source` (such as
    /// "SmolLM2-135M-Instruct" or "llama-2-7b-chat.Q4_K_M.gguf"); if the name carries none, the
    /// operator reports ModelSizeUnknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?[KMBT]?$"))]
    pub parameters: Option<String>,

    /// Longest sequence (prompt plus completion) a request may use, in tokens.
    #[serde(default = "default_context_length")]
    #[schemars(range(min = 1, max = 1048576))]
    pub context_length: i32,
}

fn default_context_length() -> i32 {
    4096
}

/// A weights file format.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// A GGUF file, at any quantization level.
    Gguf,
    /// A safetensors file, quantized by the engine on load.
    Safetensors,
}

/// Allowed quantization levels and the quality budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.pinned) || !has(self.allowed) || size(self.allowed) == 0 || self.pinned in self.allowed").message("pinned must be one of allowed").field_path(".pinned"))]
pub struct QuantizationSpec {
    /// Levels the operator may choose from. Empty means all levels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 13), extend("x-kubernetes-list-type" = "set"))]
    pub allowed: Vec<QuantLevel>,

    /// Largest acceptable relative perplexity increase against the best allowed level, for
    /// example 0.05 for 5%. Defaults to 0.05. Ignored when `pinned` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub max_quality_loss: Option<f64>,

    /// Serve exactly this level; the operator then only chooses the hardware and replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<QuantLevel>,
}

/// Where the model may run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Names of the HardwareClasses to choose among. Empty means every HardwareClass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub hardware_classes: Vec<String>,
}

/// Latency objectives at the 95th percentile.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SloSpec {
    /// p95 time from request arrival to the first streamed token, as a duration ("500ms", "2s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("timeToFirstToken must be positive"))]
    pub time_to_first_token: Option<String>,

    /// p95 time between two streamed tokens of one response, as a duration ("50ms").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("interTokenLatency must be positive"))]
    pub inter_token_latency: Option<String>,
}

/// Replica bounds and ownership.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("self.replicasOwner == 'External' || !has(self.replicas)").message("replicas may only be set when replicasOwner is External").field_path(".replicas")
)]
pub struct ScalingSpec {
    /// Fewest replicas. 0 allows scaling to zero when demand is known to be zero.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,

    /// Most replicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// How long demand must stay low before replicas are removed, as a duration ("5m").
    #[serde(default = "default_scale_down_delay")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub scale_down_delay: String,

    /// Who sets the replica count: `Operator` (from demand and capacity) or `External` (an HPA
    /// or KEDA writes `replicas` through the scale subresource; the operator only picks the
    /// variant and keeps the count within [minReplicas, maxReplicas]).
    #[serde(default)]
    pub replicas_owner: ReplicasOwner,

    /// Replica count written by an external autoscaler through the scale subresource. Only
    /// allowed when `replicasOwner` is `External`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    4
}
fn default_scale_down_delay() -> String {
    "5m".to_owned()
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            scale_down_delay: default_scale_down_delay(),
            replicas_owner: ReplicasOwner::default(),
            replicas: None,
        }
    }
}

/// Who owns the replica count.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReplicasOwner {
    /// The operator sets replicas from demand and capacity.
    #[default]
    Operator,
    /// An external autoscaler sets replicas through the scale subresource.
    External,
}

/// Expected load.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DemandSpec {
    /// Generated tokens per second across all replicas.
    #[schemars(range(min = 0.0))]
    pub tokens_per_second: f64,

    /// Typical prompt length in tokens, used for the time-to-first-token and capacity estimates.
    /// Defaults to 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub prompt_tokens: Option<i32>,

    /// Typical number of tokens generated per request, used for the capacity estimate (every
    /// request also costs a prefill of its prompt). Defaults to 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub completion_tokens: Option<i32>,
}

/// Overrides for the engine container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    /// Engine image. Defaults to the operator's engine image for the HardwareClass's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Extra arguments appended to `bitscale-engine serve`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// Extra environment variables for the engine container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Most sequences one replica decodes at once (the engine's in-flight batch). Defaults to 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_running: Option<i32>,
}

/// What the operator observed and decided.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Progressing and Degraded, each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The serving variant as `level/hardwareClass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,

    /// Replicas of the serving variant.
    #[serde(default)]
    pub replicas: i32,

    /// Ready replicas of the serving variant.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Label selector of the serving pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// In-cluster URL of the OpenAI-compatible API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The latest decision and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,

    /// When the decision first called for fewer replicas than are running; they are removed
    /// once `spec.scaling.scaleDownDelay` has passed since. Absent when no scale-down waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_since: Option<Time>,

    /// The latest load and latencies Prometheus measured across the service's engine pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ObservedLoad>,

    /// What the variants that have served measurably do, one entry per variant; the decision
    /// uses them in place of the roofline prior, and corrects the prior of unmeasured variants
    /// on the same device by them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub profiles: Vec<Profile>,

    /// Variants whose pods could not be scheduled (no node with a free GPU, a pool that does
    /// not grow): none of them is chosen until `until`, then they are tried again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub unavailable: Vec<UnavailableVariant>,

    /// The measured quality loss of each allowed level of this model, from the profiling Job
    /// the operator runs once per model source; the decision uses it in place of the prior.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityMeasurement>,

    /// A variant cheaper than the serving one that has won every decision since `since`; the
    /// operator moves to it once it has won for the whole switch window, so a load hovering
    /// near a break-even point does not move the service back and forth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_switch: Option<PendingSwitch>,
}

/// Load and latencies over the service's engine pods in the latest measurement window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObservedLoad {
    /// When Prometheus was asked, in the last round that recorded these figures. A round
    /// replaces them only when one has moved past its tolerance (10 % for rates, lengths and
    /// latencies; any change of pods reporting; the first refusal) or when they are 5 minutes
    /// old, so steady traffic's jitter neither rewrites the status nor moves the decision.
    pub time: Time,
    /// Engine pods that reported.
    pub pods: i32,
    /// Generated tokens per second.
    pub generated_tokens_per_second: f64,
    /// Prompt tokens per second.
    pub prompt_tokens_per_second: f64,
    /// Requests finished per second.
    pub requests_per_second: f64,
    /// Requests refused per second (queue full, too long, …).
    pub rejected_per_second: f64,
    /// Mean prompt length of finished requests, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_prompt_tokens: Option<f64>,
    /// Mean completion length of finished requests, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_completion_tokens: Option<f64>,
    /// p95 time to first token, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_p95_ms: Option<f64>,
    /// p95 inter-token latency, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_token_latency_p95_ms: Option<f64>,
    /// Requests running, summed over pods.
    pub running_requests: f64,
    /// Requests waiting to run, summed over pods.
    pub waiting_requests: f64,
    /// Highest KV cache usage of a pod (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_usage: Option<f64>,
    /// Quality loss of the level served, as the engine pods measured it at start against the
    /// model source's own precision (relative perplexity increase, the highest of the pods;
    /// `bitscale_engine_quality_loss`). Present when the pods were asked to measure it, which
    /// the operator does once the model's quality has been profiled and the reference fits in
    /// a replica's memory beside the served weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_loss: Option<f64>,
}

/// What one variant measurably does per replica.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The variant.
    pub variant: Variant,
    /// How long its engine steps took against what the roofline prior predicts for the same
    /// steps (batch and tokens): 1 is as predicted, 4 is four times slower. Capacity and
    /// latencies are the prior's divided (or multiplied) by it.
    pub slowdown: f64,
    /// Engine steps the figure is from, all recorded measurements together.
    pub samples: i64,
    /// When it was last recorded: a new window replaces it when the slowdown moves by more
    /// than 5 % or the profile is 5 minutes old.
    pub measured_at: Time,
    /// Generated tokens per second one replica sustains within the SLO, with this correction.
    pub tokens_per_second: f64,
}

/// What the quality-profiling Job measured (`bitscale-engine eval` over the allowed levels).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QualityMeasurement {
    /// The `spec.model.source` measured; a different source is measured again.
    pub source: String,
    /// The Job that measured it.
    pub job: String,
    /// When the Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The level every other is compared with: the source file's own precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Tokens of text scored per level.
    #[serde(default)]
    pub tokens: i64,
    /// Loss per level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 13))]
    pub levels: Vec<LevelQuality>,
    /// Why the measurement failed, when it did; the priors are used instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The measured loss of one level against the reference.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LevelQuality {
    /// The level.
    pub level: QuantLevel,
    /// Relative perplexity increase against the reference (0.05 = 5 % worse).
    pub ppl_increase: f64,
    /// Mean KL divergence of the next-token distributions from the reference's, in nats.
    pub kl_mean: f64,
}

/// A variant set aside for a cool-off.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnavailableVariant {
    /// The variant.
    pub variant: Variant,
    /// Since when.
    pub since: Time,
    /// Until when; then it is tried again.
    pub until: Time,
    /// Why its rollout could not finish, with what the scheduler or the Deployment controller
    /// said.
    pub reason: String,
}

/// A variant waiting out the switch window before it replaces the serving one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingSwitch {
    /// The variant that keeps winning.
    pub variant: Variant,
    /// Since when it has won every decision.
    pub since: Time,
}

/// A quantization level on a HardwareClass.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// Quantization level.
    pub level: QuantLevel,
    /// HardwareClass name.
    pub hardware_class: String,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.level, self.hardware_class)
    }
}

/// The operator's choice and its explanation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The chosen variant.
    pub variant: Variant,
    /// Replicas the decision calls for.
    pub replicas: i32,
    /// Why this variant won, in words.
    pub reason: String,
    /// Whether the figures are estimates from priors or measurements.
    pub basis: String,
    /// Cost of all replicas per hour, in the HardwareClass's currency.
    pub cost_per_hour: f64,
    /// Cost per million generated tokens at the expected (or, without one, the planned) load.
    pub cost_per_million_tokens: f64,
    /// Estimated figures for one replica of the chosen variant.
    pub estimate: Estimate,
    /// The other candidates and why each lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Alternative>,
}

/// Figures for one replica of a variant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// Memory needed for weights, KV cache and overhead, in bytes.
    pub memory_bytes: i64,
    /// Relative perplexity increase against the best allowed level.
    pub quality_loss: f64,
    /// Generated tokens per second one replica sustains within the SLO.
    pub tokens_per_second: f64,
    /// Inter-token latency at that load, in milliseconds.
    pub inter_token_latency_ms: f64,
    /// Time to first token for a typical prompt, in milliseconds.
    pub time_to_first_token_ms: f64,
    /// Tokens one engine step may carry (the running streams' decode tokens plus prompt chunks)
    /// so that a step with a prompt chunk stays within the inter-token latency objective; the
    /// engine's `--max-batch-tokens`. Unset without an ITL objective (the engine's default, 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_tokens: Option<i32>,
}

/// A candidate that was not chosen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alternative {
    /// The candidate.
    pub variant: Variant,
    /// Why it lost.
    pub reason: String,
}
