//! Plan: from validated inputs and what was measured, the decision to apply — the cheapest
//! feasible variant, kept from moving by the switch window, held where data is missing, and
//! scaled down only after `scaleDownDelay`. Pure: the caller passes the clock.

use std::time::Duration;

use bitscale_api::v1alpha1::{Decision, InferenceService, PendingSwitch};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    measure::Reading,
    scale_down::{self, ScaleDown},
    stability::{self, Choice, Policy},
    validate::Validated,
};
use crate::decision::{self, NoFeasibleVariant};

/// The decision to apply and what status records about how it was reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The decision.
    pub decision: Decision,
    /// True when even the chosen variant at maxReplicas cannot carry the demand.
    pub overloaded: bool,
    /// `status.scaleDownSince`.
    pub scale_down_since: Option<Time>,
    /// `status.pendingSwitch`.
    pub pending_switch: Option<PendingSwitch>,
    /// When time alone changes the plan (a held scale-down or switch expires).
    pub recheck: Option<Duration>,
    /// The replica count the operator would set for the decided variant: the decision's own,
    /// or, under `replicasOwner: External`, the one it recommends to the external autoscaler.
    pub recommended_replicas: i32,
}

/// Plans the decision for `isvc`.
///
/// # Errors
/// [`NoFeasibleVariant`] when nothing can serve the model.
pub fn plan(
    isvc: &InferenceService,
    valid: &Validated,
    reading: &Reading,
    now: &Time,
    policy: Policy,
) -> Result<Plan, NoFeasibleVariant> {
    let status = isvc.status.as_ref();
    let previous = status.and_then(|s| s.decision.as_ref());
    // When every variant is set aside, the cool-offs yield: something must serve.
    let best = decision::decide(&valid.inputs, &reading.measurements).or_else(|e| {
        if reading.measurements.unavailable.is_empty() {
            return Err(e);
        }
        let all = decision::Measurements {
            unavailable: Vec::new(),
            ..reading.measurements.clone()
        };
        decision::decide(&valid.inputs, &all)
    })?;
    let mut overloaded = best.overloaded;
    let mut decided = best.decision.clone();
    let mut pending_switch = None;
    let mut recheck = None;
    if let Some(previous) = previous.filter(|p| p.variant != best.decision.variant) {
        let kept = decision::decide_keeping(&valid.inputs, &reading.measurements, Some(&previous.variant))?;
        let feasible = kept.decision.variant == previous.variant && !kept.overloaded;
        if feasible && reading.hold {
            // Without fresh data, nothing moves.
            decided = kept.decision;
            overloaded = kept.overloaded;
        } else if feasible {
            let pending = status.and_then(|s| s.pending_switch.as_ref());
            match stability::choose(&kept.decision, &best.decision, pending, now, policy) {
                Choice::Move => {}
                Choice::Stay {
                    pending,
                    note,
                    recheck: again,
                } => {
                    decided = kept.decision;
                    decided.reason = format!("{}; {note}", decided.reason);
                    overloaded = kept.overloaded;
                    pending_switch = pending;
                    recheck = again;
                }
            }
        }
    }
    if reading.hold {
        hold_replicas(&mut decided, previous);
    }
    let (scale_down_since, held_until) = hold_scale_down(isvc, valid, &mut decided, now);
    let recommended_replicas = if valid.inputs.external {
        let own = decision::Inputs {
            external: false,
            ..valid.inputs.clone()
        };
        decision::decide_keeping(&own, &reading.measurements, Some(&decided.variant))
            .map_or(decided.replicas, |o| o.decision.replicas)
    } else {
        decided.replicas
    };
    Ok(Plan {
        recommended_replicas,
        decision: decided,
        overloaded,
        scale_down_since,
        pending_switch,
        recheck: [recheck, held_until].into_iter().flatten().min(),
    })
}

/// Missing data never scales down: the previous count of the same variant stays the floor.
fn hold_replicas(decided: &mut Decision, previous: Option<&Decision>) {
    let Some(previous) = previous.filter(|p| p.variant == decided.variant) else {
        return;
    };
    if decided.replicas < previous.replicas {
        let per_replica = previous.cost_per_hour / f64::from(previous.replicas.max(1));
        decided.reason = format!(
            "{}; measurements are missing, so the {} running replica(s) stay",
            decided.reason, previous.replicas
        );
        decided.replicas = previous.replicas;
        decided.cost_per_hour = per_replica * f64::from(previous.replicas);
    }
}

/// Applies `spec.scaling.scaleDownDelay` to `decided` (see `scale_down`): while it holds, the
/// decision keeps the replica count the operator last set for that variant (from
/// `status.decision`, so a hand edit of the Deployment is not mistaken for it), says so in its
/// reason, and costs what runs. Returns the `status.scaleDownSince` to record and when to look
/// again.
fn hold_scale_down(
    isvc: &InferenceService,
    valid: &Validated,
    decided: &mut Decision,
    now: &Time,
) -> (Option<Time>, Option<Duration>) {
    if valid.inputs.external {
        // An external autoscaler owns the count and has its own stabilization window.
        return (None, None);
    }
    let status = isvc.status.as_ref();
    let running = status
        .and_then(|s| s.decision.as_ref())
        .filter(|d| d.variant == decided.variant)
        .map(|d| d.replicas);
    let pending = status.and_then(|s| s.scale_down_since.as_ref());
    match scale_down::scale_down(decided.replicas, running, pending, valid.scale_down_delay, now) {
        ScaleDown::Apply => (None, None),
        ScaleDown::Hold {
            replicas,
            since,
            until,
        } => {
            let per_replica = decided.cost_per_hour / f64::from(decided.replicas.max(1));
            if decided.replicas > 0 {
                decided.cost_per_million_tokens *= f64::from(replicas) / f64::from(decided.replicas);
                decided.cost_per_hour = per_replica * f64::from(replicas);
            }
            decided.reason = format!(
                "{}; holding the {replicas} running replica(s) until {} (scaleDownDelay), then {}",
                decided.reason, until.0, decided.replicas
            );
            decided.replicas = replicas;
            let wait = until.0.duration_since(now.0);
            // One second past the deadline, so the next reconcile finds it expired.
            let wait = Duration::try_from(wait).unwrap_or_default() + Duration::from_secs(1);
            (Some(since), Some(wait))
        }
    }
}

