//! Status: what the InferenceService reports, computed purely from the decision and what the
//! API server says about the children. Written only when it changed; a condition's
//! `lastTransitionTime` moves only when its status flips.

use bitscale_api::v1alpha1::{Decision, InferenceServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::controller::children::{Child, Rollout};

/// Condition types.
pub mod conditions {
    /// The serving variant has all its replicas available.
    pub const READY: &str = "Ready";
    /// A new variant or spec is rolling out.
    pub const PROGRESSING: &str = "Progressing";
    /// Something keeps the service from meeting its objectives.
    pub const DEGRADED: &str = "Degraded";
    /// The decision rests on fresh measurements from Prometheus.
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
}

/// Condition reasons set by the operator.
pub mod reasons {
    /// Every desired replica is available.
    pub const AVAILABLE: &str = "Available";
    /// The decision calls for zero replicas.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// Replicas are starting or a new variant is rolling out.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Nothing is changing.
    pub const STABLE: &str = "Stable";
    /// All is well.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Demand exceeds what maxReplicas of the best variant can carry.
    pub const DEMAND_EXCEEDS_CAPACITY: &str = "DemandExceedsCapacity";
}

/// What the API server reports about the children, reduced to what status needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Variant label the Service selects.
    pub serving_variant: String,
    /// Whether the Service already selects the decided variant.
    pub switched: bool,
    /// Replicas the decided variant's Deployment should have.
    pub desired_replicas: i32,
    /// Its available replicas, counted only when the Deployment controller has seen its latest
    /// spec.
    pub available_replicas: i32,
    /// Whether the Deployment controller has observed the latest spec and finished the rollout.
    pub rolled_out: bool,
}

impl Observed {
    /// Reads the decided variant's Deployment as returned by the API server.
    pub fn from_deployment(deployment: &Child, serving_variant: String, switched: bool) -> Self {
        let Rollout {
            desired,
            current,
            updated,
            available,
            total,
        } = deployment.rollout.unwrap_or_default();
        Self {
            serving_variant,
            switched,
            desired_replicas: desired,
            available_replicas: if current { available } else { 0 },
            rolled_out: current && updated >= desired && available >= desired && total <= desired,
        }
    }

    /// True when the decided variant can take traffic.
    pub fn ready(&self) -> bool {
        self.rolled_out && self.available_replicas >= self.desired_replicas
    }
}

/// The status for a successful reconcile.
#[expect(
    clippy::too_many_arguments,
    reason = "each is a separate input of the status; a struct would only rename them"
)]
pub fn healthy(
    current: Option<&InferenceServiceStatus>,
    generation: Option<i64>,
    decision: &Decision,
    observed: &Observed,
    selector: String,
    endpoint: String,
    overloaded: bool,
    now: &Time,
) -> InferenceServiceStatus {
    let mut conditions = current.map(|s| s.conditions.clone()).unwrap_or_default();
    let g = generation;
    let variant = decision.variant.to_string();
    // Zero replicas count as ready only once the Deployment controller has seen that spec and the
    // old pods are gone, as any other replica count does.
    let ready = observed.switched && observed.ready();
    for new in [
        ready_condition(ready, observed, &variant, g),
        progressing_condition(!ready, &variant, g),
        degraded_condition(overloaded, g),
    ] {
        set(&mut conditions, new, now);
    }

    // While the old variant still serves, replicas and selector describe the pods behind the Service.
    let (replicas, ready_replicas) = if observed.switched {
        (observed.desired_replicas, observed.available_replicas)
    } else {
        (
            current.map_or(0, |s| s.replicas),
            current.map_or(0, |s| s.ready_replicas),
        )
    };
    InferenceServiceStatus {
        observed_generation: g,
        conditions,
        variant: Some(if observed.switched {
            variant
        } else {
            current.and_then(|s| s.variant.clone()).unwrap_or(variant)
        }),
        replicas,
        ready_replicas,
        selector: Some(selector),
        endpoint: Some(endpoint),
        decision: Some(decision.clone()),
        // Set by the caller (see `plan` and `measure`).
        scale_down_since: None,
        observed: None,
        profiles: Vec::new(),
        pending_switch: None,
        quality: None,
        unavailable: Vec::new(),
    }
}

