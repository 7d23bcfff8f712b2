//! The decision: which variant (quantization level × HardwareClass) serves an InferenceService,
//! with how many replicas, and why. Pure: no client, no clock.
//!
//! For each candidate: does it fit in memory, is its quality within budget, does the roofline
//! estimate meet the latency SLO, how many replicas does the demand need? The roofline uses the
//! per-device efficiencies in [`priors::efficiency`], calibrated against the engine's
//! measurements. The cheapest feasible candidate wins; every other candidate is listed with the
//! reason it lost.
//!
//! [`Measurements`] enter at one seam each: a measured demand (and prompt and completion
//! lengths) replaces `spec.demand`; a variant's measured slowdown against the roofline divides
//! its efficiencies, and a variant never measured takes the slowdown its HardwareClass's (else
//! its device's) measured variants showed.

pub mod priors;

use std::time::Duration;

use bitscale_api::v1alpha1::{Alternative, Decision, Device, Estimate, Profile, QuantLevel, Variant};

use self::priors::*;

/// Everything the decision needs, already parsed and defaulted.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// Parameter count of the model.
    pub parameters: f64,
    /// Where the parameter count came from, for the explanation.
    pub parameters_basis: String,
    /// Longest sequence in tokens.
    pub context_length: i32,
    /// Sequences one replica decodes together.
    pub max_running: i32,
    /// Levels to consider (already defaulted to all, or to the pinned one).
    pub levels: Vec<QuantLevel>,
    /// True when the user pinned the level: quality is then not weighed.
    pub pinned: bool,
    /// Largest acceptable relative perplexity increase against the best candidate level.
    pub max_quality_loss: f64,
    /// p95 time-to-first-token objective.
    pub ttft_slo: Option<Duration>,
    /// p95 inter-token latency objective.
    pub itl_slo: Option<Duration>,
    /// Expected generated tokens per second across replicas, if known.
    pub demand: Option<f64>,
    /// Typical prompt length in tokens.
    pub prompt_tokens: i32,
    /// Typical number of generated tokens per request.
    pub completion_tokens: i32,
    /// Replica bounds.
    pub min_replicas: i32,
    /// Replica bounds.
    pub max_replicas: i32,
    /// Replicas set by an external autoscaler (`replicasOwner: External`), if any.
    pub external_replicas: Option<i32>,
    /// True when an external autoscaler owns the replica count.
    pub external: bool,
    /// HardwareClasses to consider.
    pub classes: Vec<Class>,
}

/// A HardwareClass reduced to the numbers the decision uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    /// Name of the HardwareClass.
    pub name: String,
    /// Engine device.
    pub device: Device,
    /// Memory limit of one replica in bytes.
    pub memory_bytes: f64,
    /// Accelerator memory of one replica (count × per-device memory) in bytes, for cuda.
    pub accelerator_memory_bytes: Option<f64>,
    /// Memory bandwidth in bytes/s.
    pub bandwidth: f64,
    /// Peak compute in FLOP/s.
    pub flops: f64,
    /// Price of one replica per hour.
    pub cost_per_hour: f64,
}

/// The result of a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The decision to record in status and to apply.
    pub decision: Decision,
    /// True when even the chosen variant at maxReplicas cannot carry the demand within the SLO.
    pub overloaded: bool,
}

/// No candidate can serve the model; each alternative says why.
#[derive(Clone, Debug, PartialEq)]
pub struct NoFeasibleVariant {
    /// Every candidate and why it was excluded.
    pub alternatives: Vec<Alternative>,
}

impl std::fmt::Display for NoFeasibleVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no variant can serve this model")?;
        for (i, alt) in self.alternatives.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{}: {}", alt.variant, alt.reason)?;
        }
        Ok(())
    }
}

// Why a candidate was excluded, ordered from most to least fundamental.
#[derive(Clone, Debug, PartialEq)]
enum Exclusion {
    Memory(String),
    Unavailable(String),
    Quality(String),
    Latency(String),
    Capacity { reason: String, capacity: f64 },
}

