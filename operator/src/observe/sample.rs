//! What one round of queries says about each variant of each InferenceService, and the
//! service-wide load it adds up to.

use bitscale_api::v1alpha1::ObservedLoad;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::queries::Field;
use crate::decision::round;

/// Names an InferenceService: namespace and name.
pub type ServiceKey = (String, String);

/// The samples of one InferenceService's variants, by variant label, sorted by it. A service
/// has one variant, two while it switches: a list is a fraction of a map's size.
pub type Variants = Vec<(String, VariantSample)>;

/// The measurements of one variant's pods (sums over pods unless said otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VariantSample {
    /// Engine pods reporting.
    pub pods: f64,
    /// Generated tokens per second.
    pub generated_tokens: f64,
    /// Prompt tokens per second.
    pub prompt_tokens: f64,
    /// Requests finished per second.
    pub requests: f64,
    /// Requests refused per second.
    pub rejected: f64,
    /// p95 time to first token, seconds.
    pub ttft_p95: Option<f64>,
    /// p95 inter-token latency, seconds.
    pub itl_p95: Option<f64>,
    /// Requests running.
    pub running: f64,
    /// Requests waiting.
    pub waiting: f64,
    /// Highest KV usage of a pod.
    pub kv_cache_usage: Option<f64>,
    /// Engine steps per second.
    pub steps: f64,
    /// Seconds of engine steps per second.
    pub step_seconds: f64,
    /// Tokens in engine steps per second.
    pub step_tokens: f64,
    /// Sequences in engine steps per second.
    pub step_sequences: f64,
    /// Highest quality loss a pod measured at start, if any did.
    pub quality_loss: Option<f64>,
}

/// The mean engine step of a variant over the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSample {
    /// Mean wall time of a step, seconds.
    pub seconds: f64,
    /// Mean sequences in a step.
    pub sequences: f64,
    /// Mean tokens in a step (decodes and prompt chunks).
    pub tokens: f64,
    /// Steps in the window.
    pub count: f64,
}

impl VariantSample {
    /// Records one query's value.
    pub fn set(&mut self, field: Field, value: Option<f64>) {
        let v = value.unwrap_or(0.0);
        match field {
            Field::Pods => self.pods = v,
            Field::GeneratedTokens => self.generated_tokens = v,
            Field::PromptTokens => self.prompt_tokens = v,
            Field::Requests => self.requests = v,
            Field::Rejected => self.rejected = v,
            Field::TimeToFirstTokenP95 => self.ttft_p95 = value,
            Field::InterTokenLatencyP95 => self.itl_p95 = value,
            Field::Running => self.running = v,
            Field::Waiting => self.waiting = v,
            Field::KvCacheUsage => self.kv_cache_usage = value,
            Field::Steps => self.steps = v,
            Field::StepSeconds => self.step_seconds = v,
            Field::StepTokens => self.step_tokens = v,
            Field::StepSequences => self.step_sequences = v,
            Field::QualityLoss => self.quality_loss = value,
        }
    }

    /// The mean step over `window_seconds`, if any step ran.
    pub fn step(&self, window_seconds: f64) -> Option<StepSample> {
        (self.steps > 0.0 && self.step_seconds > 0.0).then(|| StepSample {
            seconds: self.step_seconds / self.steps,
            sequences: self.step_sequences / self.steps,
            tokens: self.step_tokens / self.steps,
            count: self.steps * window_seconds,
        })
    }
}

/// The load of a service: its variants' samples added up. Latency quantiles are the worst
/// variant's (a quantile of a mix is not a sum).
pub fn service_load(variants: &Variants, time: Time) -> ObservedLoad {
    let sum = |f: fn(&VariantSample) -> f64| variants.iter().map(|(_, v)| f(v)).sum::<f64>();
    let max = |f: fn(&VariantSample) -> Option<f64>| {
        variants
            .iter()
            .filter_map(|(_, v)| f(v))
            .fold(None, |acc: Option<f64>, v| Some(acc.map_or(v, |a| a.max(v))))
    };
    let requests = sum(|v| v.requests);
    let per_request = |total: f64| (requests > 0.0).then(|| round(total / requests, 1));
    ObservedLoad {
        time,
        pods: sum(|v| v.pods).round() as i32,
        generated_tokens_per_second: round(sum(|v| v.generated_tokens), 2),
        prompt_tokens_per_second: round(sum(|v| v.prompt_tokens), 2),
        requests_per_second: round(requests, 3),
        rejected_per_second: round(sum(|v| v.rejected), 3),
        mean_prompt_tokens: per_request(sum(|v| v.prompt_tokens)),
        mean_completion_tokens: per_request(sum(|v| v.generated_tokens)),
        time_to_first_token_p95_ms: max(|v| v.ttft_p95).map(|s| round(s * 1e3, 1)),
        inter_token_latency_p95_ms: max(|v| v.itl_p95).map(|s| round(s * 1e3, 1)),
        running_requests: sum(|v| v.running),
        waiting_requests: sum(|v| v.waiting),
        kv_cache_usage: max(|v| v.kv_cache_usage).map(|u| round(u, 3)),
        quality_loss: max(|v| v.quality_loss).map(|q| round(q, 4)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn a_service_adds_up_its_variants_and_keeps_the_worst_latency() {
        let a = VariantSample {
            pods: 2.0,
            generated_tokens: 300.0,
            prompt_tokens: 600.0,
            requests: 3.0,
            itl_p95: Some(0.040),
            ..Default::default()
        };
        let b = VariantSample {
            pods: 1.0,
            generated_tokens: 100.0,
            prompt_tokens: 200.0,
            requests: 1.0,
            itl_p95: Some(0.080),
            ..Default::default()
        };
        let variants = vec![("a".to_owned(), a), ("b".to_owned(), b)];
        let load = service_load(&variants, Time(Timestamp::UNIX_EPOCH));
        assert_eq!(load.pods, 3);
        assert_eq!(load.generated_tokens_per_second, 400.0);
        assert_eq!(load.mean_prompt_tokens, Some(200.0));
        assert_eq!(load.mean_completion_tokens, Some(100.0));
        assert_eq!(load.inter_token_latency_p95_ms, Some(80.0));
        assert_eq!(load.time_to_first_token_p95_ms, None);
    }

    #[test]
    fn the_mean_step_comes_from_the_step_counters() {
        let v = VariantSample {
            steps: 50.0,
            step_seconds: 0.5,
            step_tokens: 400.0,
            step_sequences: 200.0,
            ..Default::default()
        };
        let step = v.step(10.0).expect("steps ran");
        assert_eq!(
            (step.seconds, step.sequences, step.tokens, step.count),
            (0.01, 4.0, 8.0, 500.0)
        );
        assert_eq!(VariantSample::default().step(10.0), None);
    }
}
