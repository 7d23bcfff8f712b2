//! Quality: the measured loss per level of an InferenceService's model, from a profiling Job
//! started once per model source (see `build::quality_job`). The step is pure; `run` creates
//! the Job and reads its pod's termination message once it has finished.

use bitscale_api::v1alpha1::{Decision, InferenceService, QualityMeasurement, QuantLevel};
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};

use crate::{
    build::{EngineImages, FIELD_MANAGER, QUALITY_CONTAINER, parse_report, quality_job, quality_job_name},
    decision::{
        Inputs, MeasuredQuality,
        priors::{OVERHEAD_BYTES, SCRATCH_FRACTION},
    },
    error::Result,
};

use super::validate::Validated;

/// What to do about the quality measurement this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The recorded measurement stands (or none is needed): keep it.
    Keep(Option<QualityMeasurement>),
    /// No Job for this source exists yet: start it.
    Start,
    /// The Job runs.
    Wait,
    /// The Job finished (`succeeded` or not): read what it reported.
    Read {
        /// Whether it succeeded.
        succeeded: bool,
    },
}

/// Decides the step from the recorded measurement and the Job in the cache, if any.
pub fn step(isvc: &InferenceService, valid: &Validated, enabled: bool, job: Option<&Job>) -> Step {
    let recorded = isvc.status.as_ref().and_then(|s| s.quality.clone());
    let source = &isvc.spec.model.source;
    // A pinned level weighs no quality. A measurement (or a failure) of this source stands while
    // the allowed levels are those it was asked for: its Job's name says which.
    let name = quality_job_name(&valid.owner.name, source, &valid.inputs.levels);
    let current = recorded.filter(|q| &q.source == source);
    if !enabled || valid.inputs.pinned || current.as_ref().is_some_and(|q| q.job == name) {
        return Step::Keep(current);
    }
    let Some(status) = job.and_then(|j| j.status.as_ref()) else {
        return if job.is_some() { Step::Wait } else { Step::Start };
    };
    let finished = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    if finished("Complete") {
        Step::Read { succeeded: true }
    } else if finished("Failed") {
        Step::Read { succeeded: false }
    } else {
        Step::Wait
    }
}

/// Whether the pods of `decision` measure their level's quality loss at start, to confirm the
/// profile: once the profile names the source's own precision (the reference), when that
/// reference fits beside the served weights in a replica's memory while it is measured (it is
/// dropped before the KV cache is allocated). At the reference level itself the loss is zero
/// and nothing more is loaded.
pub fn confirm(inputs: &Inputs, decision: &Decision, quality: Option<&QualityMeasurement>) -> bool {
    let Some(reference) = quality
        .filter(|q| q.failure.is_none())
        .and_then(|q| q.reference.as_deref()?.parse::<QuantLevel>().ok())
    else {
        return false;
    };
    let level = decision.variant.level;
    if reference == level {
        return true;
    }
    let Some(class) = inputs
        .classes
        .iter()
        .find(|c| c.name == decision.variant.hardware_class)
    else {
        return false;
    };
    let memory = class.accelerator_memory_bytes.unwrap_or(class.memory_bytes);
    let weights = |l: QuantLevel| inputs.parameters * l.bits_per_weight() / 8.0;
    (weights(level) + weights(reference)) * (1.0 + SCRATCH_FRACTION) + OVERHEAD_BYTES <= memory
}

/// What the decision takes from a measurement.
pub fn measured(quality: Option<&QualityMeasurement>) -> Option<MeasuredQuality> {
    let q = quality.filter(|q| q.failure.is_none() && !q.levels.is_empty())?;
    Some(MeasuredQuality {
        losses: q.levels.iter().map(|l| (l.level, l.ppl_increase)).collect(),
        basis: format!(
            "quality loss measured by Job {} on {} tokens against {}",
            q.job,
            q.tokens,
            q.reference.as_deref().unwrap_or("the source")
        ),
    })
}

/// Carries out `step`: starts the Job, or reads its result. Returns the measurement to record.
pub async fn run(
    client: &Client,
    isvc: &InferenceService,
    valid: &Validated,
    images: &EngineImages,
    step: Step,
) -> Result<Option<QualityMeasurement>> {
    let source = &isvc.spec.model.source;
    let name = quality_job_name(&valid.owner.name, source, &valid.inputs.levels);
    let earlier = isvc
        .status
        .as_ref()
        .and_then(|s| s.quality.clone())
        .filter(|q| &q.source == source && q.failure.is_none());
    let jobs: Api<Job> = Api::namespaced(client.clone(), &valid.owner.namespace);
    match step {
        Step::Keep(kept) => Ok(kept),
        // While a Job measures a new set of levels, the figures of the last set stand for the
        // levels they cover; the others keep their priors.
        Step::Wait => Ok(earlier),
        Step::Start => {
            // eval runs on the CPU: the cheapest CPU class, else any.
            let class = valid
                .classes
                .values()
                .filter(|c| c.spec.device == bitscale_api::v1alpha1::Device::Cpu)
                .min_by(|a, b| a.spec.cost_per_hour.total_cmp(&b.spec.cost_per_hour))
                .or_else(|| valid.classes.values().next());
            if let Some(class) = class {
                let job = quality_job(
                    &valid.owner,
                    &isvc.spec.model,
                    isvc.spec.engine.image.as_deref(),
                    images,
                    class,
                    &valid.inputs.levels,
                );
                tracing::info!(job = name, "starting the quality-profiling Job");
                jobs.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&job),
                )
                .await?;
            }
            Ok(earlier)
        }
        Step::Read { succeeded } => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &valid.owner.namespace);
            let list = pods
                .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
                .await?;
            let message = list.items.iter().find_map(termination_message);
            let finished_at = jobs.get_opt(&name).await?.and_then(|j| j.status?.completion_time);
            let mut measurement = QualityMeasurement {
                source: source.clone(),
                job: name,
                finished_at,
                reference: None,
                tokens: 0,
                levels: Vec::new(),
                failure: None,
            };
            match (succeeded, message.as_deref().map(parse_report)) {
                (true, Some(Ok((report, levels)))) => {
                    measurement.reference = Some(report.reference);
                    measurement.tokens = report.tokens;
                    measurement.levels = levels;
                }
                (_, Some(Err(why))) => measurement.failure = Some(why),
                (_, Some(Ok(_))) | (_, None) => {
                    measurement.failure = Some(format!(
                        "the eval Job {} without a report",
                        if succeeded { "succeeded" } else { "failed" }
                    ));
                }
            }
            Ok(Some(measurement))
        }
    }
}