impl Exclusion {
    fn reason(&self) -> &str {
        match self {
            Self::Memory(r)
            | Self::Unavailable(r)
            | Self::Quality(r)
            | Self::Latency(r)
            | Self::Capacity { reason: r, .. } => r,
        }
    }
}

#[derive(Clone, Debug)]
struct Candidate {
    variant: Variant,
    estimate: Estimate,
    replicas: i32,
    cost_per_hour: f64,
    cost_per_million: f64,
    // One replica's price per hour, and per million tokens at its planned utilisation.
    replica_cost_per_hour: f64,
    cost_per_million_at_capacity: f64,
    correction: Correction,
    excluded: Option<Exclusion>,
}

/// What Prometheus measured, each figure replacing the estimate it stands for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurements {
    /// Demand measured across the service's pods, in place of `spec.demand`.
    pub demand: Option<MeasuredDemand>,
    /// Variants' measured slowdowns against the roofline prior.
    pub profiles: Vec<Profile>,
    /// The model's measured quality loss per level, in place of the prior table.
    pub quality: Option<MeasuredQuality>,
    /// Quality loss per level as the engine pods serving it measured it at start
    /// (`--measure-quality`): it confirms the profile, and where it is worse, it counts.
    pub served_quality: std::collections::BTreeMap<QuantLevel, f64>,
    /// Variants set aside because their rollout could not finish (pods unschedulable, not
    /// created, or never available).
    pub unavailable: Vec<bitscale_api::v1alpha1::UnavailableVariant>,
}

/// Quality loss per level measured on this model, against one reference level.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredQuality {
    /// Relative perplexity increase per level.
    pub losses: std::collections::BTreeMap<QuantLevel, f64>,
    /// How it was measured, for the explanation.
    pub basis: String,
}

impl Measurements {
    /// A level's quality loss: the worse of the profiling Job's and the serving pods' own
    /// measurement, either where only one exists, else the prior.
    pub fn quality_loss(&self, level: QuantLevel) -> f64 {
        let profiled = self.quality.as_ref().and_then(|q| q.losses.get(&level).copied());
        match (profiled, self.served_quality.get(&level).copied()) {
            (Some(p), Some(s)) => p.max(s),
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => quality_loss_prior(level),
        }
    }

    /// What the serving pods' own measurement of `level` says, for the explanation.
    fn served_quality_note(&self, level: QuantLevel) -> Option<String> {
        let served = *self.served_quality.get(&level)?;
        let profiled = self.quality.as_ref().and_then(|q| q.losses.get(&level).copied());
        Some(match profiled {
            // Within a tenth of a point: the same text, fewer tokens, the same answer.
            Some(p) if served <= p + 0.001 => format!(
                "confirmed by its pods: {level} measured {:+.2} % at start",
                served * 100.0
            ),
            Some(p) => format!(
                "its pods measured {level} at {:+.2} %, worse than the profile's {:+.2} %, and that counts",
                served * 100.0,
                p * 100.0
            ),
            None => format!("its pods measured {level} at {:+.2} % at start", served * 100.0),
        })
    }
}

/// Demand measured across the service's pods.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredDemand {
    /// Generated tokens per second, refused requests' share included.
    pub tokens_per_second: f64,
    /// Mean prompt length, when requests finished.
    pub prompt_tokens: Option<f64>,
    /// Mean completion length, when requests finished.
    pub completion_tokens: Option<f64>,
    /// How it was measured, for the explanation ("over 2 pods", "held from …").
    pub basis: String,
}

/// The slowdown applied to a candidate's roofline, and where it came from.
#[derive(Clone, Debug, PartialEq)]
struct Correction {
    slowdown: f64,
    basis: CorrectionBasis,
}

