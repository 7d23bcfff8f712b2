use std::time::Duration;

use bitscale_api::v1alpha1::{Device, QuantLevel};

use super::*;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub(crate) fn cpu() -> Class {
    Class {
        name: "cpu-standard".into(),
        device: Device::Cpu,
        memory_bytes: 8.0 * GIB,
        accelerator_memory_bytes: None,
        bandwidth: 20e9,
        flops: 200e9,
        cost_per_hour: 0.10,
    }
}

pub(crate) fn gpu() -> Class {
    Class {
        name: "gpu-small".into(),
        device: Device::Cuda,
        memory_bytes: 16.0 * GIB,
        accelerator_memory_bytes: Some(24.0 * GIB),
        bandwidth: 300e9,
        flops: 20e12,
        cost_per_hour: 0.90,
    }
}

pub(crate) fn smol() -> Inputs {
    Inputs {
        parameters: 135e6,
        parameters_basis: "135M parameters from spec.model.parameters".into(),
        context_length: 4096,
        max_running: 8,
        levels: QuantLevel::ALL.to_vec(),
        pinned: false,
        max_quality_loss: 0.05,
        ttft_slo: None,
        itl_slo: None,
        demand: None,
        prompt_tokens: 256,
        completion_tokens: 256,
        min_replicas: 1,
        max_replicas: 4,
        external_replicas: None,
        external: false,
        classes: vec![cpu(), gpu()],
    }
}

fn reason_for<'a>(outcome: &'a Outcome, level: QuantLevel, class: &str) -> &'a str {
    &outcome
        .decision
        .alternatives
        .iter()
        .find(|a| a.variant.level == level && a.variant.hardware_class == class)
        .unwrap_or_else(|| panic!("no alternative {level}/{class}"))
        .reason
}

#[test]
fn cheapest_class_wins_and_smaller_levels_break_the_tie_by_throughput() {
    let outcome = decide(&smol(), &Measurements::default()).expect("feasible");
    let d = &outcome.decision;
    assert_eq!(d.variant.hardware_class, "cpu-standard");
    // Same price per hour on the same class, so the fastest level within the budget wins:
    // q4_k (2.8% loss) is smaller than q5_k; q4_0/q4_1 exceed 5%.
    assert_eq!(d.variant.level, QuantLevel::Q4K);
    assert_eq!(d.replicas, 1);
    assert_eq!(d.cost_per_hour, 0.1);
    assert!(!outcome.overloaded);
    assert!(d.reason.contains("cheapest feasible"), "{}", d.reason);
    assert!(d.reason.contains("spec.model.parameters"), "{}", d.reason);
    // Every other candidate is explained.
    assert_eq!(d.alternatives.len(), 2 * QuantLevel::ALL.len() - 1);
    assert!(reason_for(&outcome, QuantLevel::Q4K, "gpu-small").contains("costs $0.9000/h"));
    assert!(reason_for(&outcome, QuantLevel::Q8_0, "cpu-standard").contains("per 1M tokens"));
}

#[test]
fn quality_budget_excludes_low_levels() {
    let outcome = decide(&smol(), &Measurements::default()).expect("feasible");
    for level in [
        QuantLevel::Q2K,
        QuantLevel::Q3K,
        QuantLevel::Q4_0,
        QuantLevel::Q4_1,
    ] {
        let reason = reason_for(&outcome, level, "cpu-standard");
        assert!(reason.contains("exceeds the budget 5.00%"), "{level}: {reason}");
    }

    let strict = Inputs {
        max_quality_loss: 0.001,
        ..smol()
    };
    let outcome = decide(&strict, &Measurements::default()).expect("feasible");
    assert!(outcome.decision.estimate.quality_loss <= 0.001);
    assert_eq!(outcome.decision.variant.level, QuantLevel::Q8_0);
}

#[test]
fn quality_is_measured_against_the_best_allowed_level() {
    // With only 4-bit levels allowed, q4_k is the reference and q4_0 loses ~4.7%: within 5%.
    let inputs = Inputs {
        levels: vec![QuantLevel::Q4K, QuantLevel::Q4_0],
        ..smol()
    };
    let outcome = decide(&inputs, &Measurements::default()).expect("feasible");
    assert!(!reason_for(&outcome, QuantLevel::Q4_0, "cpu-standard").contains("budget"));
}

#[test]
fn pinned_level_ignores_the_quality_budget() {
    let inputs = Inputs {
        levels: vec![QuantLevel::Q2K],
        pinned: true,
        ..smol()
    };
    let outcome = decide(&inputs, &Measurements::default()).expect("feasible");
    assert_eq!(outcome.decision.variant.level, QuantLevel::Q2K);
    assert!(outcome.decision.reason.contains("(pinned)"));
}

