//! The labels engine pods carry and the series labels Prometheus gives their metrics: one
//! definition, read by the operator's children, its queries, the Helm chart's `PodMonitor` and
//! scrape config (generated from here by `crdgen`, drift-tested) and the local cluster's
//! Prometheus.

/// Pod label naming the InferenceService an engine pod serves.
pub const LABEL_INSTANCE: &str = "bitscale.dev/inference-service";
/// Pod label naming the variant (`<level>.<hardwareClass>`) an engine pod runs.
pub const LABEL_VARIANT: &str = "bitscale.dev/variant";
/// Pod label every engine pod carries, with the value [`ENGINE_APP`].
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// The value of [`LABEL_APP_NAME`] on engine pods.
pub const ENGINE_APP: &str = "bitscale-engine";
/// Name of the engine container's HTTP port (the API and `/metrics`).
pub const ENGINE_PORT_NAME: &str = "http";

/// Series label: the pod's namespace.
pub const SERIES_NAMESPACE: &str = "namespace";
/// Series label: the pod's name.
pub const SERIES_POD: &str = "pod";
/// Series label: the InferenceService, from [`LABEL_INSTANCE`].
pub const SERIES_INSTANCE: &str = "inference_service";
/// Series label: the variant, from [`LABEL_VARIANT`].
pub const SERIES_VARIANT: &str = "variant";

/// Label of `bitscale_engine_quality_loss` naming how the loss is measured.
pub const QUALITY_METRIC: &str = "metric";
/// The [`QUALITY_METRIC`] the operator reads: relative perplexity increase against the source's
/// own precision, the figure `maxQualityLoss` bounds.
pub const PPL_INCREASE: &str = "ppl_increase";

/// The scrape job's name, in the chart's scrape config and the local cluster's Prometheus.
pub const SCRAPE_JOB: &str = "bitscale-engines";

/// The engine's series the operator reads, as Prometheus names them (counters end in `_total`;
/// histograms add `_bucket`, `_sum` and `_count`). The engine's metrics test checks that it
/// exports every one of them.
pub mod engine_series {
    /// Counter: tokens generated.
    pub const GENERATION_TOKENS: &str = "bitscale_engine_generation_tokens_total";
    /// Counter: prompt tokens of finished prefills.
    pub const PROMPT_TOKENS: &str = "bitscale_engine_prompt_tokens_total";
    /// Counter: requests ended, by `finished_reason`.
    pub const REQUEST_SUCCESS: &str = "bitscale_engine_request_success_total";
    /// Counter: requests refused before running, by `reason`.
    pub const REQUEST_REJECTED: &str = "bitscale_engine_request_rejected_total";
    /// Histogram: arrival to first token, in seconds.
    pub const TIME_TO_FIRST_TOKEN: &str = "bitscale_engine_time_to_first_token_seconds";
    /// Histogram: time between two tokens of a request, in seconds.
    pub const INTER_TOKEN_LATENCY: &str = "bitscale_engine_inter_token_latency_seconds";
    /// Histogram: wall time of an engine step, in seconds.
    pub const ITERATION_DURATION: &str = "bitscale_engine_iteration_duration_seconds";
    /// Histogram: tokens per engine step.
    pub const ITERATION_TOKENS: &str = "bitscale_engine_iteration_tokens";
    /// Histogram: sequences per engine step.
    pub const ITERATION_BATCH_SIZE: &str = "bitscale_engine_iteration_batch_size";
    /// Gauge: sequences in the running batch.
    pub const REQUESTS_RUNNING: &str = "bitscale_engine_num_requests_running";
    /// Gauge: requests waiting to join the batch.
    pub const REQUESTS_WAITING: &str = "bitscale_engine_num_requests_waiting";
    /// Gauge: fraction of the KV pool in use.
    pub const KV_CACHE_USAGE: &str = "bitscale_engine_kv_cache_usage_perc";
    /// Gauge, always 1: what a replica serves (`model`, `quantization`, `device`).
    pub const INFO: &str = "bitscale_engine_info";
    /// Gauge: the served level's measured loss (`reference`, `metric`).
    pub const QUALITY_LOSS: &str = "bitscale_engine_quality_loss";

    /// Every series above.
    pub const ALL: [&str; 14] = [
        GENERATION_TOKENS,
        PROMPT_TOKENS,
        REQUEST_SUCCESS,
        REQUEST_REJECTED,
        TIME_TO_FIRST_TOKEN,
        INTER_TOKEN_LATENCY,
        ITERATION_DURATION,
        ITERATION_TOKENS,
        ITERATION_BATCH_SIZE,
        REQUESTS_RUNNING,
        REQUESTS_WAITING,
        KV_CACHE_USAGE,
        INFO,
        QUALITY_LOSS,
    ];
}

