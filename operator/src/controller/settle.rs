//! Settle: which new measurements replace the ones in status. A service with traffic never reads
//! the same twice: its token rate and latency quantiles jitter by a few per cent from round to
//! round. Recording every jitter would rewrite its status every decision period (at 10,000
//! services, thousands of writes a minute that tell nobody anything), and the decision made from
//! it would move its cost figures just as often. So a round's figures replace the recorded ones
//! only when one of them has moved past its tolerance, or when the recorded ones are older than
//! [`REFRESH`]; otherwise the recorded figures stand and the decision reads those. Pure.
//!
//! The tolerances are below the headroom the plan keeps (it fills a replica to
//! [`TARGET_UTILISATION`](crate::decision::priors::TARGET_UTILISATION) of its capacity), so
//! demand held within them never leaves a replica short.

use std::time::Duration;

use bitscale_api::v1alpha1::{ObservedLoad, Profile};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Recorded figures older than this are replaced even when nothing moved past its tolerance.
pub const REFRESH: Duration = Duration::from_secs(300);

/// Relative move of a rate (tokens, requests), a mean length or a latency that counts as change.
pub const RELATIVE: f64 = 0.10;

/// Relative move of a profile's slowdown that counts as change.
pub const PROFILE_RELATIVE: f64 = 0.05;

/// How far two readings of one figure may be apart and still count as the same: `relative` of
/// the larger, but at least `floor`.
#[derive(Clone, Copy, Debug)]
struct Tolerance {
    relative: f64,
    floor: f64,
}

impl Tolerance {
    const fn new(relative: f64, floor: f64) -> Self {
        Self { relative, floor }
    }

    fn same(self, a: f64, b: f64) -> bool {
        (a - b).abs() <= (self.relative * a.abs().max(b.abs())).max(self.floor)
    }