#[test]
fn memory_excludes_classes_that_are_too_small() {
    // An 8B model in f16 needs 16 GB of weights: too much for the 8Gi CPU class.
    let inputs = Inputs {
        parameters: 8e9,
        levels: vec![QuantLevel::F16],
        pinned: true,
        ..smol()
    };
    let outcome = decide(&inputs, &Measurements::default()).expect("the GPU fits");
    assert_eq!(outcome.decision.variant.hardware_class, "gpu-small");
    assert!(reason_for(&outcome, QuantLevel::F16, "cpu-standard").contains("of memory, has 8.00GiB"));
}

#[test]
fn nothing_fits_is_an_error_listing_every_candidate() {
    let inputs = Inputs {
        parameters: 400e9,
        levels: vec![QuantLevel::Q4K],
        ..smol()
    };
    let err = decide(&inputs, &Measurements::default()).expect_err("nothing fits");
    assert_eq!(err.alternatives.len(), 2);
    let text = err.to_string();
    assert!(text.contains("q4_k/cpu-standard: needs"), "{text}");
    assert!(text.contains("accelerator memory"), "{text}");
}

#[test]
fn latency_slo_excludes_slow_variants() {
    // 1.7B at q8_0 is ~1.8 GB per token: ~150 ms per step on 12 GB/s effective CPU bandwidth.
    let inputs = Inputs {
        parameters: 1.7e9,
        levels: vec![QuantLevel::Q8_0],
        itl_slo: Some(Duration::from_millis(50)),
        ..smol()
    };
    let outcome = decide(&inputs, &Measurements::default()).expect("the GPU is fast enough");
    assert_eq!(outcome.decision.variant.hardware_class, "gpu-small");
    let reason = reason_for(&outcome, QuantLevel::Q8_0, "cpu-standard");
    assert!(
        reason.contains("inter-token latency") && reason.contains("SLO 50.0ms"),
        "{reason}"
    );

    let ttft = Inputs {
        ttft_slo: Some(Duration::from_millis(1)),
        ..smol()
    };
    let err = decide(&ttft, &Measurements::default()).expect_err("nothing prefills in 1ms");
    assert!(err.to_string().contains("time to first token"), "{err}");
}

#[test]
fn demand_sets_replicas_within_bounds() {
    let base = decide(&smol(), &Measurements::default()).expect("feasible");
    let per_replica = base.decision.estimate.tokens_per_second;

    let two = Inputs {
        demand: Some(per_replica * 1.2),
        ..smol()
    };
    assert_eq!(
        decide(&two, &Measurements::default())
            .expect("feasible")
            .decision
            .replicas,
        2
    );

    let idle = Inputs {
        demand: Some(0.0),
        min_replicas: 0,
        ..smol()
    };
    let outcome = decide(&idle, &Measurements::default()).expect("feasible");
    assert_eq!(outcome.decision.replicas, 0);
    assert_eq!(outcome.decision.cost_per_hour, 0.0);
    // Every candidate is free at zero replicas; the one that will be cheapest once demand
    // arrives is kept, not the highest-quality one.
    assert_eq!(outcome.decision.variant, base.decision.variant);

    let floor = Inputs {
        demand: Some(0.0),
        min_replicas: 2,
        ..smol()
    };
    assert_eq!(
        decide(&floor, &Measurements::default())
            .expect("feasible")
            .decision
            .replicas,
        2
    );
}

#[test]
fn demand_beyond_max_replicas_moves_to_bigger_hardware_or_overloads() {
    let base = decide(&smol(), &Measurements::default()).expect("feasible");
    let per_replica = base.decision.estimate.tokens_per_second;
    // More than 4 CPU replicas can carry, but within one GPU replica's capacity.
    let inputs = Inputs {
        demand: Some(per_replica * 4.0),
        ..smol()
    };
    let outcome = decide(&inputs, &Measurements::default()).expect("feasible");
    assert_eq!(outcome.decision.variant.hardware_class, "gpu-small");
    assert!(!outcome.overloaded);
    assert!(reason_for(&outcome, QuantLevel::Q4K, "cpu-standard").contains("maxReplicas is 4"));

    let huge = Inputs {
        demand: Some(1e9),
        ..smol()
    };
    let outcome = decide(&huge, &Measurements::default()).expect("overloaded is not an error");
    assert!(outcome.overloaded);
    assert_eq!(outcome.decision.replicas, 4);
    assert_eq!(outcome.decision.variant.hardware_class, "gpu-small");
}