#[derive(Clone, Debug, PartialEq)]
enum CorrectionBasis {
    Prior,
    Measured { samples: i64 },
    Estimated { from: Vec<String> },
}

impl Correction {
    /// The candidate's own profile, else the samples-weighted mean slowdown of the measured
    /// variants on its HardwareClass, else on its device, else none.
    fn for_candidate(measured: &Measurements, classes: &[Class], class: &Class, level: QuantLevel) -> Self {
        let own = measured
            .profiles
            .iter()
            .find(|p| p.variant.level == level && p.variant.hardware_class == class.name);
        if let Some(p) = own {
            return Self {
                slowdown: p.slowdown,
                basis: CorrectionBasis::Measured { samples: p.samples },
            };
        }
        let device_of = |name: &str| classes.iter().find(|c| c.name == name).map(|c| c.device);
        let same_class: Vec<&Profile> = measured
            .profiles
            .iter()
            .filter(|p| p.variant.hardware_class == class.name)
            .collect();
        let peers = if same_class.is_empty() {
            measured
                .profiles
                .iter()
                .filter(|p| device_of(&p.variant.hardware_class) == Some(class.device))
                .collect()
        } else {
            same_class
        };
        let weight: f64 = peers.iter().map(|p| p.samples.max(1) as f64).sum();
        if peers.is_empty() || weight <= 0.0 {
            return Self {
                slowdown: 1.0,
                basis: CorrectionBasis::Prior,
            };
        }
        Self {
            slowdown: peers
                .iter()
                .map(|p| p.slowdown * p.samples.max(1) as f64)
                .sum::<f64>()
                / weight,
            basis: CorrectionBasis::Estimated {
                from: peers.iter().map(|p| p.variant.to_string()).collect(),
            },
        }
    }

    fn describe(&self) -> String {
        match &self.basis {
            CorrectionBasis::Prior => "capacity from the roofline prior, not yet measured".to_owned(),
            CorrectionBasis::Measured { samples } => format!(
                "capacity measured: its steps ran {:.2}× the roofline prior over {samples} steps",
                self.slowdown
            ),
            CorrectionBasis::Estimated { from } => format!(
                "capacity estimated: the roofline prior slowed {:.2}× as measured on {}",
                self.slowdown,
                from.join(", ")
            ),
        }
    }
}

/// `inputs` with the measured demand and request lengths in place of the spec's.
pub fn measured_inputs(inputs: &Inputs, measured: &Measurements) -> Inputs {
    let mut inputs = inputs.clone();
    if let Some(d) = &measured.demand {
        inputs.demand = Some(d.tokens_per_second);
        let tokens = |measured: Option<f64>, default: i32| {
            measured.map_or(default, |t| (t.round() as i32).clamp(1, inputs.context_length))
        };
        inputs.prompt_tokens = tokens(d.prompt_tokens, inputs.prompt_tokens);
        inputs.completion_tokens = tokens(d.completion_tokens, inputs.completion_tokens);
    }
    inputs
}

/// Picks the cheapest feasible variant.
///
/// # Errors
/// [`NoFeasibleVariant`] when no candidate fits in memory, meets the quality budget and the
/// latency SLO. A demand larger than every candidate can carry at `maxReplicas` is not an error:
/// the candidate with the most capacity is chosen and [`Outcome::overloaded`] is set.
pub fn decide(inputs: &Inputs, measured: &Measurements) -> Result<Outcome, NoFeasibleVariant> {
    decide_keeping(inputs, measured, None)
}