    /// Present in both and the same, or absent from both.
    fn same_option(self, a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => self.same(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

const TOKEN_RATE: Tolerance = Tolerance::new(RELATIVE, 1.0);
const REQUEST_RATE: Tolerance = Tolerance::new(RELATIVE, 0.02);
const LENGTH: Tolerance = Tolerance::new(RELATIVE, 4.0);
const LATENCY_MS: Tolerance = Tolerance::new(RELATIVE, 5.0);
// Shown in status but read by no decision: wider, as they swing with every burst.
const QUEUE: Tolerance = Tolerance::new(0.5, 2.0);
const KV_USAGE: Tolerance = Tolerance::new(0.0, 0.2);
const QUALITY: Tolerance = Tolerance::new(0.0, 0.002);

/// Whether `new` says nothing `recorded` does not, within the tolerances.
pub fn same_load(recorded: &ObservedLoad, new: &ObservedLoad) -> bool {
    // A refusal where there was none is an overload starting: never within a tolerance.
    let refusing = |l: &ObservedLoad| l.rejected_per_second > 0.0;
    recorded.pods == new.pods
        && refusing(recorded) == refusing(new)
        && TOKEN_RATE.same(
            recorded.generated_tokens_per_second,
            new.generated_tokens_per_second,
        )
        && TOKEN_RATE.same(recorded.prompt_tokens_per_second, new.prompt_tokens_per_second)
        && REQUEST_RATE.same(recorded.requests_per_second, new.requests_per_second)
        && REQUEST_RATE.same(recorded.rejected_per_second, new.rejected_per_second)
        && LENGTH.same_option(recorded.mean_prompt_tokens, new.mean_prompt_tokens)
        && LENGTH.same_option(recorded.mean_completion_tokens, new.mean_completion_tokens)
        && LATENCY_MS.same_option(
            recorded.time_to_first_token_p95_ms,
            new.time_to_first_token_p95_ms,
        )
        && LATENCY_MS.same_option(
            recorded.inter_token_latency_p95_ms,
            new.inter_token_latency_p95_ms,
        )
        && QUEUE.same(recorded.running_requests, new.running_requests)
        && QUEUE.same(recorded.waiting_requests, new.waiting_requests)
        && KV_USAGE.same_option(recorded.kv_cache_usage, new.kv_cache_usage)
        && QUALITY.same_option(recorded.quality_loss, new.quality_loss)
}

/// The load to record and decide from: `new`, unless `recorded` says the same and is recent.
pub fn load(recorded: Option<&ObservedLoad>, new: ObservedLoad) -> ObservedLoad {
    match recorded {
        Some(r) if fresh(&r.time, &new.time) && same_load(r, &new) => r.clone(),
        _ => new,
    }
}

/// The profiles to record and decide from: each learned profile, unless the recorded one of its
/// variant has a slowdown within [`PROFILE_RELATIVE`] and is recent.
pub fn profiles(recorded: &[Profile], learned: Vec<Profile>) -> Vec<Profile> {
    let same = Tolerance::new(PROFILE_RELATIVE, 0.0);
    learned
        .into_iter()
        .map(|new| match recorded.iter().find(|r| r.variant == new.variant) {
            Some(r) if fresh(&r.measured_at, &new.measured_at) && same.same(r.slowdown, new.slowdown) => {
                r.clone()
            }
            _ => new,
        })
        .collect()
}

/// Whether figures recorded at `recorded` are younger than [`REFRESH`] at `now`.
fn fresh(recorded: &Time, now: &Time) -> bool {
    Duration::try_from(now.0.duration_since(recorded.0)).is_ok_and(|age| age < REFRESH)
}

#[cfg(test)]
mod tests {
    use bitscale_api::v1alpha1::{QuantLevel, Variant};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    fn load_at(seconds: i64, tokens: f64) -> ObservedLoad {
        ObservedLoad {
            time: at(seconds),
            pods: 2,
            generated_tokens_per_second: tokens,
            prompt_tokens_per_second: tokens * 2.0,
            requests_per_second: tokens / 100.0,
            rejected_per_second: 0.0,
            mean_prompt_tokens: Some(200.0),
            mean_completion_tokens: Some(100.0),
            time_to_first_token_p95_ms: Some(400.0),
            inter_token_latency_p95_ms: Some(40.0),
            running_requests: 6.0,
            waiting_requests: 0.0,
            kv_cache_usage: Some(0.3),
            quality_loss: None,
        }
    }

    /// Steady traffic jittering by ±4 % for an hour of 30 s rounds: the status records it once
    /// per refresh, not once per round.
    #[test]
    fn jitter_is_recorded_once_per_refresh() {
        let mut recorded = load_at(0, 500.0);
        let mut writes = 0;
        for round in 1..=120 {
            let jitter = if round % 2 == 0 { 1.04 } else { 0.96 };
            let new = load_at(round * 30, 500.0 * jitter);
            let next = load(Some(&recorded), new);
            if next != recorded {
                writes += 1;
                recorded = next;
            }
        }
        // One write per 300 s refresh: 3,600 s / 300 s.
        assert_eq!(writes, 12, "writes in an hour");
    }

    #[test]
    fn a_step_in_demand_is_recorded_at_once() {
        let recorded = load_at(0, 500.0);
        assert_eq!(load(Some(&recorded), load_at(30, 560.0)), load_at(30, 560.0));
        assert_eq!(load(Some(&recorded), load_at(30, 440.0)), load_at(30, 440.0));
        assert_eq!(load(Some(&recorded), load_at(30, 520.0)), recorded);
    }

    #[test]
    fn the_first_refusal_more_pods_or_a_new_figure_are_change() {
        let recorded = load_at(0, 500.0);
        let refusing = ObservedLoad {
            rejected_per_second: 0.001,
            ..load_at(30, 500.0)
        };
        assert!(!same_load(&recorded, &refusing));
        let scaled = ObservedLoad {
            pods: 3,
            ..load_at(30, 500.0)
        };
        assert!(!same_load(&recorded, &scaled));
        let confirmed = ObservedLoad {
            quality_loss: Some(0.03),
            ..load_at(30, 500.0)
        };
        assert!(!same_load(&recorded, &confirmed));
        // Near zero the floors decide: 0.4 against 0.9 tokens/s is no change worth a write.
        assert!(same_load(&load_at(0, 0.4), &load_at(30, 0.9)));
    }

    #[test]
    fn nothing_recorded_takes_the_new_load() {
        assert_eq!(load(None, load_at(30, 5.0)), load_at(30, 5.0));
    }

    fn profile(seconds: i64, slowdown: f64) -> Profile {
        Profile {
            variant: Variant {
                level: QuantLevel::Q8_0,
                hardware_class: "cpu".into(),
            },
            slowdown,
            samples: seconds * 10,
            measured_at: at(seconds),
            tokens_per_second: 100.0 / slowdown,
        }
    }

    #[test]
    fn a_profile_is_rewritten_when_it_moves_or_ages() {
        let recorded = [profile(0, 2.0)];
        assert_eq!(profiles(&recorded, vec![profile(30, 2.06)]), recorded);
        assert_eq!(profiles(&recorded, vec![profile(30, 2.2)]), [profile(30, 2.2)]);
        assert_eq!(
            profiles(&recorded, vec![profile(300, 2.06)]),
            [profile(300, 2.06)]
        );
        assert_eq!(profiles(&[], vec![profile(30, 2.06)]), [profile(30, 2.06)]);
    }
}