#[test]
fn external_owner_keeps_its_replica_count_within_bounds() {
    let inputs = Inputs {
        external: true,
        external_replicas: Some(9),
        demand: Some(1e9),
        ..smol()
    };
    let outcome = decide(&inputs, &Measurements::default()).expect("feasible");
    assert_eq!(outcome.decision.replicas, 4);
    assert!(!outcome.overloaded);
    assert!(outcome.decision.reason.contains("replicas set externally"));
}

#[test]
fn decisions_are_deterministic() {
    assert_eq!(
        decide(&smol(), &Measurements::default()),
        decide(&smol(), &Measurements::default())
    );
}

#[test]
fn calibration_matches_the_measured_engine() {
    // The engine with its prefix cache off (see `priors::efficiency`): 2 vCPU AMD EPYC (28.9 GB/s
    // read bandwidth with 2 threads), 2 threads, q8_0, 33-token prompts, 64 generated tokens.
    // Measured: ITL p50 5.21 ms, TTFT p50 37.8 ms and 171 tok/s at 1 stream; ITL p50 12.45 ms and
    // 473 tok/s at 8 streams. (Estimated: 5.28 ms, 42.4 ms, 170.6 tok/s; 13.0 ms, 453 tok/s.)
    let machine = Class {
        name: "epyc-2vcpu".into(),
        bandwidth: 28.9e9,
        flops: 2.0 * priors::CPU_FLOPS_PER_THREAD,
        ..cpu()
    };
    let run = |streams: i32| {
        let inputs = Inputs {
            levels: vec![QuantLevel::Q8_0],
            pinned: true,
            max_running: streams,
            prompt_tokens: 33,
            completion_tokens: 64,
            classes: vec![machine.clone()],
            ..smol()
        };
        decide(&inputs, &Measurements::default())
            .expect("feasible")
            .decision
            .estimate
    };
    let within = |estimate: f64, measured: f64| (estimate / measured - 1.0).abs() <= 0.2;
    let one = run(1);
    assert!(within(one.inter_token_latency_ms, 5.21), "{one:?}");
    assert!(within(one.tokens_per_second, 171.0), "{one:?}");
    let eight = run(8);
    assert!(within(eight.inter_token_latency_ms, 12.45), "{eight:?}");
    assert!(within(eight.tokens_per_second, 473.0), "{eight:?}");
    assert!(within(one.time_to_first_token_ms, 37.8), "{one:?}");
}

#[test]
fn batching_pays_where_the_device_shares_weight_reads() {
    // The CPU kernels share most weight reads across a step's rows (measured 2.8× at 8 streams);
    // a GPU shares nearly all of them.
    let capacity = |class: Class, max_running: i32| {
        let inputs = Inputs {
            levels: vec![QuantLevel::Q8_0],
            pinned: true,
            max_running,
            classes: vec![class],
            ..smol()
        };
        decide(&inputs, &Measurements::default())
            .expect("feasible")
            .decision
            .estimate
            .tokens_per_second
    };
    let cpu_gain = capacity(cpu(), 8) / capacity(cpu(), 1);
    let gpu_gain = capacity(gpu(), 8) / capacity(gpu(), 1);
    assert!(cpu_gain > 1.5, "cpu batch gain {cpu_gain}");
    assert!(gpu_gain > cpu_gain, "gpu batch gain {gpu_gain} vs cpu {cpu_gain}");
}

#[test]
fn itl_objective_caps_the_tokens_of_a_step_and_chunks_the_prompt() {
    let free = decide(&smol(), &Measurements::default())
        .expect("feasible")
        .decision;
    assert_eq!(
        free.estimate.step_tokens, None,
        "no objective: the engine's default"
    );

    let slo = 0.05;
    let bounded = decide(
        &Inputs {
            itl_slo: Some(Duration::from_secs_f64(slo)),
            ..smol()
        },
        &Measurements::default(),
    )
    .expect("feasible")
    .decision;
    assert_eq!(bounded.variant, free.variant);
    let tokens = bounded
        .estimate
        .step_tokens
        .expect("step tokens under an ITL objective");
    // One token through 135M parameters on 200 GFLOP/s at the CPU's compute efficiency.
    let per_token = 2.0 * 135e6 / (200e9 * efficiency(Device::Cpu).compute);
    assert!(
        f64::from(tokens) * per_token <= slo,
        "{tokens} tokens overrun {slo} s"
    );
    assert!(
        f64::from(tokens + 1) * per_token > slo,
        "{tokens} tokens leave room"
    );
    assert!(
        tokens > smol().max_running,
        "room for a prompt chunk beside every decode"
    );
    // The 256-token prompt now arrives in chunks beside the decodes, so it starts later.
    assert!(bounded.estimate.time_to_first_token_ms > free.estimate.time_to_first_token_ms);
    assert!(bounded.estimate.inter_token_latency_ms <= slo * 1e3);
}