/// `Ready`: every desired replica of the decided variant is available behind the Service.
fn ready_condition(ready: bool, observed: &Observed, variant: &str, g: Option<i64>) -> Condition {
    let (reason, message) = match (ready, observed.desired_replicas) {
        (true, 0) => (
            reasons::SCALED_TO_ZERO,
            "the decision calls for zero replicas".to_owned(),
        ),
        (false, 0) => (
            reasons::ROLLING_OUT,
            format!("scaling {variant} to zero replicas"),
        ),
        (ready, desired) => (
            if ready {
                reasons::AVAILABLE
            } else {
                reasons::ROLLING_OUT
            },
            format!(
                "{}/{desired} replicas of {variant} available",
                observed.available_replicas
            ),
        ),
    };
    condition(conditions::READY, ready, reason, message, g)
}

/// `Progressing`: the decided variant is still rolling out.
fn progressing_condition(progressing: bool, variant: &str, g: Option<i64>) -> Condition {
    let (reason, message) = if progressing {
        (reasons::ROLLING_OUT, format!("rolling out {variant}"))
    } else {
        (reasons::STABLE, format!("{variant} is rolled out"))
    };
    condition(conditions::PROGRESSING, progressing, reason, message, g)
}

/// `Degraded`: demand exceeds what the plan can serve within the SLO.
fn degraded_condition(overloaded: bool, g: Option<i64>) -> Condition {
    let (reason, message) = if overloaded {
        (
            reasons::DEMAND_EXCEEDS_CAPACITY,
            "expected demand exceeds what maxReplicas can serve within the SLO",
        )
    } else {
        (reasons::AS_EXPECTED, "serving as planned")
    };
    condition(conditions::DEGRADED, overloaded, reason, message.to_owned(), g)
}

/// Records what was measured: `observed`, `profiles` and the `MetricsAvailable` condition.
pub fn record_measurements(
    status: &mut InferenceServiceStatus,
    reading: &super::measure::Reading,
    generation: Option<i64>,
    now: &Time,
) {
    status.observed = reading.observed.clone();
    status.profiles = reading.measurements.profiles.clone();
    let m = &reading.metrics;
    let mut metrics = condition(
        conditions::METRICS_AVAILABLE,
        false,
        m.reason,
        m.message.clone(),
        generation,
    );
    metrics.status = m.status.to_owned();
    set(&mut status.conditions, metrics, now);
}

/// The status after a permanent error: Ready=False and Degraded=True with the error's reason;
/// everything else stays as it was, since the children keep running.
pub fn failed(
    current: Option<&InferenceServiceStatus>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
    now: &Time,
) -> InferenceServiceStatus {
    let mut status = current.cloned().unwrap_or_default();
    let g = generation;
    set(
        &mut status.conditions,
        condition(conditions::READY, false, reason, message.to_owned(), g),
        now,
    );
    set(
        &mut status.conditions,
        condition(
            conditions::PROGRESSING,
            false,
            reason,
            "waiting for the spec or a HardwareClass to change".to_owned(),
            g,
        ),
        now,
    );
    set(
        &mut status.conditions,
        condition(conditions::DEGRADED, true, reason, message.to_owned(), g),
        now,
    );
    status.observed_generation = g;
    status
}