fn termination_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == QUALITY_CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .clone()
}

#[cfg(test)]
mod tests {
    use bitscale_api::v1alpha1::{InferenceServiceStatus, LevelQuality, QuantLevel};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    use super::*;
    use crate::{
        build::fixtures::{cpu_class, smol},
        controller::validate::validate,
    };

    fn finished(type_: &str) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: type_.into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn measurement(source: &str) -> QualityMeasurement {
        QualityMeasurement {
            source: source.into(),
            job: "chat-quality-1".into(),
            finished_at: None,
            reference: Some("q4_1".into()),
            tokens: 255,
            levels: vec![LevelQuality {
                level: QuantLevel::Q4K,
                ppl_increase: 0.0766,
                kl_mean: 0.06,
            }],
            failure: None,
        }
    }

    #[test]
    fn a_job_starts_once_per_source_and_is_read_when_it_finishes() {
        let isvc = smol();
        let valid = validate(&isvc, &[cpu_class()]).expect("valid");
        assert_eq!(step(&isvc, &valid, true, None), Step::Start);
        assert_eq!(step(&isvc, &valid, true, Some(&Job::default())), Step::Wait);
        assert_eq!(
            step(&isvc, &valid, true, Some(&finished("Complete"))),
            Step::Read { succeeded: true }
        );
        assert_eq!(
            step(&isvc, &valid, true, Some(&finished("Failed"))),
            Step::Read { succeeded: false }
        );
        assert_eq!(step(&isvc, &valid, false, None), Step::Keep(None));

        let recorded = QualityMeasurement {
            job: quality_job_name(&valid.owner.name, &isvc.spec.model.source, &valid.inputs.levels),
            ..measurement(&isvc.spec.model.source)
        };
        let mut measured = isvc.clone();
        measured.status = Some(InferenceServiceStatus {
            quality: Some(recorded.clone()),
            ..Default::default()
        });
        assert_eq!(step(&measured, &valid, true, None), Step::Keep(Some(recorded)));
        // A new source is measured again.
        let mut moved = measured.clone();
        moved.spec.model.source = "file:///models/other.gguf".into();
        assert_eq!(step(&moved, &valid, true, None), Step::Start);
        // So is a new set of allowed levels: the measurement was asked for other ones.
        let mut fewer = valid.clone();
        fewer.inputs.levels.truncate(1);
        assert_eq!(step(&measured, &fewer, true, None), Step::Start);
    }

    #[test]
    fn only_a_successful_measurement_reaches_the_decision() {
        let ok = measurement("s");
        let q = measured(Some(&ok)).expect("measured");
        assert_eq!(q.losses[&QuantLevel::Q4K], 0.0766);
        assert!(
            q.basis.contains("chat-quality-1") && q.basis.contains("q4_1"),
            "{}",
            q.basis
        );
        let failed = QualityMeasurement {
            failure: Some("out of memory".into()),
            ..ok
        };
        assert_eq!(measured(Some(&failed)), None);
    }

    #[test]
    fn pods_confirm_the_level_once_profiled_and_only_when_the_reference_fits() {
        let isvc = smol();
        let valid = validate(&isvc, &[cpu_class()]).expect("valid");
        let q8 = crate::build::fixtures::decision(QuantLevel::Q8_0, "cpu-standard", 1);
        let profiled = measurement("s");
        assert!(
            !confirm(&valid.inputs, &q8, None),
            "nothing to confirm before the profile"
        );
        assert!(
            confirm(&valid.inputs, &q8, Some(&profiled)),
            "135M at q8_0 beside q4_1 fits 8Gi"
        );
        let failed = QualityMeasurement {
            failure: Some("crashed".into()),
            ..profiled.clone()
        };
        assert!(!confirm(&valid.inputs, &q8, Some(&failed)));

        // 7B at f16 beside an f16 reference does not fit 8Gi; at the reference level itself
        // nothing more is loaded.
        let mut big = valid.clone();
        big.inputs.parameters = 7e9;
        let f16_source = QualityMeasurement {
            reference: Some("f16".into()),
            ..profiled
        };
        assert!(!confirm(&big.inputs, &q8, Some(&f16_source)));
        let f16 = crate::build::fixtures::decision(QuantLevel::F16, "cpu-standard", 1);
        assert!(confirm(&big.inputs, &f16, Some(&f16_source)));
    }
}
