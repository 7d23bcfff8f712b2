//! Measure: the latest Prometheus snapshot read for one InferenceService — the demand and
//! profiles the decision uses, `status.observed`, the `MetricsAvailable` condition, and whether
//! the decision must be held because data is missing. Pure.

use bitscale_api::v1alpha1::{InferenceServiceStatus, ObservedLoad, Profile, QuantLevel, Variant};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::settle;
use crate::{
    build::variant_label,
    decision::round,
    decision::{self, Inputs, MeasuredDemand, Measurements},
    observe::{Outcome, Snapshot, sample},
};

/// Fewest engine steps in a window for a variant's slowdown to count as measured.
pub const MIN_STEPS: f64 = 50.0;

/// How many earlier steps a profile weighs at most against a new window: old measurements fade,
/// so a change of the engine or of the node shows within a few windows.
pub const PROFILE_MEMORY_STEPS: i64 = 2_000;

/// `MetricsAvailable`'s status, reason and message.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsState {
    /// "True", "False" or "Unknown".
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: &'static str,
    /// One sentence.
    pub message: String,
}

/// What the snapshot says about one InferenceService.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// What enters the decision.
    pub measurements: Measurements,
    /// `status.observed` to record.
    pub observed: Option<ObservedLoad>,
    /// The `MetricsAvailable` condition.
    pub metrics: MetricsState,
    /// True when data that should exist is missing: the decision must not scale down or move.
    pub hold: bool,
}

/// Reads `snapshot` for the service with these inputs, its current status and the number of
/// its engine pods that are available.
pub fn read(
    snapshot: &Snapshot,
    namespace: &str,
    name: &str,
    inputs: &Inputs,
    status: Option<&InferenceServiceStatus>,
    available_pods: i32,
) -> Reading {
    let last = status.and_then(|s| s.observed.clone());
    let profiles = status.map(|s| s.profiles.clone()).unwrap_or_default();
    let held = |metrics: MetricsState, hold: bool| Reading {
        measurements: Measurements {
            demand: last.as_ref().map(|l| demand(l, inputs, held_basis(l))),
            profiles: profiles.clone(),
            ..Measurements::default()
        },
        observed: last.clone(),
        metrics,
        hold,
    };
    let state = |status, reason, message: String| MetricsState {
        status,
        reason,
        message,
    };
    match &snapshot.outcome {
        Outcome::NotConfigured => Reading {
            measurements: Measurements::default(),
            observed: None,
            metrics: state(
                "False",
                "NotConfigured",
                "no Prometheus is configured (--prometheus-url): decisions use spec.demand and priors".into(),
            ),
            hold: false,
        },
        Outcome::Pending => held(
            state(
                "Unknown",
                "Pending",
                "waiting for the first round of queries".into(),
            ),
            true,
        ),
        Outcome::Unavailable(reason) => held(
            state(
                "False",
                "PrometheusUnavailable",
                format!("{reason}; holding the last decision"),
            ),
            true,
        ),
        Outcome::Measured(_) => {
            let variants = snapshot
                .service(namespace, name)
                .filter(|v| v.iter().any(|(_, s)| s.pods > 0.0));
            match variants {
                Some(variants) => measured(snapshot, inputs, variants, (last.as_ref(), profiles)),
                None if available_pods > 0 => held(
                    state(
                        "False",
                        "NoSamples",
                        format!(
                            "{available_pods} engine pod(s) are available but Prometheus has no series of \
                             theirs; holding the last decision"
                        ),
                    ),
                    true,
                ),
                // Nothing runs, so nothing reports: the last measurement still stands.
                None => held(
                    state(
                        "True",
                        "NothingRunning",
                        "no engine pod runs; the last measurement stands".into(),
                    ),
                    false,
                ),
            }
        }
    }
}