/// Like [`decide`], but chooses `incumbent` whenever it is feasible, cheapest or not: the
/// decision that keeps the serving variant while a cheaper one waits out the switch window.
///
/// # Errors
/// As [`decide`].
pub fn decide_keeping(
    inputs: &Inputs,
    measured: &Measurements,
    incumbent: Option<&Variant>,
) -> Result<Outcome, NoFeasibleVariant> {
    let inputs = &measured_inputs(inputs, measured);
    let mut candidates = ranked(inputs, measured);
    let (winner, overloaded) = pick(&candidates, incumbent).ok_or_else(|| NoFeasibleVariant {
        alternatives: candidates
            .iter()
            .map(|c| Alternative {
                reason: c
                    .excluded
                    .as_ref()
                    .map(|e| e.reason().to_owned())
                    .unwrap_or_default(),
                variant: c.variant.clone(),
            })
            .collect(),
    })?;
    let chosen = candidates.remove(winner);
    let alternatives = candidates
        .into_iter()
        .map(|c| Alternative {
            reason: match &c.excluded {
                Some(e) => e.reason().to_owned(),
                None => lost_to(&c, &chosen),
            },
            variant: c.variant,
        })
        .collect();
    Ok(Outcome {
        decision: Decision {
            reason: explain(inputs, &chosen, overloaded),
            basis: basis(inputs, measured, &chosen),
            variant: chosen.variant,
            replicas: chosen.replicas,
            cost_per_hour: round(chosen.cost_per_hour, 4),
            cost_per_million_tokens: round(chosen.cost_per_million, 4),
            estimate: chosen.estimate,
            alternatives,
        },
        overloaded,
    })
}

/// Every candidate, evaluated and ordered cheapest first.
fn ranked(inputs: &Inputs, measured: &Measurements) -> Vec<Candidate> {
    let loss = |level: QuantLevel| measured.quality_loss(level);
    let best_loss = inputs
        .levels
        .iter()
        .map(|l| loss(*l))
        .fold(f64::INFINITY, f64::min);
    let mut candidates: Vec<Candidate> = inputs
        .classes
        .iter()
        .flat_map(|class| inputs.levels.iter().map(move |level| (class, *level)))
        .map(|(class, level)| {
            let correction = Correction::for_candidate(measured, &inputs.classes, class, level);
            let unavailable = measured
                .unavailable
                .iter()
                .find(|u| u.variant.level == level && u.variant.hardware_class == class.name)
                .map(|u| format!("{}; set aside until {}", u.reason, u.until.0));
            let quality_loss = (loss(level) - best_loss).max(0.0);
            evaluate(inputs, class, level, quality_loss, correction, unavailable)
        })
        .collect();
    // At zero replicas every candidate costs nothing; what the first replica would cost, then
    // the price of a token at full load, decide which variant starts when demand arrives.
    candidates.sort_by(|a, b| {
        a.cost_per_hour
            .total_cmp(&b.cost_per_hour)
            .then(a.cost_per_million.total_cmp(&b.cost_per_million))
            .then(a.replica_cost_per_hour.total_cmp(&b.replica_cost_per_hour))
            .then(
                a.cost_per_million_at_capacity
                    .total_cmp(&b.cost_per_million_at_capacity),
            )
            .then(a.estimate.quality_loss.total_cmp(&b.estimate.quality_loss))
            .then(a.variant.cmp(&b.variant))
    });
    candidates
}

/// The index of the chosen candidate and whether it is overloaded: the feasible incumbent, else
/// the cheapest feasible one, else (only capacity short) the one with the most capacity.
fn pick(candidates: &[Candidate], incumbent: Option<&Variant>) -> Option<(usize, bool)> {
    let kept = incumbent.and_then(|v| {
        candidates
            .iter()
            .position(|c| &c.variant == v && c.excluded.is_none())
    });
    if let Some(i) = kept.or_else(|| candidates.iter().position(|c| c.excluded.is_none())) {
        return Some((i, false));
    }
    // Only capacity is short: serve as much as possible rather than nothing.
    candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match &c.excluded {
            Some(Exclusion::Capacity { capacity, .. }) => Some((i, *capacity)),
            _ => None,
        })
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| (i, true))
}

