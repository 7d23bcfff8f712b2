//! Quality of quantization levels, measured: perplexity, relative perplexity increase, KL
//! divergence of the next-token distributions and top-1 agreement of each level against a
//! reference level, on the same text.
//!
//! The text is cut into fixed windows (each starts with an empty cache); several windows run
//! together as one batch so every matmul gets rows. Inside a window, position `p` predicts token
//! `p + 1`, so a window of `W` tokens scores `W − 1` of them. Reference and candidates see exactly
//! the same windows; their logits are compared window group by window group and then dropped, so
//! memory stays at two groups of logits (`windows × W × vocab` f32 each) whatever the text length.

pub mod report;
pub mod stats;

use std::time::{Duration, Instant};

use crate::model::Forward;
pub use report::{EvalReport, LevelQuality};
use stats::{Tally, log_softmax};

/// The calibration text shipped with the engine: self-written plain English prose on varied
/// topics (about 3,000 SmolLM2 tokens), used when no `--text` is given.
pub const CALIBRATION_TEXT: &str = include_str!("../../data/calibration.txt");

/// How to cut and bound an evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Tokens per window (capped at the models' context length).
    pub window: usize,
    /// Windows run together in one forward call.
    pub windows_per_step: usize,
    /// Tokens of the text to use at most.
    pub max_tokens: Option<usize>,
    /// Stop after the window group that crosses this much time (at least one group always runs).
    pub time_budget: Option<Duration>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            window: 256,
            windows_per_step: 4,
            max_tokens: None,
            time_budget: None,
        }
    }
}

/// A level to compare against the reference.
pub struct Candidate<'a> {
    /// Its name in the report (`q4_k`, …).
    pub level: String,
    pub model: &'a dyn Forward,
}

/// Raw sums of one comparison, before they are turned into a report.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The reference against the text itself (its `kl` is 0).
    pub reference: Tally,
    /// Per candidate, in the order given.
    pub levels: Vec<(String, Tally)>,
    /// Window length actually used.
    pub window: usize,
    /// Whether the time budget cut the text short.
    pub truncated: bool,
    pub elapsed: Duration,
}

