//! Prometheus metrics of the operator: reconciles, failures by error category, durations, and per
//! InferenceService what it decided (replicas, cost) and why it changed.

use std::{sync::Arc, time::Instant};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::controller::plan::Plan;

/// Labels of the per-InferenceService series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub inference_service: String,
}

/// Labels of the decision-change counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `Decided` (a new variant) or `Scaled` (a new replica count).
    pub reason: String,
}

/// Labels of the round counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `measured` or `unavailable`.
    pub outcome: String,
}

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's stable category.
    pub category: String,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Failed reconciles by error category.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Children written with server-side apply (those unchanged since the last apply are skipped).
    pub child_writes: Counter,
    /// InferenceService statuses written (a reconcile that changes nothing writes none).
    pub status_writes: Counter,
    /// Replicas the operator sets, or recommends to an external autoscaler.
    pub desired_replicas: Family<ServiceLabels, Gauge>,
    /// Ready replicas of the serving variant.
    pub ready_replicas: Family<ServiceLabels, Gauge>,
    /// Cost per hour of the decided replicas, in the HardwareClass's currency.
    pub cost_per_hour: Family<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Cost per million generated tokens at the observed (else expected) load.
    pub cost_per_million_tokens: Family<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Generated tokens per second measured across the service's pods.
    pub observed_tokens_per_second: Family<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Changes of variant or replicas, by reason.
    pub decision_changes: Family<ChangeLabels, Counter>,
    /// Rounds of Prometheus queries, by outcome.
    pub observe_rounds: Family<OutcomeLabels, Counter>,
    /// Wall time of a round of queries (all of them, concurrently), in seconds.
    pub observe_round_duration: Histogram,
    /// Queries sent to Prometheus.
    pub observe_queries: Counter,
    /// InferenceServices with series in the latest round.
    pub observed_services: Gauge,
    /// Reconciles the rounds asked for: only services whose measurements changed.
    pub observe_triggers: Counter,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let mut registry = Registry::with_prefix("bitscale_operator");
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        let child_writes = Counter::default();
        registry.register(
            "child_applies",
            "Children written with server-side apply; unchanged children are not re-applied",
            child_writes.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "InferenceService statuses written; a reconcile that changes nothing writes none",
            status_writes.clone(),
        );
        let desired_replicas = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "desired_replicas",
            "Replicas the operator sets for an InferenceService, or recommends under replicasOwner: External",
            desired_replicas.clone(),
        );
        let ready_replicas = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "ready_replicas",
            "Ready replicas of an InferenceService's serving variant",
            ready_replicas.clone(),
        );
        let cost_per_hour = Family::default();
        registry.register(
            "cost_per_hour",
            "Cost per hour of an InferenceService's decided replicas",
            cost_per_hour.clone(),
        );
        let cost_per_million_tokens = Family::default();
        registry.register(
            "cost_per_million_tokens",
            "Cost per million generated tokens at the observed, else expected, load",
            cost_per_million_tokens.clone(),
        );
        let observed_tokens_per_second = Family::default();
        registry.register(
            "observed_tokens_per_second",
            "Generated tokens per second measured across an InferenceService's pods",
            observed_tokens_per_second.clone(),
        );
        let decision_changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "decision_changes",
            "Changes of an InferenceService's variant (Decided) or replica count (Scaled)",
            decision_changes.clone(),
        );
        let observe = ObserveMetrics::register(&mut registry);
        Self {
            reconciles,
            failures,
            duration,
            child_writes,
            status_writes,
            desired_replicas,
            ready_replicas,
            cost_per_hour,
            cost_per_million_tokens,
            observed_tokens_per_second,
            decision_changes,
            observe_rounds: observe.rounds,
            observe_round_duration: observe.duration,
            observe_queries: observe.queries,
            observed_services: observe.services,
            observe_triggers: observe.triggers,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// Counts a failure.
    pub fn failure(&self, category: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                category: category.to_owned(),
            })
            .inc();
    }

    /// Counts children written by one reconcile.
    pub fn children_written(&self, count: usize) {
        self.child_writes.inc_by(count as u64);
    }

    /// Records one InferenceService's plan.
    pub fn record_decision(
        &self,
        namespace: &str,
        name: &str,
        plan: &Plan,
        ready: i32,
        observed: Option<&bitscale_api::v1alpha1::ObservedLoad>,
    ) {
        let labels = ServiceLabels {
            namespace: namespace.to_owned(),
            inference_service: name.to_owned(),
        };
        self.desired_replicas
            .get_or_create(&labels)
            .set(i64::from(plan.recommended_replicas));
        self.ready_replicas.get_or_create(&labels).set(i64::from(ready));
        self.cost_per_hour
            .get_or_create(&labels)
            .set(plan.decision.cost_per_hour);
        self.cost_per_million_tokens
            .get_or_create(&labels)
            .set(plan.decision.cost_per_million_tokens);
        if let Some(load) = observed {
            self.observed_tokens_per_second
                .get_or_create(&labels)
                .set(load.generated_tokens_per_second);
        }
    }

    /// Drops a deleted InferenceService's series, so its last figures do not linger.
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = ServiceLabels {
            namespace: namespace.to_owned(),
            inference_service: name.to_owned(),
        };
        self.desired_replicas.remove(&labels);
        self.ready_replicas.remove(&labels);
        self.cost_per_hour.remove(&labels);
        self.cost_per_million_tokens.remove(&labels);
        self.observed_tokens_per_second.remove(&labels);
    }

    /// Records one round of queries.
    pub fn observe_round(&self, outcome: &str, seconds: f64, queries: usize, services: Option<usize>) {
        self.observe_rounds
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.observe_round_duration.observe(seconds);
        self.observe_queries.inc_by(queries as u64);
        if let Some(services) = services {
            self.observed_services.set(services as i64);
        }
    }

    /// Counts a change of variant or replicas.
    pub fn decision_changed(&self, reason: &str) {
        self.decision_changes
            .get_or_create(&ChangeLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Renders the registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The observer's series, registered together.
struct ObserveMetrics {
    rounds: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    queries: Counter,
    services: Gauge,
    triggers: Counter,
}

impl ObserveMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            rounds: Family::default(),
            duration: Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            queries: Counter::default(),
            services: Gauge::default(),
            triggers: Counter::default(),
        };
        registry.register(
            "observe_rounds",
            "Rounds of Prometheus queries, by outcome",
            m.rounds.clone(),
        );
        registry.register(
            "observe_round_duration_seconds",
            "Wall time of one round of Prometheus queries (sent concurrently)",
            m.duration.clone(),
        );
        registry.register("observe_queries", "Queries sent to Prometheus", m.queries.clone());
        registry.register(
            "observed_inference_services",
            "InferenceServices with engine series in the latest round",
            m.services.clone(),
        );
        registry.register(
            "observe_triggered_reconciles",
            "Reconciles asked for by rounds: services whose measurements changed",
            m.triggers.clone(),
        );
        m
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_service_leaves_no_series_behind() {
        let metrics = Metrics::default();
        let labels = |name: &str| ServiceLabels {
            namespace: "ns".into(),
            inference_service: name.into(),
        };
        for name in ["kept", "deleted"] {
            metrics.desired_replicas.get_or_create(&labels(name)).set(2);
            metrics.cost_per_hour.get_or_create(&labels(name)).set(0.24);
        }
        metrics.forget("ns", "deleted");
        let text = metrics.render();
        assert!(!text.contains("inference_service=\"deleted\""), "{text}");
        assert!(text.contains("inference_service=\"kept\""), "{text}");
    }
}