/// What the decision's figures rest on: measured or assumed, for demand, capacity and quality.
fn basis(inputs: &Inputs, measured: &Measurements, chosen: &Candidate) -> String {
    let demand = match &measured.demand {
        Some(d) => format!("demand measured {}", d.basis),
        None if inputs.demand.is_some() => "demand from spec.demand".to_owned(),
        None => "no demand known".to_owned(),
    };
    let quality = match &measured.quality {
        Some(q) => q.basis.clone(),
        None if inputs.pinned => "quality not weighed (pinned level)".to_owned(),
        None => "quality loss from priors (engine/QUALITY.md), not yet measured".to_owned(),
    };
    let quality = match measured.served_quality_note(chosen.variant.level) {
        Some(note) => format!("{quality}, {note}"),
        None => quality,
    };
    format!("{demand}; {}; {quality}", chosen.correction.describe())
}

/// What a replica of one variant needs in memory.
struct Sizing {
    weights: f64,
    kv_per_token: f64,
    kv_pool: f64,
    scratch: f64,
    memory: f64,
}

fn sizing(inputs: &Inputs, level: QuantLevel) -> Sizing {
    let weights = inputs.parameters * level.bits_per_weight() / 8.0;
    let kv_per_token = kv_bytes_per_token(inputs.parameters);
    let kv_pool = f64::from(inputs.context_length) * f64::from(inputs.max_running) * kv_per_token;
    let scratch = weights * SCRATCH_FRACTION;
    Sizing {
        weights,
        kv_per_token,
        kv_pool,
        scratch,
        memory: weights + kv_pool + scratch + OVERHEAD_BYTES,
    }
}

/// The roofline model of one variant's engine steps, with the device's efficiencies divided by a
/// measured slowdown (1 for the prior).
struct Roofline {
    weights: f64,
    kv_per_token: f64,
    // KV tokens a sequence reads per step: on average half-way through its reply.
    kv_tokens: f64,
    bandwidth: f64,
    weight_reuse: f64,
    // Compute time of one token through the model.
    token_compute: f64,
}

impl Roofline {
    fn new(inputs: &Inputs, class: &Class, sizing: &Sizing, slowdown: f64) -> Self {
        let efficiency = efficiency(class.device);
        Self {
            weights: sizing.weights,
            kv_per_token: sizing.kv_per_token,
            kv_tokens: f64::from(
                (inputs.prompt_tokens + inputs.completion_tokens / 2).min(inputs.context_length),
            ),
            bandwidth: class.bandwidth * efficiency.bandwidth / slowdown,
            weight_reuse: efficiency.weight_reuse,
            token_compute: 2.0 * inputs.parameters / (class.flops * efficiency.compute / slowdown),
        }
    }

    /// A decode step of `m` sequences streams the weights (once if the batch shares the reads,
    /// `m` times if not) and each sequence's KV cache.
    fn decode(&self, m: f64) -> f64 {
        let weight_reads = 1.0 + (m - 1.0).max(0.0) * (1.0 - self.weight_reuse);
        (self.weights * weight_reads + m * self.kv_tokens * self.kv_per_token) / self.bandwidth
    }

    /// A step of `sequences` decodes and prompt chunks, `tokens` in all: the decodes, then the
    /// prompt tokens beyond them at compute speed.
    fn step(&self, sequences: f64, tokens: f64) -> f64 {
        self.decode(sequences.max(1.0)) + self.token_compute * (tokens - sequences).max(0.0)
    }
}

/// How much slower than the roofline prior a variant's measured steps ran: the mean step's wall
/// time against the prior's time for a step of the same sequences and tokens.
pub fn slowdown(
    inputs: &Inputs,
    class: &Class,
    level: QuantLevel,
    sequences: f64,
    tokens: f64,
    seconds: f64,
) -> f64 {
    let roofline = Roofline::new(inputs, class, &sizing(inputs, level), 1.0);
    seconds / roofline.step(sequences, tokens)
}

/// Latency and capacity of one replica.
struct Performance {
    itl: f64,
    itl_alone: f64,
    ttft: f64,
    capacity: f64,
    step_tokens: Option<i32>,
}