/// What one relabeling step does with its source label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep only targets whose source label matches this (anchored) regex.
    Keep(&'static str),
    /// Copy the source label into this series label.
    Copy(&'static str),
}

/// One relabeling step of the engine scrape: a Prometheus source label and what to do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relabel {
    /// The Prometheus source label (`__meta_kubernetes_…`).
    pub source: String,
    /// Keep on it, or copy it.
    pub action: Action,
}

/// Prometheus's name for the pod label `label` in Kubernetes pod discovery.
pub fn pod_label_meta(label: &str) -> String {
    let sanitized: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__meta_kubernetes_pod_label_{sanitized}")
}

/// The relabeling of pod-discovered targets: keep the engine containers' HTTP ports of running
/// pods, and name the series by namespace, pod, InferenceService and variant.
pub fn engine_relabelings() -> Vec<Relabel> {
    let rule = |source: &str, action| Relabel {
        source: source.to_owned(),
        action,
    };
    vec![
        rule(&pod_label_meta(LABEL_APP_NAME), Action::Keep(ENGINE_APP)),
        rule(
            "__meta_kubernetes_pod_container_port_name",
            Action::Keep(ENGINE_PORT_NAME),
        ),
        rule("__meta_kubernetes_pod_phase", Action::Keep("Running")),
        rule("__meta_kubernetes_namespace", Action::Copy(SERIES_NAMESPACE)),
        rule("__meta_kubernetes_pod_name", Action::Copy(SERIES_POD)),
        rule(&pod_label_meta(LABEL_INSTANCE), Action::Copy(SERIES_INSTANCE)),
        rule(&pod_label_meta(LABEL_VARIANT), Action::Copy(SERIES_VARIANT)),
    ]
}

/// The relabelings as Prometheus `relabel_configs` YAML (list items at column 0).
pub fn relabel_configs_yaml() -> String {
    render("source_labels", "target_label")
}

/// The relabelings as a Prometheus Operator `PodMonitor`'s `relabelings` YAML (list items at
/// column 0).
pub fn pod_monitor_relabelings_yaml() -> String {
    render("sourceLabels", "targetLabel")
}

/// A complete Prometheus scrape job for engine pods, discovered through the API server.
/// `kubernetes_sd` holds the discovery block's fields beside `role: pod` (API server, TLS), one
/// per line at column 0; `interval` is a Prometheus duration.
pub fn scrape_job_yaml(interval: &str, kubernetes_sd: &str) -> String {
    let mut out = format!(
        "- job_name: {SCRAPE_JOB}\n  scrape_interval: {interval}\n  kubernetes_sd_configs:\n    - role: pod\n"
    );
    for line in kubernetes_sd.lines() {
        out.push_str(&format!("      {line}\n"));
    }
    out.push_str("  relabel_configs:\n");
    for line in relabel_configs_yaml().lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out
}

fn render(source_key: &str, target_key: &str) -> String {
    engine_relabelings()
        .iter()
        .map(|Relabel { source, action }| match action {
            Action::Keep(regex) => {
                format!("- {source_key}: [{source}]\n  regex: {regex}\n  action: keep\n")
            }
            Action::Copy(target) => format!("- {source_key}: [{source}]\n  {target_key}: {target}\n"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_labels_become_prometheus_meta_labels() {
        assert_eq!(
            pod_label_meta(LABEL_INSTANCE),
            "__meta_kubernetes_pod_label_bitscale_dev_inference_service"
        );
        assert_eq!(
            pod_label_meta(LABEL_APP_NAME),
            "__meta_kubernetes_pod_label_app_kubernetes_io_name"
        );
    }

    #[test]
    fn the_scrape_job_keeps_engine_ports_and_names_series_by_service_and_variant() {
        let job = scrape_job_yaml("5s", "api_server: https://127.0.0.1:6443\n");
        assert!(job.starts_with("- job_name: bitscale-engines\n  scrape_interval: 5s\n"));
        assert!(job.contains("    - role: pod\n      api_server: https://127.0.0.1:6443\n"));
        assert!(job.contains(
            "    - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]\n      regex: bitscale-engine\n      action: keep\n"
        ));
        assert!(job.contains(
            "    - source_labels: [__meta_kubernetes_pod_label_bitscale_dev_variant]\n      target_label: variant\n"
        ));
        let monitor = pod_monitor_relabelings_yaml();
        assert!(monitor.contains("targetLabel: inference_service"));
        assert_eq!(monitor.matches("- sourceLabels").count(), 7);
    }
}