/// The reading of a round that has samples of the service. What it measured replaces what status
/// records only where [`settle`] says it moved.
fn measured(
    snapshot: &Snapshot,
    inputs: &Inputs,
    variants: &sample::Variants,
    (last, recorded): (Option<&ObservedLoad>, Vec<Profile>),
) -> Reading {
    let load = settle::load(last, sample::service_load(variants, snapshot.time.clone()));
    let measured_demand = demand(
        &load,
        inputs,
        format!(
            "over {} pod(s) in the last {}s",
            load.pods, snapshot.window_seconds
        ),
    );
    let with_lengths = Measurements {
        demand: Some(measured_demand.clone()),
        ..Measurements::default()
    };
    let lengths = decision::measured_inputs(inputs, &with_lengths);
    let mut profiles = recorded.clone();
    for (label, sample) in variants {
        let Some(step) = sample
            .step(snapshot.window_seconds)
            .filter(|s| s.count >= MIN_STEPS)
        else {
            continue;
        };
        let Some((class, level)) = candidate(&lengths, label) else {
            continue;
        };
        let slowdown = decision::slowdown(&lengths, class, level, step.sequences, step.tokens, step.seconds);
        learn(
            &mut profiles,
            Variant {
                level,
                hardware_class: class.name.clone(),
            },
            slowdown,
            step.count.round() as i64,
            &snapshot.time,
            |s| decision::capacity(&lengths, class, level, s),
        );
    }
    Reading {
        measurements: Measurements {
            demand: Some(measured_demand),
            profiles: settle::profiles(&recorded, profiles),
            served_quality: served_quality(&lengths, variants),
            ..Measurements::default()
        },
        observed: Some(load.clone()),
        metrics: MetricsState {
            status: "True",
            reason: "Measured",
            message: format!("{} engine pod(s) reported in the last round", load.pods),
        },
        hold: false,
    }
}

/// The quality loss each served level's pods measured at start (the worst pod's).
fn served_quality(
    inputs: &Inputs,
    variants: &sample::Variants,
) -> std::collections::BTreeMap<QuantLevel, f64> {
    let mut levels = std::collections::BTreeMap::new();
    for (label, sample) in variants {
        if let (Some((_, level)), Some(loss)) = (candidate(inputs, label), sample.quality_loss) {
            let worst: &mut f64 = levels.entry(level).or_insert(loss);
            *worst = worst.max(loss);
        }
    }
    levels
}

/// The candidate whose variant label is `label`.
fn candidate<'a>(inputs: &'a Inputs, label: &str) -> Option<(&'a decision::Class, QuantLevel)> {
    inputs.classes.iter().find_map(|class| {
        QuantLevel::ALL.into_iter().find_map(|level| {
            let variant = Variant {
                level,
                hardware_class: class.name.clone(),
            };
            (variant_label(&variant) == label).then_some((class, level))
        })
    })
}

/// Folds a window's slowdown into the variant's profile, weighing at most
/// [`PROFILE_MEMORY_STEPS`] earlier steps against the new ones.
fn learn(
    profiles: &mut Vec<Profile>,
    variant: Variant,
    slowdown: f64,
    steps: i64,
    time: &Time,
    capacity: impl Fn(f64) -> f64,
) {
    if !slowdown.is_finite() || slowdown <= 0.0 || steps <= 0 {
        return;
    }
    let (previous, old_steps) = match profiles.iter().position(|p| p.variant == variant) {
        Some(i) => {
            let old = profiles.remove(i);
            (old.slowdown, old.samples)
        }
        None => (slowdown, 0),
    };
    let weight = old_steps.min(PROFILE_MEMORY_STEPS) as f64;
    let blended = (previous * weight + slowdown * steps as f64) / (weight + steps as f64);
    profiles.push(Profile {
        variant,
        slowdown: round(blended, 3),
        samples: old_steps.saturating_add(steps),
        measured_at: time.clone(),
        tokens_per_second: round(capacity(blended), 2),
    });
    profiles.sort_by(|a, b| a.variant.cmp(&b.variant));
}

/// The demand a load stands for: generated tokens, plus what refused requests would have asked.
fn demand(load: &ObservedLoad, inputs: &Inputs, basis: String) -> MeasuredDemand {
    let completion = load
        .mean_completion_tokens
        .unwrap_or(f64::from(inputs.completion_tokens));
    MeasuredDemand {
        tokens_per_second: load.generated_tokens_per_second + load.rejected_per_second * completion,
        prompt_tokens: load.mean_prompt_tokens,
        completion_tokens: load.mean_completion_tokens,
        basis,
    }
}