fn performance(inputs: &Inputs, roofline: &Roofline, sizing: &Sizing) -> Performance {
    let itl_limit = inputs.itl_slo.map(|d| d.as_secs_f64());
    let step = |m: i32| roofline.decode(f64::from(m));
    let batch = (1..=inputs.max_running.max(1))
        .rev()
        .find(|m| itl_limit.is_none_or(|limit| step(*m) <= limit))
        .unwrap_or(1);
    let itl = step(batch);
    let token_compute = roofline.token_compute;
    let prefill = (token_compute * f64::from(inputs.prompt_tokens)).max(sizing.weights / roofline.bandwidth);
    // Prompts are computed on the same replica: every `completion_tokens` generated tokens also
    // cost one prefill, during which the batch does not advance.
    let decode_seconds_per_token = itl / f64::from(batch);
    let capacity = 1.0 / (decode_seconds_per_token + prefill / f64::from(inputs.completion_tokens.max(1)));
    // With an ITL objective, a step carries only the tokens that fit in it: a prompt prefilled in
    // one step stalls every running stream that long (measured on CPU: 128-token prompts beside
    // 8 streams, p95 inter-token latency 159 ms at 512 tokens per step, 33 ms at 24). The prompt
    // then arrives in chunks of what the decodes leave, one step each.
    let step_tokens = itl_limit.map(|limit| {
        let fit = (limit / token_compute).floor().min(f64::from(ENGINE_STEP_TOKENS)) as i32;
        fit.max(batch + 1)
    });
    // A new request waits for the step in flight, then its prefill runs.
    let ttft = match step_tokens {
        Some(tokens) => {
            let chunks = (f64::from(inputs.prompt_tokens.max(1)) / f64::from(tokens - batch)).ceil();
            itl + chunks * (token_compute * f64::from(tokens)).max(itl)
        }
        None => prefill + itl,
    };
    Performance {
        itl,
        itl_alone: step(1),
        ttft,
        capacity,
        step_tokens,
    }
}

/// Generated tokens per second one replica of `level` on `class` sustains within the SLO, its
/// roofline slowed down by `slowdown`.
pub fn capacity(inputs: &Inputs, class: &Class, level: QuantLevel, slowdown: f64) -> f64 {
    let sizing = sizing(inputs, level);
    performance(inputs, &Roofline::new(inputs, class, &sizing, slowdown), &sizing).capacity
}

fn memory_check(class: &Class, sizing: &Sizing) -> Option<String> {
    match (class.device, class.accelerator_memory_bytes) {
        (Device::Cuda, Some(accelerator)) => {
            let on_device = sizing.weights + sizing.kv_pool + sizing.scratch;
            (on_device > accelerator || OVERHEAD_BYTES > class.memory_bytes).then(|| {
                format!(
                    "needs {} of accelerator memory, has {}",
                    gib(on_device),
                    gib(accelerator)
                )
            })
        }
        _ => (sizing.memory > class.memory_bytes).then(|| {
            format!(
                "needs {} of memory, has {}",
                gib(sizing.memory),
                gib(class.memory_bytes)
            )
        }),
    }
}

/// Replicas the demand needs (before the bounds), and the count within them.
fn replicas(inputs: &Inputs, capacity: f64) -> (i32, i32) {
    let needed = match (inputs.external, inputs.demand) {
        (true, _) => inputs.external_replicas.unwrap_or(inputs.min_replicas),
        (false, Some(d)) if d <= 0.0 => 0,
        (false, Some(d)) => (d / (capacity * TARGET_UTILISATION)).ceil() as i32,
        // Without a demand figure, start one replica: nothing could wake a service at zero.
        (false, None) => 1,
    };
    let bounded = needed.clamp(inputs.min_replicas, inputs.max_replicas.max(inputs.min_replicas));
    (needed, bounded)
}

