//! The per-token statistics of a quality comparison: log-softmax in f64, negative log-likelihood,
//! KL divergence and top-1 agreement, accumulated over a text.

/// `log_softmax(logits)` in f64 (the f32 logits are widened first so sums over a 49k vocabulary do
/// not lose the small probabilities KL depends on).
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&l| l as f64 - log_z).collect()
}

/// `KL(P ‖ Q) = Σ p_i (log p_i − log q_i)` for log-probabilities `p` (reference) and `q`.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&lp, &lq)| {
            let pi = lp.exp();
            // A zero-probability term contributes nothing (0 · log 0 = 0).
            if pi == 0.0 { 0.0 } else { pi * (lp - lq) }
        })
        .sum::<f64>()
        // Rounding can leave a tiny negative sum for identical distributions.
        .max(0.0)
}

/// The index of the largest value (the first on ties).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Sums over scored tokens for one level against the reference.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    /// Tokens scored.
    pub tokens: u64,
    /// Σ −log q(next token).
    pub nll: f64,
    /// Σ KL(reference ‖ level) of the next-token distributions.
    pub kl: f64,
    /// Positions where the level's most likely token is the reference's.
    pub top1_agree: u64,
}

impl Tally {
    /// Adds one position: the reference's and this level's log-probabilities and the true next token.
    pub fn add(&mut self, reference: &[f64], level: &[f64], target: usize) {
        self.tokens += 1;
        self.nll -= level.get(target).copied().unwrap_or(f64::NEG_INFINITY);
        self.kl += kl_divergence(reference, level);
        if argmax(reference) == argmax(level) {
            self.top1_agree += 1;
        }
    }

    /// `exp(mean NLL)`; NaN before any token.
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.tokens as f64).exp()
    }

    /// Mean KL divergence per token.
    pub fn mean_kl(&self) -> f64 {
        self.kl / self.tokens as f64
    }

    /// Fraction of positions whose top-1 token agrees with the reference.
    pub fn top1_agreement(&self) -> f64 {
        self.top1_agree as f64 / self.tokens as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalizes() {
        let p = log_softmax(&[1.0, 2.0, 3.0, -50.0]);
        let total: f64 = p.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&p), 2);
    }

    #[test]
    fn kl_is_zero_against_itself_and_positive_otherwise() {
        let p = log_softmax(&[0.5, -1.0, 2.0, 0.0]);
        let q = log_softmax(&[0.4, -1.2, 2.5, 0.1]);
        assert_eq!(kl_divergence(&p, &p), 0.0);
        assert!(kl_divergence(&p, &q) > 0.0);
    }

    #[test]
    fn tally_of_a_uniform_model_has_vocab_perplexity() {
        let uniform = log_softmax(&[0.0; 8]);
        let mut t = Tally::default();
        for target in 0..8 {
            t.add(&uniform, &uniform, target);
        }
        assert!((t.perplexity() - 8.0).abs() < 1e-9);
        assert_eq!(t.mean_kl(), 0.0);
        assert_eq!(t.top1_agreement(), 1.0);
    }
}