fn profile(level: QuantLevel, class: &str, slowdown: f64, samples: i64) -> Profile {
    Profile {
        variant: Variant {
            level,
            hardware_class: class.into(),
        },
        slowdown,
        samples,
        measured_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
        tokens_per_second: 0.0,
    }
}

fn cpu_only() -> Inputs {
    Inputs {
        classes: vec![cpu()],
        levels: vec![QuantLevel::Q8_0, QuantLevel::F16],
        ..smol()
    }
}

#[test]
fn measured_demand_and_lengths_replace_the_spec_figures() {
    let spec = Inputs {
        demand: Some(10.0),
        ..cpu_only()
    };
    let base = decide(&spec, &Measurements::default()).expect("feasible");
    let per_replica = base.decision.estimate.tokens_per_second;
    let measured = Measurements {
        demand: Some(MeasuredDemand {
            tokens_per_second: per_replica * 2.5,
            prompt_tokens: Some(256.0),
            completion_tokens: Some(256.0),
            basis: "over 1 pod(s) in the last 60s".into(),
        }),
        ..Measurements::default()
    };
    let outcome = decide(&spec, &measured).expect("feasible");
    assert_eq!(base.decision.replicas, 1);
    assert_eq!(outcome.decision.replicas, 4, "{}", outcome.decision.reason);
    assert!(
        outcome.decision.basis.starts_with("demand measured over 1 pod"),
        "{}",
        outcome.decision.basis
    );
    assert!(
        base.decision.basis.starts_with("demand from spec.demand"),
        "{}",
        base.decision.basis
    );
}

#[test]
fn a_measured_slowdown_divides_capacity_and_corrects_the_other_levels_on_the_class() {
    let inputs = Inputs {
        demand: Some(50.0),
        ..cpu_only()
    };
    let prior = decide(&inputs, &Measurements::default()).expect("feasible");
    let slow = Measurements {
        demand: None,
        profiles: vec![profile(prior.decision.variant.level, "cpu-standard", 4.0, 5_000)],
        ..Measurements::default()
    };
    let corrected = decide(&inputs, &slow).expect("feasible");
    let ratio = prior.decision.estimate.tokens_per_second / corrected.decision.estimate.tokens_per_second;
    assert!((ratio - 4.0).abs() < 1e-3, "capacity ratio {ratio}");
    assert!(
        corrected.decision.basis.contains("capacity measured"),
        "{}",
        corrected.decision.basis
    );
    // A level never served on this class takes the class's measured slowdown.
    let other = QuantLevel::F16;
    let estimated = Correction::for_candidate(&slow, &inputs.classes, &cpu(), other);
    assert_eq!(estimated.slowdown, 4.0);
    assert!(
        estimated.describe().contains("estimated"),
        "{}",
        estimated.describe()
    );
    // The GPU is another device: the CPU's measurements say nothing about it.
    let gpu_correction = Correction::for_candidate(&slow, &[cpu(), gpu()], &gpu(), QuantLevel::Q8_0);
    assert_eq!(gpu_correction.basis, CorrectionBasis::Prior);
}

#[test]
fn the_slowdown_of_a_step_as_predicted_is_one() {
    let inputs = cpu_only();
    let class = cpu();
    let sizing = sizing(&inputs, QuantLevel::Q8_0);
    let roofline = Roofline::new(&inputs, &class, &sizing, 1.0);
    let predicted = roofline.step(4.0, 20.0);
    assert!((slowdown(&inputs, &class, QuantLevel::Q8_0, 4.0, 20.0, predicted) - 1.0).abs() < 1e-9);
    assert!((slowdown(&inputs, &class, QuantLevel::Q8_0, 4.0, 20.0, predicted * 3.0) - 3.0).abs() < 1e-9);
}