fn exclusion(
    inputs: &Inputs,
    memory: Option<String>,
    quality_loss: f64,
    perf: &Performance,
    needed: i32,
) -> Option<Exclusion> {
    let itl_limit = inputs.itl_slo.map(|d| d.as_secs_f64());
    if let Some(reason) = memory {
        Some(Exclusion::Memory(reason))
    } else if !inputs.pinned && quality_loss > inputs.max_quality_loss + 1e-12 {
        Some(Exclusion::Quality(format!(
            "quality loss {} exceeds the budget {}",
            pct(quality_loss),
            pct(inputs.max_quality_loss)
        )))
    } else if let Some(limit) = itl_limit.filter(|l| perf.itl_alone > *l) {
        Some(Exclusion::Latency(format!(
            "inter-token latency {} even alone exceeds the SLO {}",
            ms(perf.itl_alone),
            ms(limit)
        )))
    } else if let Some(limit) = inputs
        .ttft_slo
        .map(|d| d.as_secs_f64())
        .filter(|l| perf.ttft > *l)
    {
        Some(Exclusion::Latency(format!(
            "time to first token {} exceeds the SLO {}",
            ms(perf.ttft),
            ms(limit)
        )))
    } else if !inputs.external && needed > inputs.max_replicas {
        Some(Exclusion::Capacity {
            reason: format!(
                "needs {needed} replicas of {:.1} tok/s for {:.1} tok/s, maxReplicas is {}",
                perf.capacity,
                inputs.demand.unwrap_or_default(),
                inputs.max_replicas
            ),
            capacity: f64::from(inputs.max_replicas) * perf.capacity,
        })
    } else {
        None
    }
}

fn evaluate(
    inputs: &Inputs,
    class: &Class,
    level: QuantLevel,
    quality_loss: f64,
    correction: Correction,
    unavailable: Option<String>,
) -> Candidate {
    let variant = Variant {
        level,
        hardware_class: class.name.clone(),
    };
    let sizing = sizing(inputs, level);
    let perf = performance(
        inputs,
        &Roofline::new(inputs, class, &sizing, correction.slowdown),
        &sizing,
    );
    let (needed, replicas) = replicas(inputs, perf.capacity);
    let cost_per_hour = f64::from(replicas) * class.cost_per_hour;
    // Without a demand (or none at all measured), a token's price is quoted at the planned load:
    // an idle replica would otherwise look free.
    let rate = match inputs.demand {
        Some(d) if d > 0.0 => d.min(f64::from(replicas) * perf.capacity),
        _ => f64::from(replicas) * perf.capacity * TARGET_UTILISATION,
    };
    let cost_per_million = if rate > 0.0 {
        cost_per_hour / (rate * 3600.0) * 1e6
    } else {
        0.0
    };
    let excluded = match unavailable {
        Some(why) => Some(Exclusion::Unavailable(why)),
        None => exclusion(inputs, memory_check(class, &sizing), quality_loss, &perf, needed),
    };
    Candidate {
        variant,
        estimate: Estimate {
            memory_bytes: sizing.memory.round() as i64,
            quality_loss: round(quality_loss, 4),
            tokens_per_second: round(perf.capacity, 2),
            inter_token_latency_ms: round(perf.itl * 1e3, 2),
            time_to_first_token_ms: round(perf.ttft * 1e3, 2),
            step_tokens: perf.step_tokens,
        },
        replicas,
        cost_per_hour,
        cost_per_million,
        replica_cost_per_hour: class.cost_per_hour,
        cost_per_million_at_capacity: class.cost_per_hour / (perf.capacity * TARGET_UTILISATION * 3600.0)
            * 1e6,
        correction,
        excluded,
    }
}