#[cfg(test)]
mod tests {
    use bitscale_api::v1alpha1::InferenceServiceStatus;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::{
        build::fixtures::{cpu_class, gpu_class, smol},
        controller::{measure::MetricsState, validate::validate},
        decision::{MeasuredDemand, Measurements},
    };

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    fn reading(tokens_per_second: f64, hold: bool) -> Reading {
        Reading {
            measurements: Measurements {
                demand: Some(MeasuredDemand {
                    tokens_per_second,
                    prompt_tokens: None,
                    completion_tokens: None,
                    basis: "in a test".into(),
                }),
                ..Measurements::default()
            },
            observed: None,
            metrics: MetricsState {
                status: if hold { "False" } else { "True" },
                reason: "Test",
                message: String::new(),
            },
            hold,
        }
    }

    /// The object after a plan was recorded, as the next reconcile sees it.
    fn after(isvc: &InferenceService, plan: &Plan) -> InferenceService {
        let mut next = isvc.clone();
        next.status = Some(InferenceServiceStatus {
            decision: Some(plan.decision.clone()),
            scale_down_since: plan.scale_down_since.clone(),
            pending_switch: plan.pending_switch.clone(),
            ..Default::default()
        });
        next
    }

    fn service() -> (InferenceService, Validated) {
        let mut isvc = smol();
        isvc.spec.scaling.max_replicas = 8;
        isvc.spec.scaling.scale_down_delay = "1s".into();
        let valid = validate(&isvc, &[cpu_class()]).expect("valid");
        (isvc, valid)
    }

    #[test]
    fn missing_data_never_scales_down() {
        let (isvc, valid) = service();
        let busy = plan(&isvc, &valid, &reading(2_000.0, false), &at(0), Policy::default()).expect("plan");
        assert!(busy.decision.replicas > 1, "{}", busy.decision.reason);
        let isvc = after(&isvc, &busy);
        // The last measurement says idle, but it is stale: nothing goes, however long it lasts.
        for t in [10, 100, 1_000] {
            let held = plan(&isvc, &valid, &reading(0.0, true), &at(t), Policy::default()).expect("plan");
            assert_eq!(
                held.decision.replicas, busy.decision.replicas,
                "{}",
                held.decision.reason
            );
            assert!(held.decision.reason.contains("measurements are missing"));
        }
        // Fresh data that says idle scales down after the delay.
        let idle = plan(&isvc, &valid, &reading(0.0, false), &at(10), Policy::default()).expect("plan");
        let isvc = after(&isvc, &idle);
        let later = plan(&isvc, &valid, &reading(0.0, false), &at(12), Policy::default()).expect("plan");
        assert_eq!(later.decision.replicas, 1);
    }

    #[test]
    fn a_cheaper_variant_waits_out_the_switch_window() {
        let mut isvc = smol();
        isvc.spec.placement.hardware_classes = vec!["cpu-standard".into(), "gpu-small".into()];
        let valid = validate(&isvc, &[cpu_class(), gpu_class()]).expect("valid");
        let policy = Policy {
            threshold: 0.2,
            window: Duration::from_secs(60),
        };
        let first = plan(&isvc, &valid, &reading(1.0, false), &at(0), policy).expect("plan");
        assert_eq!(first.decision.variant.hardware_class, "cpu-standard");
        // Pretend the GPU served before (a demand only it could carry, say).
        let mut on_gpu = first.clone();
        on_gpu.decision.variant.hardware_class = "gpu-small".into();
        on_gpu.decision.cost_per_hour = 0.9;
        let isvc = after(&isvc, &on_gpu);
        let waiting = plan(&isvc, &valid, &reading(1.0, false), &at(100), policy).expect("plan");
        assert_eq!(
            waiting.decision.variant.hardware_class, "gpu-small",
            "{}",
            waiting.decision.reason
        );
        let pending = waiting.pending_switch.clone().expect("a pending switch");
        assert_eq!(pending.variant.hardware_class, "cpu-standard");
        assert!(
            waiting.decision.reason.contains("would save"),
            "{}",
            waiting.decision.reason
        );
        assert_eq!(waiting.recheck, Some(Duration::from_secs(61)));
        let isvc = after(&isvc, &waiting);
        let moved = plan(&isvc, &valid, &reading(1.0, false), &at(161), policy).expect("plan");
        assert_eq!(moved.decision.variant.hardware_class, "cpu-standard");
        assert_eq!(moved.pending_switch, None);
    }

    #[test]
    fn an_external_owner_gets_the_recommended_count_as_a_figure() {
        let (mut isvc, _) = service();
        isvc.spec.scaling.replicas_owner = bitscale_api::v1alpha1::ReplicasOwner::External;
        isvc.spec.scaling.replicas = Some(1);
        let valid = validate(&isvc, &[cpu_class()]).expect("valid");
        let p = plan(&isvc, &valid, &reading(2_000.0, false), &at(0), Policy::default()).expect("plan");
        assert_eq!(p.decision.replicas, 1, "the external count is applied");
        assert!(
            p.recommended_replicas > 1,
            "recommended {}",
            p.recommended_replicas
        );
    }
}