/// Compares every candidate with `reference` on `tokens`.
///
/// A candidate that is the reference model itself (the same object) reuses the reference's logits,
/// so its KL is exactly 0 without a second forward pass.
pub fn evaluate(
    reference: &dyn Forward,
    candidates: &[Candidate<'_>],
    tokens: &[u32],
    opts: &EvalOptions,
) -> anyhow::Result<Comparison> {
    let started = Instant::now();
    let context = candidates
        .iter()
        .map(|c| c.model.info().context_length)
        .fold(reference.info().context_length, usize::min);
    let window = opts.window.min(context).max(2);
    let tokens = &tokens[..opts.max_tokens.unwrap_or(usize::MAX).min(tokens.len())];
    let windows: Vec<&[u32]> = tokens.chunks(window).filter(|w| w.len() >= 2).collect();
    if windows.is_empty() {
        anyhow::bail!(
            "the text has {} tokens; evaluation needs at least 2",
            tokens.len()
        );
    }
    let mut reference_tally = Tally::default();
    let mut tallies = vec![Tally::default(); candidates.len()];
    let mut truncated = false;
    let groups: Vec<&[&[u32]]> = windows.chunks(opts.windows_per_step.max(1)).collect();
    for (g, group) in groups.iter().enumerate() {
        let ref_logits = run_group(reference, group)?;
        score(&ref_logits, &ref_logits, group, &mut reference_tally);
        for (c, tally) in candidates.iter().zip(tallies.iter_mut()) {
            if same_model(c.model, reference) {
                score(&ref_logits, &ref_logits, group, tally);
            } else {
                let logits = run_group(c.model, group)?;
                score(&ref_logits, &logits, group, tally);
            }
        }
        tracing::debug!(group = g + 1, of = groups.len(), "evaluated window group");
        if opts
            .time_budget
            .is_some_and(|b| started.elapsed() >= b && g + 1 < groups.len())
        {
            truncated = true;
            break;
        }
    }
    Ok(Comparison {
        reference: reference_tally,
        levels: candidates.iter().map(|c| c.level.clone()).zip(tallies).collect(),
        window,
        truncated,
        elapsed: started.elapsed(),
    })
}

/// The served level's loss against the source file's own precision, for `serve --measure-quality`.
#[derive(Debug, Clone)]
pub struct ServedQuality {
    pub reference: String,
    pub ppl_increase: f64,
    pub kl: f64,
    pub top1_disagreement: f64,
    /// Tokens scored (fewer than the text when the budget cut it).
    pub tokens: u64,
}

/// Measures `served` (loaded from `path` at `level`) against the file's own precision on the
/// calibration text (its first `max_tokens`, if given), within `budget`. When `level` is the source's own precision, the loss is 0 by
/// definition and nothing is loaded or run. Otherwise the reference is loaded beside the served
/// model for the measurement and dropped afterwards.
pub fn measure_served(
    path: &std::path::Path,
    served: &dyn Forward,
    level: crate::model::QuantLevel,
    (max_tokens, budget): (Option<usize>, Duration),
) -> anyhow::Result<ServedQuality> {
    let source = crate::model::ModelHeader::read(path)?.source_level;
    if source == level {
        return Ok(ServedQuality {
            reference: source.to_string(),
            ppl_increase: 0.0,
            kl: 0.0,
            top1_disagreement: 0.0,
            tokens: 0,
        });
    }
    let reference = crate::model::load(path, source, served.info().device)?;
    let tokens = reference.tokenizer.encode(CALIBRATION_TEXT, true)?;
    let opts = EvalOptions {
        time_budget: Some(budget),
        max_tokens,
        ..EvalOptions::default()
    };
    let candidate = Candidate {
        level: level.to_string(),
        model: served,
    };
    let c = evaluate(reference.forward.as_ref(), &[candidate], &tokens, &opts)?;
    let (_, t) = c
        .levels
        .first()
        .ok_or_else(|| anyhow::anyhow!("no candidate measured"))?;
    Ok(ServedQuality {
        reference: source.to_string(),
        ppl_increase: t.perplexity() / c.reference.perplexity() - 1.0,
        kl: t.mean_kl(),
        top1_disagreement: 1.0 - t.top1_agreement(),
        tokens: t.tokens,
    })
}

fn same_model(a: &dyn Forward, b: &dyn Forward) -> bool {
    std::ptr::addr_eq(a as *const dyn Forward, b as *const dyn Forward)
}

/// Logits at every position of every window of `group`, each window in a fresh cache.
fn run_group(model: &dyn Forward, group: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut caches: Vec<_> = group.iter().map(|_| model.new_cache()).collect();
    let mut batch: Vec<_> = group
        .iter()
        .zip(caches.iter_mut())
        .map(|(w, cache)| crate::model::SeqChunk {
            tokens: w,
            cache,
            want_logits: true,
        })
        .collect();
    let out = model.forward_every_position(&mut batch)?;
    let vocab = model.info().vocab_size;
    for (w, l) in group.iter().zip(&out) {
        if l.len() != w.len() * vocab {
            anyhow::bail!(
                "the model returned {} logits for a window of {} tokens (vocabulary {vocab})",
                l.len(),
                w.len()
            );
        }
    }
    if out.len() != group.len() {
        anyhow::bail!(
            "the model returned {} windows of logits for {}",
            out.len(),
            group.len()
        );
    }
    Ok(out)
}

/// Adds every scored position of `group` to `tally`.
fn score(reference: &[Vec<f32>], level: &[Vec<f32>], group: &[&[u32]], tally: &mut Tally) {
    for ((w, r), l) in group.iter().zip(reference).zip(level) {
        let vocab = r.len() / w.len();
        for p in 0..w.len() - 1 {
            let rp = log_softmax(&r[p * vocab..(p + 1) * vocab]);
            let lp = if std::ptr::eq(r, l) {
                rp.clone()
            } else {
                log_softmax(&l[p * vocab..(p + 1) * vocab])
            };
            tally.add(&rp, &lp, w[p + 1] as usize);
        }
    }
}

#[cfg(test)]
mod tests;
