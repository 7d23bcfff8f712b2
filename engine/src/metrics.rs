//! Prometheus metrics with vLLM's semantics and bucket boundaries, under the `bitscale_engine_`
//! prefix. Every name is documented in `engine/README.md`; the operator reads them.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

/// vLLM's `time_to_first_token_seconds` buckets.
pub const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `inter_token_latency_seconds` buckets.
pub const ITL_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// vLLM's request latency buckets (e2e and queue time).
pub const REQUEST_LATENCY_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
];
/// Tokens per step (vLLM's `iteration_tokens_total` uses powers of two).
pub const ITERATION_TOKEN_BUCKETS: [f64; 14] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];
/// Sequences per step.
pub const BATCH_SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// `finished_reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabel {
    pub finished_reason: String,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Labels of `bitscale_engine_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub model: String,
    pub quantization: String,
    pub device: String,
    /// The CPU kernel set (`avx512vnni`, `avx2`, `portable`, `candle`; `KernelSet::name`), or the
    /// device when it is not the CPU.
    pub kernels: String,
}

/// Labels of `bitscale_engine_quality_loss`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QualityLabels {
    /// The level the served one was compared with (the source file's own precision).
    pub reference: String,
    /// `ppl_increase` (relative), `kl` (mean, nats) or `top1_disagreement` (fraction).
    pub metric: String,
}

/// All engine metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    pub time_to_first_token_seconds: Histogram,
    pub inter_token_latency_seconds: Histogram,
    pub e2e_request_latency_seconds: Histogram,
    pub request_queue_time_seconds: Histogram,
    pub iteration_tokens: Histogram,
    pub iteration_duration_seconds: Histogram,
    pub step_token_budget: Gauge,
    pub iteration_batch_size: Histogram,
    pub num_requests_running: Gauge,
    pub num_requests_waiting: Gauge,
    pub num_requests_capacity: Gauge,
    pub kv_cache_usage_perc: Gauge<f64, AtomicU64>,
    pub weight_bytes: Gauge,
    pub kv_pool_bytes: Gauge,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub prefix_cache_queries: Counter,
    pub prefix_cache_hits: Counter,
    pub prefix_cache_bytes: Gauge,
    pub request_success: Family<FinishedLabel, Counter>,
    pub request_rejected: Family<ReasonLabel, Counter>,
    pub info: Family<InfoLabels, Gauge>,
    pub quality_loss: Family<QualityLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new(info: InfoLabels, weight_bytes: u64) -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("bitscale_engine"),
            time_to_first_token_seconds: Histogram::new(TTFT_BUCKETS),
            inter_token_latency_seconds: Histogram::new(ITL_BUCKETS),
            e2e_request_latency_seconds: Histogram::new(REQUEST_LATENCY_BUCKETS),
            request_queue_time_seconds: Histogram::new(REQUEST_LATENCY_BUCKETS),
            iteration_tokens: Histogram::new(ITERATION_TOKEN_BUCKETS),
            iteration_duration_seconds: Histogram::new(ITL_BUCKETS),
            step_token_budget: Gauge::default(),
            iteration_batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
            num_requests_running: Gauge::default(),
            num_requests_waiting: Gauge::default(),
            num_requests_capacity: Gauge::default(),
            kv_cache_usage_perc: Gauge::default(),
            weight_bytes: Gauge::default(),
            kv_pool_bytes: Gauge::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            prefix_cache_bytes: Gauge::default(),
            request_success: Family::default(),
            request_rejected: Family::default(),
            info: Family::default(),
            quality_loss: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "time_to_first_token_seconds",
            "Time from request arrival to its first generated token (queueing and prefill included)",
            m.time_to_first_token_seconds.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request",
            m.inter_token_latency_seconds.clone(),
        );
        r.register(
            "e2e_request_latency_seconds",
            "Time from request arrival to its end (finished or cancelled)",
            m.e2e_request_latency_seconds.clone(),
        );
        r.register(
            "request_queue_time_seconds",
            "Time a request waited before joining the running batch",
            m.request_queue_time_seconds.clone(),
        );
        r.register(
            "iteration_tokens",
            "Tokens processed per engine step",
            m.iteration_tokens.clone(),
        );
        // With iteration_tokens' sum, the measured cost of a token in a step: what a replica's
        // capacity is fitted from.
        r.register(
            "iteration_duration_seconds",
            "Wall time of an engine step (one forward pass of the batch)",
            m.iteration_duration_seconds.clone(),
        );
        r.register(
            "step_token_budget",
            "Tokens the next engine step may carry: --max-batch-tokens, or fewer to meet --itl-target",
            m.step_token_budget.clone(),
        );
        r.register(
            "iteration_batch_size",
            "Sequences processed per engine step",
            m.iteration_batch_size.clone(),
        );
        r.register(
            "num_requests_running",
            "Sequences in the running batch",
            m.num_requests_running.clone(),
        );
        r.register(
            "num_requests_waiting",
            "Requests waiting to join the batch",
            m.num_requests_waiting.clone(),
        );
        r.register(
            "num_requests_capacity",
            "Maximum sequences in the running batch (--max-running)",
            m.num_requests_capacity.clone(),
        );
        r.register(
            "kv_cache_usage_perc",
            "Fraction (0..1) of the KV pool reserved by running sequences",
            m.kv_cache_usage_perc.clone(),
        );
        r.register(
            "weight_bytes",
            "Bytes of the loaded model weights",
            m.weight_bytes.clone(),
        );
        r.register(
            "kv_pool_bytes",
            "Bytes of the KV cache pool",
            m.kv_pool_bytes.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens prefilled",
            m.prompt_tokens.clone(),
        );
        r.register(
            "generation_tokens",
            "Tokens generated",
            m.generation_tokens.clone(),
        );
        r.register(
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            m.prefix_cache_queries.clone(),
        );
        r.register(
            "prefix_cache_hits",
            "Prompt tokens found in the prefix cache (not prefilled again)",
            m.prefix_cache_hits.clone(),
        );
        r.register(
            "prefix_cache_bytes",
            "KV bytes held by the prefix cache (lent from the pool's free room)",
            m.prefix_cache_bytes.clone(),
        );
        r.register(
            "request_success",
            "Requests finished, by finish reason (stop, length, abort)",
            m.request_success.clone(),
        );
        r.register(
            "request_rejected",
            "Requests rejected before running, by reason",
            m.request_rejected.clone(),
        );
        r.register(
            "info",
            "The served model, its quantization level and device (always 1)",
            m.info.clone(),
        );
        r.register(
            "quality_loss",
            "Measured quality loss of the served level against a reference level (serve --measure-quality)",
            m.quality_loss.clone(),
        );
        m.info.get_or_create(&info).set(1);
        m.weight_bytes
            .set(i64::try_from(weight_bytes).unwrap_or(i64::MAX));
        m
    }

    /// Records one measured quality-loss figure.
    pub fn set_quality_loss(&self, reference: &str, metric: &str, value: f64) {
        self.quality_loss
            .get_or_create(&QualityLabels {
                reference: reference.to_string(),
                metric: metric.to_string(),
            })
            .set(value);
    }

    /// Counts one finished request.
    pub fn record_finished(&self, reason: &str) {
        self.request_success
            .get_or_create(&FinishedLabel {
                finished_reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one rejected request.
    pub fn record_rejection(&self, reason: &str) {
        self.request_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator reads these series by the names `bitscale_api::telemetry` gives them.
    #[test]
    fn every_series_the_operator_reads_is_exported() {
        let metrics = Metrics::new(
            InfoLabels {
                model: "m".into(),
                quantization: "q8_0".into(),
                device: "cpu".into(),
                kernels: "avx2".into(),
            },
            1,
        );
        // Labelled families appear once they have a sample.
        metrics.record_finished("stop");
        metrics.record_rejection("queue_full");
        metrics.set_quality_loss("q4_1", bitscale_api::telemetry::PPL_INCREASE, 0.01);
        let text = metrics.encode();
        // The operator selects the quality loss by this label and value.
        let selector = format!(
            "{}=\"{}\"",
            bitscale_api::telemetry::QUALITY_METRIC,
            bitscale_api::telemetry::PPL_INCREASE
        );
        assert!(text.contains(&selector), "{selector} missing:\n{text}");
        for series in bitscale_api::telemetry::engine_series::ALL {
            let family = series.strip_suffix("_total").unwrap_or(series);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the engine does not export {series}:\n{text}"
            );
        }
    }
}
