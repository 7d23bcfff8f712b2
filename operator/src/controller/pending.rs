//! Pending: a variant whose pods the scheduler cannot place for longer than a timeout (no GPU
//! free, a node pool that does not grow) is set aside for a cool-off, so the next-best variant
//! serves meanwhile; it is tried again once the cool-off ends. Pure but for `unschedulable`,
//! which lists the pods of one variant.

use std::time::Duration;

use bitscale_api::v1alpha1::{UnavailableVariant, Variant};
use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::ListParams};

use crate::{
    build::{Owner, selector_string, variant_label, variant_selector},
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
    /// A pod has been unschedulable past the timeout.
    Stuck {
        /// The scheduler's message.
        reason: String,
    },
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
        if waited >= timeout {
            return Scheduling::Stuck {
                reason: condition
                    .message
                    .clone()
                    .unwrap_or_else(|| "the scheduler cannot place its pods".to_owned()),
            };
        }
        let left = timeout - waited + Duration::from_secs(1);
        waiting = Some(waiting.map_or(left, |w| w.min(left)));
    }
    waiting.map_or(Scheduling::Fine, |recheck| Scheduling::Waiting { recheck })
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
pub async fn pods(client: &Client, owner: &Owner, variant: &Variant) -> Result<Vec<Pod>> {
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
        assert!(reason.contains("Insufficient nvidia.com/gpu"), "{reason}");
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
