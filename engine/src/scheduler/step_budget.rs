//! How many tokens an engine step may carry: `--max-batch-tokens`, or fewer when an inter-token
//! latency target is set, from the measured time per token of recent steps.
//!
//! A step that carries a prompt chunk makes every running sequence wait for it, so its length is
//! the inter-token latency of all of them. A static token budget is right for one machine and
//! model only (512 tokens are 0.7 s on two EPYC vCPUs with SmolLM2-135M, a few ms on a GPU);
//! measuring the step cost where the engine runs makes the target hold anywhere.

use std::time::Duration;

/// Until a step has been timed, steps carry at most this many.
const FIRST_BUDGET: usize = 64;

/// The budget never drops below this (nor above `--max-batch-tokens`): when even the running
/// sequences' decode tokens take longer than the target, prompts must still move.
const MIN_BUDGET: usize = 16;

/// Weight of the newest timed step in the moving average of the time per token.
const ALPHA: f64 = 0.2;

/// Steps are sized to this fraction of the target: sized to all of it, the steps' scatter around
/// the average put the p95 inter-token latency right at the target (SmolLM2 q4_k, 100 ms: p95
/// 94–100 ms under load).
const AIM: f64 = 0.9;

/// The token budget of the next step.
#[derive(Debug)]
pub(super) struct StepBudget {
    target_s: Option<f64>,
    max: usize,
    per_token_s: Option<f64>,
}

impl StepBudget {
    /// A budget of `max` tokens, or, with a `target`, as many as fit in it (at most `max`).
    pub(super) fn new(target: Option<Duration>, max: usize) -> Self {
        Self {
            target_s: target.map(|t| t.as_secs_f64()).filter(|t| *t > 0.0),
            max: max.max(1),
            per_token_s: None,
        }
    }

    /// Tokens the next step may carry.
    pub(super) fn tokens(&self) -> usize {
        let Some(target) = self.target_s else {
            return self.max;
        };
        let fit = match self.per_token_s {
            None => FIRST_BUDGET,
            // Saturating float → int cast; the clamp below bounds it anyway.
            Some(per_token) => (AIM * target / per_token) as usize,
        };
        fit.clamp(MIN_BUDGET.min(self.max), self.max)
    }

    /// Records that a step of `tokens` took `seconds`.
    ///
    /// Only steps of at least half the budget (and at least [`MIN_BUDGET`] tokens) count: a step
    /// of a few decode tokens costs about what one token does (it streams the weights once,
    /// whatever the rows), so its time per token would shrink the budget for nothing. Averaging
    /// the steps near the budget's size settles where such a step takes 90 % of the target, even
    /// when the time per token depends on the step's size. (Timing only steps of 32 or more, as a
    /// first version did, froze the average once the budget fell below 32.)
    pub(super) fn observe(&mut self, tokens: usize, seconds: f64) {
        let counts = tokens >= MIN_BUDGET.max(self.tokens() / 2);
        if !counts || !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        let cost = seconds / tokens as f64;
        self.per_token_s = Some(match self.per_token_s {
            None => cost,
            Some(avg) => avg + ALPHA * (cost - avg),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_target_the_budget_is_the_maximum() {
        let mut b = StepBudget::new(None, 512);
        b.observe(100, 1.0);
        assert_eq!(b.tokens(), 512);
    }

    #[test]
    fn the_budget_follows_the_measured_time_per_token() {
        let mut b = StepBudget::new(Some(Duration::from_millis(100)), 512);
        // Nothing timed yet: a cautious first budget.
        assert_eq!(b.tokens(), FIRST_BUDGET);
        // Small steps say nothing about the cost of another token.
        b.observe(8, 0.012);
        b.observe(31, 0.100);
        assert_eq!(b.tokens(), FIRST_BUDGET);
        // 64 tokens in 80 ms: 1.25 ms a token, 72 fit in 90 % of 100 ms.
        b.observe(64, 0.080);
        assert_eq!(b.tokens(), 72);
        // The machine slows down to 2 ms a token: the budget follows within a few steps.
        for _ in 0..30 {
            b.observe(b.tokens(), b.tokens() as f64 * 0.002);
        }
        assert!((44..=46).contains(&b.tokens()), "{}", b.tokens());
        // Slower still, 4 ms a token: the budget falls to 22, and steps of that size keep being
        // timed, so it comes back up when the machine speeds up again.
        for _ in 0..30 {
            b.observe(b.tokens(), b.tokens() as f64 * 0.004);
        }
        assert!((21..=23).contains(&b.tokens()), "{}", b.tokens());
        for _ in 0..30 {
            b.observe(b.tokens(), b.tokens() as f64 * 0.00125);
        }
        assert!((70..=73).contains(&b.tokens()), "{}", b.tokens());
        // Never above the maximum, never below the floor.
        let mut fast = StepBudget::new(Some(Duration::from_millis(100)), 512);
        fast.observe(64, 1e-6);
        assert_eq!(fast.tokens(), 512);
        let mut slow = StepBudget::new(Some(Duration::from_millis(1)), 512);
        slow.observe(64, 6.4);
        assert_eq!(slow.tokens(), MIN_BUDGET);
        let small = StepBudget::new(Some(Duration::from_millis(100)), 8);
        assert_eq!(small.tokens(), 8);
    }

    #[test]
    fn bad_timings_are_ignored() {
        let mut b = StepBudget::new(Some(Duration::from_millis(100)), 512);
        b.observe(64, f64::NAN);
        b.observe(64, 0.0);
        b.observe(64, -1.0);
        assert_eq!(b.tokens(), FIRST_BUDGET);
    }
}