#[test]
fn the_incumbent_is_kept_while_feasible_and_dropped_when_not() {
    let inputs = cpu_only();
    let best = decide(&inputs, &Measurements::default()).expect("feasible");
    let other = Variant {
        level: QuantLevel::F16,
        hardware_class: "cpu-standard".into(),
    };
    assert_ne!(best.decision.variant, other);
    let kept = decide_keeping(&inputs, &Measurements::default(), Some(&other)).expect("feasible");
    assert_eq!(kept.decision.variant, other);
    let winner = kept
        .decision
        .alternatives
        .iter()
        .find(|a| a.variant == best.decision.variant)
        .expect("the winner is listed");
    assert!(winner.reason.starts_with("cheaper"), "{}", winner.reason);
    // Over the quality budget, the incumbent goes.
    let q2 = Variant {
        level: QuantLevel::Q2K,
        hardware_class: "cpu-standard".into(),
    };
    let all = smol();
    let moved = decide_keeping(&all, &Measurements::default(), Some(&q2)).expect("feasible");
    assert_ne!(moved.decision.variant, q2);
}

/// SmolLM2's measured losses (engine/QUALITY.md, against its Q4_1 source) refuse q5_k and q4_k
/// under a 5 % budget that the prior table lets q4_k through.
#[test]
fn measured_quality_replaces_the_prior_and_refuses_what_it_exceeds() {
    let inputs = Inputs {
        levels: vec![
            QuantLevel::Q8_0,
            QuantLevel::Q6K,
            QuantLevel::Q5K,
            QuantLevel::Q4K,
            QuantLevel::Q4_1,
        ],
        classes: vec![cpu()],
        ..smol()
    };
    let prior = decide(&inputs, &Measurements::default()).expect("feasible");
    assert!(
        !reason_for(&prior, QuantLevel::Q4_1, "cpu-standard").is_empty()
            && prior.decision.variant.level != QuantLevel::Q4_1,
        "the prior refuses q4_1 at 7.2 %: {}",
        prior.decision.reason
    );
    let measured = Measurements {
        quality: Some(MeasuredQuality {
            losses: [
                (QuantLevel::Q4_1, 0.0),
                (QuantLevel::Q8_0, 0.006),
                (QuantLevel::Q6K, 0.0139),
                (QuantLevel::Q5K, 0.129),
                (QuantLevel::Q4K, 0.0766),
            ]
            .into(),
            basis: "quality loss measured by Job smol-quality-1".into(),
        }),
        ..Measurements::default()
    };
    let outcome = decide(&inputs, &measured).expect("feasible");
    for level in [QuantLevel::Q5K, QuantLevel::Q4K] {
        let reason = reason_for(&outcome, level, "cpu-standard");
        assert!(reason.contains("exceeds the budget 5.00%"), "{level}: {reason}");
    }
    assert!(reason_for(&outcome, QuantLevel::Q4K, "cpu-standard").contains("7.66%"));
    assert!(
        outcome.decision.basis.contains("measured by Job smol-quality-1"),
        "{}",
        outcome.decision.basis
    );
    assert!(matches!(
        outcome.decision.variant.level,
        QuantLevel::Q4_1 | QuantLevel::Q6K | QuantLevel::Q8_0
    ));
}

/// The serving pods' own measurement confirms the profile, and where it is worse it counts: a
/// level the profile let through but its pods measure over the budget is refused.
#[test]
fn the_serving_pods_quality_confirms_the_profile_or_refuses_the_level() {
    let inputs = Inputs {
        levels: vec![QuantLevel::Q8_0, QuantLevel::Q6K],
        classes: vec![cpu()],
        ..smol()
    };
    let profiled = Measurements {
        quality: Some(MeasuredQuality {
            losses: [(QuantLevel::Q8_0, 0.006), (QuantLevel::Q6K, 0.0139)].into(),
            basis: "quality loss measured by Job smol-quality-1".into(),
        }),
        ..Measurements::default()
    };
    let first = decide(&inputs, &profiled).expect("feasible");
    let served = first.decision.variant.level;
    let confirmed = Measurements {
        served_quality: [(served, profiled.quality_loss(served))].into(),
        ..profiled.clone()
    };
    let again = decide(&inputs, &confirmed).expect("feasible");
    assert_eq!(again.decision.variant, first.decision.variant);
    assert!(
        again.decision.basis.contains("confirmed by its pods"),
        "{}",
        again.decision.basis
    );

    let worse = Measurements {
        served_quality: [(served, 0.09)].into(),
        ..profiled
    };
    let moved = decide(&inputs, &worse).expect("feasible");
    assert_ne!(moved.decision.variant.level, served, "{}", moved.decision.reason);
    let reason = reason_for(&moved, served, "cpu-standard");
    assert!(reason.contains("exceeds the budget"), "{reason}");
}
