//! Pending: a variant whose rollout cannot finish for longer than a timeout is set aside for a
//! cool-off, so the next-best variant serves meanwhile; it is tried again once the cool-off
//! ends. A rollout cannot finish when the scheduler cannot place its pods (no GPU free, a node
//! pool that does not grow), when its pods cannot be created (a ResourceQuota, an admission
//! webhook), or when its Deployment passes its progress deadline (pods that never become
//! available). Pure but for [`check`], which reads the pods of the variant being rolled out.

use std::time::Duration;

use bitscale_api::v1alpha1::{InferenceService, UnavailableVariant, Variant};
use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, Resource, api::ListParams};

use super::{Context, events, publish, status::Observed, validate::Validated};
use crate::{
    build::{Owner, selector_string, variant_label, variant_selector},
    controller::children::{Child, Stall},
    error::Result,
};

/// Default time a pod may stay unschedulable before its variant is set aside.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default cool-off.
pub const DEFAULT_COOL_OFF: Duration = Duration::from_secs(600);

/// What the scheduler says about a variant's pods.
#[derive(Clone, Debug, PartialEq)]
pub enum Scheduling {
    /// Nothing waits to be scheduled.
    Fine,
    /// A pod has been unschedulable for less than the timeout; look again after `recheck`.
    Waiting {
        /// When the timeout will have passed.
        recheck: Duration,
    },
    /// The rollout has been stuck past the timeout.
    Stuck {
        /// Why, as a clause: "its pods could not be scheduled (…)".
        reason: String,
    },
}

/// The variants set aside now: the running cool-offs, plus the last decided variant if its
/// rollout has been stuck past the timeout (with an Event). Also when to look again if it is
/// stuck but not for long enough yet.
pub(super) async fn check(
    ctx: &Context,
    isvc: &InferenceService,
    valid: &Validated,
    existing: &[Child],
    now: &Time,
) -> Result<(Vec<UnavailableVariant>, Option<Duration>)> {
    let status = isvc.status.as_ref();
    let mut unavailable = active(status.map_or(&[][..], |s| &s.unavailable), now);
    let Some(previous) = status.and_then(|s| s.decision.as_ref()) else {
        return Ok((unavailable, None));
    };
    let label = variant_label(&previous.variant);
    let short = existing
        .iter()
        .find(|d| d.variant.as_ref() == Some(&label))
        .filter(|d| !Observed::from_deployment(d, label.clone(), true).ready());
    let Some(deployment) = short else {
        return Ok((unavailable, None));
    };
    if unavailable.iter().any(|u| u.variant == previous.variant) {
        return Ok((unavailable, None));
    }
    let timeout = ctx.config.pending_timeout;
    let verdict = match &deployment.stall {
        Some(stall) => stalled(stall, now, timeout),
        None => scheduling(
            &pods(&ctx.client, &valid.owner, &previous.variant).await?,
            now,
            timeout,
        ),
    };
    match verdict {
        Scheduling::Fine => Ok((unavailable, None)),
        Scheduling::Waiting { recheck } => Ok((unavailable, Some(recheck))),
        Scheduling::Stuck { reason } => {
            let aside = set_aside(&previous.variant, reason, now, ctx.config.cool_off);
            let note = format!(
                "{} set aside until {}: {}",
                aside.variant, aside.until.0, aside.reason
            );
            let reference = isvc.object_ref(&());
            publish(
                ctx,
                &reference,
                events::Type::Warning,
                "VariantUnavailable",
                &note,
            )
            .await;
            unavailable.push(aside);
            Ok((unavailable, None))
        }
    }
}

/// Reads the pods of one variant.
pub fn scheduling(pods: &[Pod], now: &Time, timeout: Duration) -> Scheduling {
    let mut waiting: Option<Duration> = None;
    for pod in pods {
        let Some(condition) = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
        else {
            continue;
        };
        let since = condition
            .last_transition_time
            .as_ref()
            .or(pod.metadata.creation_timestamp.as_ref())
            .map_or(now.0, |t| t.0);
        let waited = Duration::try_from(now.0.duration_since(since)).unwrap_or_default();
        let message = condition
            .message
            .as_deref()
            .unwrap_or("the scheduler cannot place them");
        match after(waited, timeout, || {
            format!("its pods could not be scheduled ({message})")
        }) {
            stuck @ Scheduling::Stuck { .. } => return stuck,
            Scheduling::Waiting { recheck } => {
                waiting = Some(waiting.map_or(recheck, |w| w.min(recheck)));
            }
            Scheduling::Fine => {}
        }
    }
    waiting.map_or(Scheduling::Fine, |recheck| Scheduling::Waiting { recheck })
}

