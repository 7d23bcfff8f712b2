//! `spec.scaling.scaleDownDelay`: replicas are removed only after the decision has called for
//! fewer than are running for that long, so a short dip in demand does not stop pods that the
//! next minute needs again. Pure: the caller passes the clock.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::SignedDuration};

/// What to do with the replica count the decision calls for.
#[derive(Clone, Debug, PartialEq)]
pub enum ScaleDown {
    /// Apply the decided count: it is not lower than what runs, or it has been for the delay.
    Apply,
    /// Keep `replicas` (what runs now) until `until`; `since` is when the decision first called
    /// for fewer, kept in `status.scaleDownSince` across reconciles and restarts.
    Hold { replicas: i32, since: Time, until: Time },
}

/// Decides whether a lower replica count waits. `running` is the count the operator last set for
/// the decided variant, if it has set one (a new variant starts at the decided count);
/// `pending_since` is the previous `status.scaleDownSince`.
pub fn scale_down(
    decided: i32,
    running: Option<i32>,
    pending_since: Option<&Time>,
    delay: Duration,
    now: &Time,
) -> ScaleDown {
    let Some(running) = running.filter(|&r| decided < r) else {
        return ScaleDown::Apply;
    };
    let since = pending_since.filter(|s| s.0 <= now.0).unwrap_or(now).clone();
    let delay = SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX);
    let Ok(until) = since.0.checked_add(delay) else {
        return ScaleDown::Hold {
            replicas: running,
            until: since.clone(),
            since,
        };
    };
    if now.0 >= until {
        return ScaleDown::Apply;
    }
    ScaleDown::Hold {
        replicas: running,
        since,
        until: Time(until),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).expect("timestamp"))
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn fewer_replicas_wait_for_the_delay_then_apply() {
        let first = scale_down(1, Some(3), None, FIVE_MIN, &at(0));
        assert_eq!(
            first,
            ScaleDown::Hold {
                replicas: 3,
                since: at(0),
                until: at(300)
            }
        );
        // The start is kept from status, so later reconciles count from it.
        let later = scale_down(1, Some(3), Some(&at(0)), FIVE_MIN, &at(299));
        assert!(matches!(later, ScaleDown::Hold { replicas: 3, .. }));
        assert_eq!(
            scale_down(1, Some(3), Some(&at(0)), FIVE_MIN, &at(300)),
            ScaleDown::Apply
        );
    }

    #[test]
    fn more_or_equal_replicas_and_new_variants_apply_at_once() {
        assert_eq!(
            scale_down(3, Some(3), Some(&at(0)), FIVE_MIN, &at(10)),
            ScaleDown::Apply
        );
        assert_eq!(scale_down(4, Some(3), None, FIVE_MIN, &at(10)), ScaleDown::Apply);
        assert_eq!(scale_down(1, None, None, FIVE_MIN, &at(10)), ScaleDown::Apply);
    }

    #[test]
    fn a_zero_delay_applies_at_once_and_a_future_start_is_not_trusted() {
        assert_eq!(
            scale_down(0, Some(2), None, Duration::ZERO, &at(0)),
            ScaleDown::Apply
        );
        // A start in the future (a clock step back, or a hand-edited status) counts from now.
        let held = scale_down(1, Some(2), Some(&at(1000)), FIVE_MIN, &at(0));
        assert_eq!(
            held,
            ScaleDown::Hold {
                replicas: 2,
                since: at(0),
                until: at(300)
            }
        );
    }
}
