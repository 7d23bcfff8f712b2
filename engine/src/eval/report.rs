//! The `eval` report: one row per level, as JSON or as a table.

use std::fmt::Write as _;

use serde::Serialize;

use super::Comparison;

/// Measured quality of one level against the reference. The same shape as the prior table in
/// `engine/QUALITY.md` (and the operator's `quality_loss_prior`): `ppl_increase` is relative.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LevelQuality {
    pub level: String,
    /// Perplexity of the level on the text.
    pub perplexity: f64,
    /// `perplexity / reference perplexity − 1` (0.05 = 5 % worse).
    pub ppl_increase: f64,
    /// Mean KL(reference ‖ level) of the next-token distributions, in nats.
    pub kl_mean: f64,
    /// Fraction of positions whose most likely next token is the reference's.
    pub top1_agreement: f64,
    /// Bytes of the level's loaded weights, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_bytes: Option<u64>,
}

/// The whole `eval` output.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub reference: String,
    /// `builtin` (the shipped calibration text) or the file given.
    pub text: String,
    /// Tokens scored per level.
    pub tokens: u64,
    pub window: usize,
    pub reference_perplexity: f64,
    /// Whether the time budget stopped the evaluation before the end of the text.
    pub truncated: bool,
    pub elapsed_s: f64,
    pub levels: Vec<LevelQuality>,
}

impl EvalReport {
    /// Builds the report from a comparison; `weight_bytes` is looked up by level name.
    pub fn new(
        model: String,
        reference: String,
        text: String,
        c: &Comparison,
        weight_bytes: &dyn Fn(&str) -> Option<u64>,
    ) -> Self {
        let ref_ppl = c.reference.perplexity();
        let levels = c
            .levels
            .iter()
            .map(|(level, t)| LevelQuality {
                level: level.clone(),
                perplexity: t.perplexity(),
                ppl_increase: t.perplexity() / ref_ppl - 1.0,
                kl_mean: t.mean_kl(),
                top1_agreement: t.top1_agreement(),
                weight_bytes: weight_bytes(level),
            })
            .collect();
        Self {
            model,
            reference,
            text,
            tokens: c.reference.tokens,
            window: c.window,
            reference_perplexity: ref_ppl,
            truncated: c.truncated,
            elapsed_s: c.elapsed.as_secs_f64(),
            levels,
        }
    }

    /// A table for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} tokens scored in windows of {}, reference {} (perplexity {:.3}){}",
            self.model,
            self.tokens,
            self.window,
            self.reference,
            self.reference_perplexity,
            if self.truncated {
                ", cut short by the time budget"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "{:<6} {:>10} {:>11} {:>9} {:>8} {:>10}",
            "level", "perplexity", "ppl incr %", "KL mean", "top-1 %", "weights MB"
        );
        for l in &self.levels {
            let mb = l
                .weight_bytes
                .map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1e6));
            let _ = writeln!(
                s,
                "{:<6} {:>10.3} {:>11.2} {:>9.5} {:>8.2} {:>10}",
                l.level,
                l.perplexity,
                100.0 * l.ppl_increase,
                l.kl_mean,
                100.0 * l.top1_agreement,
                mb
            );
        }
        s
    }
}