/// Reads a Deployment's [`Stall`]: a progress deadline passed is stuck at once (the controller
/// has given up); pods that cannot be created are stuck once that has lasted the timeout.
pub fn stalled(stall: &Stall, now: &Time, timeout: Duration) -> Scheduling {
    let reason = || {
        let what = if stall.given_up {
            "its rollout passed its progress deadline"
        } else {
            "its pods could not be created"
        };
        format!("{what} ({}: {})", stall.reason, stall.message)
    };
    if stall.given_up {
        return Scheduling::Stuck { reason: reason() };
    }
    let since = stall.since.as_ref().map_or(now.0, |t| t.0);
    let waited = Duration::try_from(now.0.duration_since(since)).unwrap_or_default();
    after(waited, timeout, reason)
}

/// Stuck when `waited` has reached `timeout`, else waiting until it will have.
fn after(waited: Duration, timeout: Duration, reason: impl FnOnce() -> String) -> Scheduling {
    if waited >= timeout {
        Scheduling::Stuck { reason: reason() }
    } else {
        Scheduling::Waiting {
            recheck: timeout - waited + Duration::from_secs(1),
        }
    }
}

/// The cool-offs still running at `now`.
pub fn active(unavailable: &[UnavailableVariant], now: &Time) -> Vec<UnavailableVariant> {
    unavailable
        .iter()
        .filter(|u| u.until.0 > now.0)
        .cloned()
        .collect()
}

/// Sets `variant` aside from `now` for `cool_off`.
pub fn set_aside(variant: &Variant, reason: String, now: &Time, cool_off: Duration) -> UnavailableVariant {
    let until = SignedDuration::try_from(cool_off)
        .ok()
        .and_then(|d| now.0.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX);
    UnavailableVariant {
        variant: variant.clone(),
        since: now.clone(),
        until: Time(until),
        reason,
    }
}

/// Lists the pods of `variant`.
async fn pods(client: &Client, owner: &Owner, variant: &Variant) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &owner.namespace);
    let selector = selector_string(&variant_selector(&owner.name, &variant_label(variant)));
    Ok(api.list(&ListParams::default().labels(&selector)).await?.items)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    fn unschedulable_since(seconds: i64) -> Pod {
        Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/5 nodes are available: 2 Insufficient nvidia.com/gpu".into()),
                    last_transition_time: Some(at(seconds)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_stuck_past_the_timeout_set_the_variant_aside() {
        let timeout = Duration::from_secs(60);
        assert_eq!(scheduling(&[Pod::default()], &at(100), timeout), Scheduling::Fine);
        assert_eq!(
            scheduling(&[unschedulable_since(80)], &at(100), timeout),
            Scheduling::Waiting {
                recheck: Duration::from_secs(41)
            }
        );
        let Scheduling::Stuck { reason } = scheduling(&[unschedulable_since(30)], &at(100), timeout) else {
            panic!("stuck");
        };
        assert!(reason.contains("could not be scheduled"), "{reason}");
        assert!(reason.contains("Insufficient nvidia.com/gpu"), "{reason}");
    }

    fn stall(given_up: bool, since: i64) -> Stall {
        Stall {
            reason: if given_up {
                "ProgressDeadlineExceeded"
            } else {
                "FailedCreate"
            }
            .into(),
            message: "pods \"x\" is forbidden: exceeded quota: gpus".into(),
            since: Some(at(since)),
            given_up,
        }
    }

    #[test]
    fn pods_that_cannot_be_created_set_the_variant_aside_after_the_timeout() {
        let timeout = Duration::from_secs(60);
        assert_eq!(
            stalled(&stall(false, 80), &at(100), timeout),
            Scheduling::Waiting {
                recheck: Duration::from_secs(41)
            }
        );
        let Scheduling::Stuck { reason } = stalled(&stall(false, 30), &at(100), timeout) else {
            panic!("stuck");
        };
        assert!(reason.contains("could not be created"), "{reason}");
        assert!(reason.contains("exceeded quota"), "{reason}");
    }

    #[test]
    fn a_passed_progress_deadline_sets_the_variant_aside_at_once() {
        let Scheduling::Stuck { reason } = stalled(&stall(true, 99), &at(100), Duration::from_secs(60))
        else {
            panic!("stuck");
        };
        assert!(reason.contains("progress deadline"), "{reason}");
    }

    #[test]
    fn cool_offs_end() {
        let v = Variant {
            level: bitscale_api::v1alpha1::QuantLevel::Q8_0,
            hardware_class: "gpu".into(),
        };
        let aside = set_aside(&v, "full".into(), &at(0), Duration::from_secs(60));
        assert_eq!(active(std::slice::from_ref(&aside), &at(59)).len(), 1);
        assert!(active(&[aside], &at(60)).is_empty());
    }
}
