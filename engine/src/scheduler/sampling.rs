//! Per-sequence token sampling: greedy, or temperature with top-k and top-p, from a seeded RNG.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// How to pick the next token. Validated by the HTTP layer; the sampler tolerates any values.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Seed of this request's RNG; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }
    }
}

/// One sequence's sampler, owning its RNG so a seeded request is reproducible whatever else runs.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// Picks a token from `logits`. Non-finite logits are never picked unless all are.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        let greedy = self.params.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || !self.params.temperature.is_finite();
        if greedy {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        // No full sort of the vocabulary (49k entries for SmolLM2 took 1.5 ms a token): top-k is
        // a selection, and top-p sorts only as many of the most likely as its mass needs.
        let k = self.params.top_k;
        if k > 0 && k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by_logit_desc);
            cand.truncate(k);
        }
        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let weight = |l: f32| (l - max).exp();
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| weight(l)).collect();
        let mut total: f32 = probs.iter().sum();
        let top_p = self.params.top_p;
        if top_p > 0.0 && top_p < 1.0 {
            let keep = nucleus(&mut cand, max, total * top_p);
            cand.truncate(keep);
            probs = cand.iter().map(|&(_, l)| weight(l)).collect();
            total = probs.iter().sum();
        }
        let mut r = self.rng.random::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[probs.len() - 1].0
    }
}

fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1)
}

/// Orders the most likely candidates first and returns how many of them it takes for their
/// unnormalized mass `exp(l − max)` (`max` the largest logit) to reach `mass` (at least one).
/// Sorts a growing prefix found by selection, so a peaked distribution costs a pass over the
/// candidates, not a sort of them.
fn nucleus(cand: &mut [(u32, f32)], max: f32, mass: f32) -> usize {
    let mut n = 64;
    loop {
        if n < cand.len() {
            cand.select_nth_unstable_by(n - 1, by_logit_desc);
        } else {
            n = cand.len();
        }
        cand[..n].sort_unstable_by(by_logit_desc);
        let mut acc = 0.0;
        for (i, (_, l)) in cand[..n].iter().enumerate() {
            acc += (l - max).exp();
            if acc >= mass {
                return i + 1;
            }
        }
        if n == cand.len() {
            return n;
        }
        n *= 8;
    }
}

fn argmax(logits: &[f32]) -> u32 {
    // The largest value first, eight independent lanes at a time (vectorizes; the one comparison
    // chain over the vocabulary was ~50 µs a sequence for SmolLM2, on the step's critical path),
    // then its first position. `f32::max` skips NaN. A zero maximum goes the exact way, where
    // +0 ranks above −0.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = logits.chunks_exact(8);
    for c in &mut chunks {
        for (m, &l) in lanes.iter_mut().zip(c) {
            *m = m.max(l);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .fold(lanes.into_iter().fold(f32::NEG_INFINITY, f32::max), |m, &l| {
            m.max(l)
        });
    if max != 0.0
        && let Some(i) = logits.iter().position(|&l| l == max)
    {
        return i as u32;
    }
    first_largest(logits)
}

/// The first index of the largest non-NaN value in total order (+0 above −0); 0 if all are NaN.
fn first_largest(logits: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, l) in logits.iter().enumerate() {
        if !l.is_nan() && best.is_none_or(|b| l.total_cmp(&logits[b]).is_gt()) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_max() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 3.0, f32::NAN, 2.0]), 1);
    }

    #[test]
    fn argmax_is_the_first_largest_over_a_vocabulary() {
        // The definition (which an earlier scan missed when the first logit was NaN: it kept it).
        let reference = first_largest;
        let base: Vec<f32> = (0..49_157)
            .map(|i| ((i * 7919 % 10_007) as f32 * 0.013).sin())
            .collect();
        let mut cases = vec![base.clone()];
        let mut tie = base.clone();
        (tie[30_001], tie[40_000]) = (5.0, 5.0);
        cases.push(tie);
        let mut nan = base.clone();
        (nan[0], nan[9], nan[49_156]) = (f32::NAN, f32::INFINITY, 7.0);
        cases.push(nan);
        let mut tail = base.clone();
        tail[49_155] = 9.0;
        cases.push(tail);
        cases.push(vec![-0.0, 0.0, -1.0, 0.0]);
        cases.push(vec![f32::NAN; 5]);
        cases.push(vec![f32::NEG_INFINITY, -3.0, f32::NEG_INFINITY]);
        for (n, l) in cases.iter().enumerate() {
            assert_eq!(argmax(l), reference(l), "case {n}");
        }
        let want: Vec<u32> = cases.iter().skip(1).map(|l| argmax(l)).collect();
        assert_eq!(want, [30_001, 9, 49_155, 1, 0, 1]);
    }

    #[test]
    fn seeded_is_reproducible_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 0,
            seed: Some(7),
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let mut k1 = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        assert_eq!(k1.sample(&logits), argmax(&logits));
    }

    /// Frequencies of `draws` samples over `logits`.
    fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut s = Sampler::new(params);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(logits) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, f32::NEG_INFINITY];
        let want: Vec<f64> = {
            let e: Vec<f64> = logits.iter().map(|&l| f64::from(l / 0.7).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|x| x / sum).collect()
        };
        let got = frequencies(
            SamplingParams {
                temperature: 0.7,
                seed: Some(11),
                ..Default::default()
            },
            &logits,
            40_000,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.01, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_most_likely() {
        // Probabilities ∝ 8, 4, 2, 1, 1 (and 200 unlikely tokens): the nucleus of 0.7 is the first
        // two (8 + 4 of ≈ 16 + 200·ε), top-k 3 keeps three.
        let mut logits = vec![-20.0f32; 205];
        for (i, p) in [8.0f32, 4.0, 2.0, 1.0, 1.0].iter().enumerate() {
            logits[i * 40] = p.ln();
        }
        let p = |top_k, top_p| SamplingParams {
            temperature: 1.0,
            top_p,
            top_k,
            seed: Some(5),
        };
        let nucleus = frequencies(p(0, 0.7), &logits, 20_000);
        assert!((nucleus[0] - 8.0 / 12.0).abs() < 0.02 && (nucleus[40] - 4.0 / 12.0).abs() < 0.02);
        assert!((nucleus[0] + nucleus[40] - 1.0).abs() < 1e-12, "{nucleus:?}");
        let top3 = frequencies(p(3, 1.0), &logits, 20_000);
        assert!((top3[0] - 8.0 / 14.0).abs() < 0.02 && (top3[80] - 2.0 / 14.0).abs() < 0.02);
        assert!((top3[0] + top3[40] + top3[80] - 1.0).abs() < 1e-12, "{top3:?}");
    }
}