fn condition(type_: &str, status: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        // Replaced by `set`.
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Inserts or replaces a condition, keeping its `lastTransitionTime` unless its status flips.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition, now: &Time) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                now.clone()
            };
            *old = new;
        }
        None => {
            new.last_transition_time = now.clone();
            conditions.push(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use bitscale_api::v1alpha1::QuantLevel;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::build::fixtures::decision;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    fn observed(available: i32, rolled_out: bool, switched: bool) -> Observed {
        Observed {
            serving_variant: "q4_k.cpu-standard".into(),
            switched,
            desired_replicas: 2,
            available_replicas: available,
            rolled_out,
        }
    }

    fn ready_of(s: &InferenceServiceStatus) -> &Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == conditions::READY)
            .expect("Ready")
    }

    #[test]
    fn ready_once_every_replica_is_available() {
        let d = decision(QuantLevel::Q4K, "cpu-standard", 2);
        let starting = healthy(
            None,
            Some(1),
            &d,
            &observed(1, false, true),
            "s".into(),
            "e".into(),
            false,
            &at(10),
        );
        assert_eq!(ready_of(&starting).status, "False");
        assert_eq!(ready_of(&starting).observed_generation, Some(1));
        let ready = healthy(
            Some(&starting),
            Some(1),
            &d,
            &observed(2, true, true),
            "s".into(),
            "e".into(),
            false,
            &at(20),
        );
        assert_eq!(ready_of(&ready).status, "True");
        assert_eq!(ready_of(&ready).last_transition_time, at(20));
        assert_eq!(ready.replicas, 2);
        assert_eq!(ready.ready_replicas, 2);
        assert_eq!(ready.variant.as_deref(), Some("q4_k/cpu-standard"));
    }

    #[test]
    fn scaled_to_zero_only_once_the_deployment_controller_has_scaled_down() {
        let d = decision(QuantLevel::Q4K, "cpu-standard", 0);
        let to_zero = |available, rolled_out| Observed {
            desired_replicas: 0,
            ..observed(available, rolled_out, true)
        };
        let status = |current, observed: &Observed, t| {
            healthy(
                current,
                Some(3),
                &d,
                observed,
                "s".into(),
                "e".into(),
                false,
                &at(t),
            )
        };
        // The spec says zero, but the controller has not observed it yet: a pod may still serve.
        let pending = status(None, &to_zero(1, false), 10);
        assert_eq!(ready_of(&pending).status, "False");
        assert_eq!(ready_of(&pending).reason, reasons::ROLLING_OUT);
        let done = status(Some(&pending), &to_zero(0, true), 20);
        assert_eq!(ready_of(&done).status, "True");
        assert_eq!(ready_of(&done).reason, reasons::SCALED_TO_ZERO);
        assert_eq!(ready_of(&done).last_transition_time, at(20));
    }

    #[test]
    fn unchanged_status_is_equal_so_nothing_is_written() {
        let d = decision(QuantLevel::Q4K, "cpu-standard", 2);
        let first = healthy(
            None,
            Some(1),
            &d,
            &observed(2, true, true),
            "s".into(),
            "e".into(),
            false,
            &at(10),
        );
        let again = healthy(
            Some(&first),
            Some(1),
            &d,
            &observed(2, true, true),
            "s".into(),
            "e".into(),
            false,
            &at(99),
        );
        assert_eq!(
            first, again,
            "same inputs at a later time must not produce a different status"
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conds = Vec::new();
        set(
            &mut conds,
            condition("Ready", false, "A", "m1".into(), Some(1)),
            &at(1),
        );
        set(
            &mut conds,
            condition("Ready", false, "B", "m2".into(), Some(2)),
            &at(2),
        );
        assert_eq!(conds[0].last_transition_time, at(1));
        assert_eq!(conds[0].reason, "B");
        set(
            &mut conds,
            condition("Ready", true, "C", "m3".into(), Some(2)),
            &at(3),
        );
        assert_eq!(conds[0].last_transition_time, at(3));
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn old_variant_keeps_serving_until_the_new_one_is_ready() {
        let d = decision(QuantLevel::Q8_0, "gpu-small", 2);
        let mut current = InferenceServiceStatus {
            variant: Some("q4_k/cpu-standard".into()),
            replicas: 3,
            ready_replicas: 3,
            ..Default::default()
        };
        current = healthy(
            Some(&current),
            Some(2),
            &d,
            &observed(0, false, false),
            "s".into(),
            "e".into(),
            false,
            &at(5),
        );
        assert_eq!(current.variant.as_deref(), Some("q4_k/cpu-standard"));
        assert_eq!(current.replicas, 3);
        let progressing = current
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::PROGRESSING)
            .expect("Progressing");
        assert_eq!(progressing.status, "True");
    }

    #[test]
    fn permanent_errors_set_ready_false_with_the_reason() {
        let s = failed(
            None,
            Some(4),
            "UnknownHardwareClass",
            "HardwareClass not found: x",
            &at(1),
        );
        let ready = ready_of(&s);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "UnknownHardwareClass")
        );
        assert_eq!(s.observed_generation, Some(4));
    }
}