fn lost_to(loser: &Candidate, winner: &Candidate) -> String {
    if loser.cost_per_hour < winner.cost_per_hour - 1e-9
        || (loser.cost_per_hour <= winner.cost_per_hour + 1e-9
            && loser.cost_per_million < winner.cost_per_million - 1e-9)
    {
        format!(
            "cheaper (${:.4}/h, ${:.4} per 1M tokens, against ${:.4}/h, ${:.4}), but the serving variant \
             stays until the saving has held for the switch window",
            loser.cost_per_hour, loser.cost_per_million, winner.cost_per_hour, winner.cost_per_million
        )
    } else if loser.cost_per_hour > winner.cost_per_hour + 1e-9 {
        format!(
            "costs ${:.4}/h ({} × ${:.4}) against ${:.4}/h",
            loser.cost_per_hour,
            loser.replicas,
            loser.cost_per_hour / f64::from(loser.replicas.max(1)),
            winner.cost_per_hour
        )
    } else if loser.cost_per_million > winner.cost_per_million + 1e-9 {
        format!(
            "same cost per hour, but ${:.4} per 1M tokens against ${:.4} ({:.1} against {:.1} tok/s per replica)",
            loser.cost_per_million,
            winner.cost_per_million,
            loser.estimate.tokens_per_second,
            winner.estimate.tokens_per_second
        )
    } else if loser.replica_cost_per_hour > winner.replica_cost_per_hour + 1e-9 {
        format!(
            "same cost now, but a replica costs ${:.4}/h against ${:.4}/h",
            loser.replica_cost_per_hour, winner.replica_cost_per_hour
        )
    } else if loser.cost_per_million_at_capacity > winner.cost_per_million_at_capacity + 1e-9 {
        format!(
            "same cost now, but ${:.4} per 1M tokens at capacity against ${:.4} ({:.1} against {:.1} tok/s per replica)",
            loser.cost_per_million_at_capacity,
            winner.cost_per_million_at_capacity,
            loser.estimate.tokens_per_second,
            winner.estimate.tokens_per_second
        )
    } else {
        format!(
            "same cost, quality loss {} against {}",
            pct(loser.estimate.quality_loss),
            pct(winner.estimate.quality_loss)
        )
    }
}

fn explain(inputs: &Inputs, chosen: &Candidate, overloaded: bool) -> String {
    let e = &chosen.estimate;
    let head = if overloaded {
        format!(
            "no variant carries {:.1} tok/s within maxReplicas {}; {} has the most capacity",
            inputs.demand.unwrap_or_default(),
            inputs.max_replicas,
            chosen.variant
        )
    } else {
        format!("{} is the cheapest feasible variant", chosen.variant)
    };
    let replicas = match (inputs.external, inputs.demand) {
        (true, _) => "replicas set externally".to_owned(),
        (false, Some(d)) => format!(
            "{d:.1} tok/s of demand at {:.0}% utilisation",
            TARGET_UTILISATION * 100.0
        ),
        (false, None) => "no demand given, so one replica to start".to_owned(),
    };
    format!(
        "{head}: {} replica(s) × ${:.4}/h ({replicas}); est. {:.1} tok/s per replica, ITL {:.1} ms, TTFT {:.1} ms, \
         quality loss {}{}, memory {}; {}; {}",
        chosen.replicas,
        chosen.cost_per_hour / f64::from(chosen.replicas.max(1)),
        e.tokens_per_second,
        e.inter_token_latency_ms,
        e.time_to_first_token_ms,
        pct(e.quality_loss),
        if inputs.pinned { " (pinned)" } else { "" },
        gib(e.memory_bytes as f64),
        chosen.correction.describe(),
        inputs.parameters_basis,
    )
}

/// `x` rounded to `decimals` decimal places (status figures stay stable across reconciles).
pub(crate) fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

fn gib(bytes: f64) -> String {
    format!("{:.2}GiB", bytes / (1024.0 * 1024.0 * 1024.0))
}

fn ms(seconds: f64) -> String {
    format!("{:.1}ms", seconds * 1e3)
}

fn pct(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

#[cfg(test)]
pub(crate) mod tests;
