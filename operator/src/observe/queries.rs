//! The PromQL the operator asks Prometheus, built from the series and label names in
//! [`bitscale_api::telemetry`]. Every query groups by namespace, InferenceService and variant, so
//! one round of these serves every InferenceService at once.

use std::time::Duration;

use bitscale_api::telemetry::{
    PPL_INCREASE, QUALITY_METRIC, SERIES_INSTANCE, SERIES_NAMESPACE, SERIES_VARIANT, engine_series as s,
};

/// What a query measures, per variant of an InferenceService.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// Engine pods reporting.
    Pods,
    /// Generated tokens per second.
    GeneratedTokens,
    /// Prompt tokens per second.
    PromptTokens,
    /// Requests finished per second.
    Requests,
    /// Requests refused per second.
    Rejected,
    /// p95 time to first token, seconds.
    TimeToFirstTokenP95,
    /// p95 inter-token latency, seconds.
    InterTokenLatencyP95,
    /// Requests running.
    Running,
    /// Requests waiting.
    Waiting,
    /// Highest KV cache usage of a pod.
    KvCacheUsage,
    /// Engine steps per second.
    Steps,
    /// Seconds of engine steps per second (summed over pods: the busy pods).
    StepSeconds,
    /// Tokens carried by engine steps per second.
    StepTokens,
    /// Sequences carried by engine steps per second.
    StepSequences,
    /// Highest quality loss (relative perplexity increase) a pod measured at start.
    QualityLoss,
}

impl Field {
    /// Every field, one query each.
    pub const ALL: [Field; 15] = [
        Self::Pods,
        Self::GeneratedTokens,
        Self::PromptTokens,
        Self::Requests,
        Self::Rejected,
        Self::TimeToFirstTokenP95,
        Self::InterTokenLatencyP95,
        Self::Running,
        Self::Waiting,
        Self::KvCacheUsage,
        Self::Steps,
        Self::StepSeconds,
        Self::StepTokens,
        Self::StepSequences,
        Self::QualityLoss,
    ];
}

/// The label list every query groups by.
pub fn grouping() -> String {
    format!("{SERIES_NAMESPACE}, {SERIES_INSTANCE}, {SERIES_VARIANT}")
}

/// A Prometheus range-vector duration: whole seconds, at least one.
pub fn range(window: Duration) -> String {
    format!("{}s", window.as_secs().max(1))
}

/// The query for `field` over `window`.
pub fn promql(field: Field, window: Duration) -> String {
    let by = grouping();
    let w = range(window);
    let rate = |series: &str| format!("sum by ({by}) (rate({series}[{w}]))");
    let gauge = |aggregation: &str, series: &str| format!("{aggregation} by ({by}) ({series})");
    let p95 = |histogram: &str| {
        format!("histogram_quantile(0.95, sum by ({by}, le) (rate({histogram}_bucket[{w}])))")
    };
    match field {
        Field::Pods => gauge("count", s::INFO),
        Field::GeneratedTokens => rate(s::GENERATION_TOKENS),
        Field::PromptTokens => rate(s::PROMPT_TOKENS),
        Field::Requests => rate(s::REQUEST_SUCCESS),
        Field::Rejected => rate(s::REQUEST_REJECTED),
        Field::TimeToFirstTokenP95 => p95(s::TIME_TO_FIRST_TOKEN),
        Field::InterTokenLatencyP95 => p95(s::INTER_TOKEN_LATENCY),
        Field::Running => gauge("sum", s::REQUESTS_RUNNING),
        Field::Waiting => gauge("sum", s::REQUESTS_WAITING),
        Field::KvCacheUsage => gauge("max", s::KV_CACHE_USAGE),
        Field::Steps => rate(&format!("{}_count", s::ITERATION_DURATION)),
        Field::StepSeconds => rate(&format!("{}_sum", s::ITERATION_DURATION)),
        Field::StepTokens => rate(&format!("{}_sum", s::ITERATION_TOKENS)),
        Field::StepSequences => rate(&format!("{}_sum", s::ITERATION_BATCH_SIZE)),
        Field::QualityLoss => gauge(
            "max",
            &format!("{}{{{QUALITY_METRIC}=\"{PPL_INCREASE}\"}}", s::QUALITY_LOSS),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_rates_grouped_by_service_and_variant() {
        assert_eq!(
            promql(Field::GeneratedTokens, Duration::from_secs(60)),
            "sum by (namespace, inference_service, variant) \
             (rate(bitscale_engine_generation_tokens_total[60s]))"
        );
        assert_eq!(
            promql(Field::StepSeconds, Duration::from_secs(30)),
            "sum by (namespace, inference_service, variant) \
             (rate(bitscale_engine_iteration_duration_seconds_sum[30s]))"
        );
    }

    #[test]
    fn latencies_are_p95_of_the_summed_buckets() {
        assert_eq!(
            promql(Field::TimeToFirstTokenP95, Duration::from_secs(60)),
            "histogram_quantile(0.95, sum by (namespace, inference_service, variant, le) \
             (rate(bitscale_engine_time_to_first_token_seconds_bucket[60s])))"
        );
    }

    #[test]
    fn gauges_aggregate_without_rate() {
        assert_eq!(
            promql(Field::Pods, Duration::from_secs(60)),
            "count by (namespace, inference_service, variant) (bitscale_engine_info)"
        );
        assert_eq!(
            promql(Field::KvCacheUsage, Duration::from_secs(60)),
            "max by (namespace, inference_service, variant) (bitscale_engine_kv_cache_usage_perc)"
        );
    }

    #[test]
    fn the_quality_loss_is_the_worst_pods_perplexity_increase() {
        assert_eq!(
            promql(Field::QualityLoss, Duration::from_secs(60)),
            "max by (namespace, inference_service, variant) \
             (bitscale_engine_quality_loss{metric=\"ppl_increase\"})"
        );
    }

    #[test]
    fn every_query_groups_by_the_three_labels_and_windows_are_whole_seconds() {
        for field in Field::ALL {
            let q = promql(field, Duration::from_millis(500));
            assert!(q.contains("by (namespace, inference_service, variant"), "{q}");
            assert!(!q.contains("[0s]"), "{q}");
        }
        assert_eq!(range(Duration::from_millis(90_500)), "90s");
    }
}