fn held_basis(load: &ObservedLoad) -> String {
    format!("at {} (held: no newer measurement)", load.time.0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::{
        decision::tests::{cpu, smol},
        observe::sample::VariantSample,
    };

    const WINDOW: f64 = 60.0;
    const LABEL: &str = "q8_0.cpu-standard";

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    fn inputs() -> Inputs {
        Inputs {
            classes: vec![cpu()],
            levels: vec![QuantLevel::Q8_0],
            prompt_tokens: 64,
            completion_tokens: 64,
            ..smol()
        }
    }

    fn snapshot(time: i64, outcome: Outcome) -> Snapshot {
        Snapshot {
            time: at(time),
            window_seconds: WINDOW,
            outcome,
        }
    }

    fn measured(time: i64, sample: VariantSample) -> Snapshot {
        let services = HashMap::from([(
            ("ns".to_owned(), "svc".to_owned()),
            vec![(LABEL.to_owned(), sample)],
        )]);
        snapshot(time, Outcome::Measured(services))
    }

    fn status_with(observed: ObservedLoad) -> InferenceServiceStatus {
        InferenceServiceStatus {
            observed: Some(observed),
            ..Default::default()
        }
    }

    fn load(tokens: f64) -> ObservedLoad {
        sample::service_load(
            &vec![(
                LABEL.to_owned(),
                VariantSample {
                    pods: 1.0,
                    generated_tokens: tokens,
                    requests: tokens / 64.0,
                    ..Default::default()
                },
            )],
            at(0),
        )
    }

    /// What `replicas` replicas of an engine whose steps take `slowdown` × the prior report
    /// under `demand` tok/s: each carries its share up to its real capacity; the rest is refused.
    fn engine(inputs: &Inputs, slowdown: f64, replicas: i32, demand: f64) -> VariantSample {
        let level = QuantLevel::Q8_0;
        let class = cpu();
        let real_capacity = decision::capacity(inputs, &class, level, slowdown);
        let served = demand.min(real_capacity * f64::from(replicas));
        let completion = f64::from(inputs.completion_tokens);
        // Steps of 4 sequences, each also carrying a 16-token prompt chunk.
        let (sequences, tokens) = (4.0, 20.0);
        let step_seconds =
            slowdown * decision::slowdown(inputs, &class, level, sequences, tokens, 1.0).recip();
        let steps = served / sequences;
        VariantSample {
            pods: f64::from(replicas),
            generated_tokens: served,
            prompt_tokens: served,
            requests: served / completion,
            rejected: (demand - served) / completion,
            steps,
            step_seconds: steps * step_seconds,
            step_tokens: steps * tokens,
            step_sequences: steps * sequences,
            ..Default::default()
        }
    }

    #[test]
    fn measured_demand_counts_refused_requests() {
        let inputs = inputs();
        let r = read(
            &measured(10, engine(&inputs, 1.0, 1, 1e6)),
            "ns",
            "svc",
            &inputs,
            None,
            1,
        );
        let demand = r.measurements.demand.expect("measured");
        assert!(
            (demand.tokens_per_second - 1e6).abs() < 1.0,
            "{}",
            demand.tokens_per_second
        );
        assert_eq!(r.metrics.reason, "Measured");
        assert!(!r.hold);
    }

    #[test]
    fn prometheus_down_holds_the_last_measurement() {
        let status = status_with(load(123.0));
        let r = read(
            &snapshot(10, Outcome::Unavailable("connection refused".into())),
            "ns",
            "svc",
            &inputs(),
            Some(&status),
            2,
        );
        assert!(r.hold);
        assert_eq!(
            (r.metrics.status, r.metrics.reason),
            ("False", "PrometheusUnavailable")
        );
        assert!(r.metrics.message.contains("connection refused"));
        assert_eq!(r.measurements.demand.expect("held").tokens_per_second, 123.0);
        assert_eq!(r.observed, status.observed);
    }

    #[test]
    fn pods_without_series_hold_but_no_pods_do_not() {
        let status = status_with(load(5.0));
        let empty = measured(10, VariantSample::default());
        let missing = read(&empty, "ns", "svc", &inputs(), Some(&status), 2);
        assert!(missing.hold);
        assert_eq!(missing.metrics.reason, "NoSamples");
        let idle = read(&empty, "ns", "svc", &inputs(), Some(&status), 0);
        assert!(!idle.hold);
        assert_eq!(idle.measurements.demand.expect("last").tokens_per_second, 5.0);
    }

    #[test]
    fn without_prometheus_the_decision_rests_on_priors() {
        let r = read(
            &snapshot(0, Outcome::NotConfigured),
            "ns",
            "svc",
            &inputs(),
            None,
            3,
        );
        assert_eq!(r.measurements, Measurements::default());
        assert_eq!(r.metrics.reason, "NotConfigured");
        assert!(!r.hold);
    }

    /// A HardwareClass whose bandwidth is 4× too optimistic: the prior's replica count is too
    /// low, the first measured window shows the slowdown, and the next decision carries the
    /// demand. The loop settles within three rounds (llm-d's queueing analyzer: 3–10).
    #[test]
    fn a_four_times_too_optimistic_class_is_corrected_within_three_rounds() {
        let inputs = inputs();
        let prior_capacity = decision::capacity(&inputs, &cpu(), QuantLevel::Q8_0, 1.0);
        let demand = prior_capacity * 0.7 * 1.3;
        let needed =
            (demand / (decision::capacity(&inputs, &cpu(), QuantLevel::Q8_0, 4.0) * 0.7)).ceil() as i32;
        let mut status: Option<InferenceServiceStatus> = None;
        let mut replicas = decision::decide(
            &Inputs {
                demand: Some(demand),
                ..inputs.clone()
            },
            &Measurements::default(),
        )
        .expect("feasible")
        .decision
        .replicas;
        assert!(
            replicas < needed,
            "the prior under-provisions: {replicas} < {needed}"
        );
        let mut history = vec![replicas];
        for round in 1..=3 {
            let sample = engine(&inputs, 4.0, replicas, demand);
            let reading = read(
                &measured(round * 30, sample),
                "ns",
                "svc",
                &inputs,
                status.as_ref(),
                replicas,
            );
            replicas = decision::decide(
                &Inputs {
                    max_replicas: 100,
                    ..inputs.clone()
                },
                &reading.measurements,
            )
            .expect("feasible")
            .decision
            .replicas;
            history.push(replicas);
            status = Some(InferenceServiceStatus {
                observed: reading.observed,
                profiles: reading.measurements.profiles,
                ..Default::default()
            });
        }
        assert_eq!(history.last(), Some(&needed), "replicas by round: {history:?}");
        assert_eq!(history[2], needed, "settled by the second round: {history:?}");
        let profile = &status.expect("status").profiles[0];
        assert!((profile.slowdown - 4.0).abs() < 0.01, "{profile:?}");
        assert!(profile.samples > 0);
    }

    #[test]
    fn profiles_blend_old_and_new_windows() {
        let mut profiles = Vec::new();
        let v = Variant {
            level: QuantLevel::Q8_0,
            hardware_class: "c".into(),
        };
        learn(&mut profiles, v.clone(), 2.0, 1_000, &at(1), |s| 100.0 / s);
        learn(&mut profiles, v.clone(), 4.0, 1_000, &at(2), |s| 100.0 / s);
        assert_eq!(profiles.len(), 1);
        assert_eq!(profiles[0].slowdown, 3.0);
        assert_eq!(profiles[0].samples, 2_000);
        assert_eq!(profiles[0].measured_at, at(2));
        // Nonsense (no steps, a zero step time) changes nothing.
        learn(&mut profiles, v, 0.0, 10, &at(3), |s| s);
        assert_eq!(profiles[0].measured_at, at(2));
    }
}
