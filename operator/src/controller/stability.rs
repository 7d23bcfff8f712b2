//! Stability: a different variant replaces the serving one only for a saving above a threshold
//! that has held for a window, so a load hovering around a break-even point does not move the
//! service back and forth. Replicas are not held here: they follow demand (up at once, down
//! after `scaleDownDelay`, see `scale_down`). Pure.

use std::time::Duration;

use bitscale_api::v1alpha1::{Decision, PendingSwitch};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Default smallest saving worth a switch: a fifth of the serving variant's cost.
pub const DEFAULT_THRESHOLD: f64 = 0.2;
/// Default time the saving must hold.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// When a switch is worth it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Smallest relative saving.
    pub threshold: f64,
    /// How long it must hold.
    pub window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
            window: DEFAULT_WINDOW,
        }
    }
}

/// What to do about a cheaper winner.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// Serve the winner.
    Move,
    /// Keep the serving variant (its own decision), recording the pending switch if any.
    Stay {
        /// The switch waiting out the window, if the saving is large enough.
        pending: Option<PendingSwitch>,
        /// Why, in one clause for the decision's reason.
        note: String,
        /// When to look again: the window's end.
        recheck: Option<Duration>,
    },
}

/// The relative saving of `winner` against `kept`: by cost per hour, or, when that is the same,
/// by cost per million tokens.
pub fn saving(kept: &Decision, winner: &Decision) -> f64 {
    let relative = |old: f64, new: f64| if old > 0.0 { (old - new) / old } else { 0.0 };
    let hourly = relative(kept.cost_per_hour, winner.cost_per_hour);
    if hourly.abs() > 1e-9 {
        hourly
    } else {
        relative(kept.cost_per_million_tokens, winner.cost_per_million_tokens)
    }
}

/// Decides between keeping `kept` (the serving variant's decision, feasible) and moving to the
/// cheaper `winner`, given the switch pending since an earlier reconcile.
pub fn choose(
    kept: &Decision,
    winner: &Decision,
    pending: Option<&PendingSwitch>,
    now: &Time,
    policy: Policy,
) -> Choice {
    let saved = saving(kept, winner);
    if saved < policy.threshold {
        return Choice::Stay {
            pending: None,
            note: format!(
                "{} would save only {:.0}% (a switch needs {:.0}%)",
                winner.variant,
                saved.max(0.0) * 100.0,
                policy.threshold * 100.0
            ),
            recheck: None,
        };
    }
    let since = match pending {
        Some(p) if p.variant == winner.variant => p.since.clone(),
        _ => now.clone(),
    };
    let held = Duration::try_from(now.0.duration_since(since.0)).unwrap_or_default();
    if held >= policy.window {
        return Choice::Move;
    }
    Choice::Stay {
        note: format!(
            "{} would save {:.0}%; switching once that has held for {}s (since {})",
            winner.variant,
            saved * 100.0,
            policy.window.as_secs(),
            since.0
        ),
        pending: Some(PendingSwitch {
            variant: winner.variant.clone(),
            since,
        }),
        recheck: Some(policy.window - held + Duration::from_secs(1)),
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

    fn priced(level: QuantLevel, class: &str, per_hour: f64) -> Decision {
        Decision {
            cost_per_hour: per_hour,
            ..decision(level, class, 1)
        }
    }

    const POLICY: Policy = Policy {
        threshold: 0.2,
        window: Duration::from_secs(60),
    };

    #[test]
    fn a_small_saving_never_switches() {
        let kept = priced(QuantLevel::Q8_0, "cpu", 1.0);
        let winner = priced(QuantLevel::Q4K, "cpu", 0.9);
        assert!(matches!(
            choose(&kept, &winner, None, &at(0), POLICY),
            Choice::Stay { pending: None, .. }
        ));
    }

    #[test]
    fn a_large_saving_switches_once_it_has_held_for_the_window() {
        let kept = priced(QuantLevel::Q8_0, "gpu", 0.9);
        let winner = priced(QuantLevel::Q8_0, "cpu", 0.24);
        let Choice::Stay { pending: Some(p), .. } = choose(&kept, &winner, None, &at(100), POLICY) else {
            panic!("must wait");
        };
        assert_eq!(p.since, at(100));
        assert!(matches!(
            choose(&kept, &winner, Some(&p), &at(130), POLICY),
            Choice::Stay { pending: Some(_), .. }
        ));
        assert_eq!(choose(&kept, &winner, Some(&p), &at(160), POLICY), Choice::Move);
    }

    #[test]
    fn a_different_winner_restarts_the_window() {
        let kept = priced(QuantLevel::Q8_0, "gpu", 0.9);
        let first = priced(QuantLevel::Q8_0, "cpu", 0.24);
        let second = priced(QuantLevel::Q4K, "cpu", 0.24);
        let Choice::Stay { pending: Some(p), .. } = choose(&kept, &first, None, &at(0), POLICY) else {
            panic!("must wait");
        };
        let Choice::Stay { pending: Some(q), .. } = choose(&kept, &second, Some(&p), &at(90), POLICY) else {
            panic!("a new winner waits its own window");
        };
        assert_eq!(q.since, at(90));
    }

    /// Demand oscillating around the break-even point of two variants, decided every 10 s for an
    /// hour: each switch needs a saving held for a whole window, so the switches stay few.
    #[test]
    fn load_oscillating_around_break_even_switches_a_bounded_number_of_times() {
        // Cost per hour of serving `demand` on each variant: a cheap small replica that needs
        // more of them, or a dear big one that carries everything.
        let cost = |demand: f64, small: bool| {
            if small { (demand / 100.0).ceil() * 0.3 } else { 0.9 }
        };
        let mut serving_small = false;
        let mut pending: Option<PendingSwitch> = None;
        let mut switches = 0;
        for tick in 0..360 {
            // Around 300 tok/s, where three small replicas cost what the big one does.
            let demand = 300.0 + 40.0 * ((tick as f64) * 0.7).sin();
            let small = priced(QuantLevel::Q8_0, "small", cost(demand, true));
            let big = priced(QuantLevel::Q8_0, "big", cost(demand, false));
            let (kept, other) = if serving_small {
                (&small, &big)
            } else {
                (&big, &small)
            };
            if other.cost_per_hour >= kept.cost_per_hour {
                pending = None;
                continue;
            }
            match choose(kept, other, pending.as_ref(), &at(tick * 10), POLICY) {
                Choice::Move => {
                    serving_small = !serving_small;
                    switches += 1;
                    pending = None;
                }
                Choice::Stay { pending: p, .. } => pending = p,
            }
        }
        assert!(switches <= 2, "{switches} switches in an hour");
    }
}
