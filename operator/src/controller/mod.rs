//! The InferenceService controller: for each object, validate → decide → build → apply →
//! status. Permanent errors set `Ready=False` with a reason and an Event, then wait for a change;
//! transient ones retry with per-object exponential backoff.

pub mod apply;
pub mod children;
pub mod events;
pub mod measure;
pub mod pending;
pub mod plan;
pub mod quality;
pub mod scale_down;
pub mod settle;
pub mod stability;
pub mod status;
pub mod triggers;
pub mod validate;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bitscale_api::v1alpha1::{Decision, HardwareClass, InferenceService};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{
    api::{apps::v1::Deployment, batch::v1::Job, core::v1::Service, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, WatchStreamExt, controller::Action, reflector, reflector::ObjectRef, watcher},
};

use crate::{
    build::{
        self, BuildInput, ENGINE_PORT, EngineImages, LABEL_MANAGED_BY, MANAGED_BY, selector_string,
        variant_label, variant_selector,
    },
    controller::children::Child,
    error::{Error, Result},
    metrics::Metrics,
    observe,
};

/// Default bound on reconciles in flight. The reconciles wait on the API server, not on this
/// process; more in flight only adds connections and memory (scale-bench in BENCHMARKS.md: 1,000 at
/// once held ~840 connections and 186 MiB while making the API server slower for everyone).
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Default quiet time before a reconcile starts: a new object's children report status several
/// times within a second (Deployment, PDB, the status write itself), and one reconcile after the
/// burst does the work of all of them.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Default engine images.
    pub images: EngineImages,
    /// Watch one namespace only; `None` watches all.
    pub namespace: Option<String>,
    /// Identity in Events (`reportingInstance`), such as the pod name.
    pub instance: Option<String>,
    /// Periodic re-check of each object.
    pub resync: Duration,
    /// Most reconciles running at once (0: unbounded). Each runs a few API calls; the bound keeps
    /// a burst of changes from opening one connection per object.
    pub concurrency: u16,
    /// Quiet time after a trigger before the reconcile starts; later triggers restart it.
    pub debounce: Duration,
    /// Where to read measurements; `None` decides from `spec.demand` and priors alone.
    pub observe: Option<observe::Config>,
    /// When a cheaper variant replaces the serving one.
    pub switch: stability::Policy,
    /// Measure each model's quality per level with a profiling Job (once per model source).
    pub profile_quality: bool,
    /// How long a variant's pods may stay unschedulable before it is set aside.
    pub pending_timeout: Duration,
    /// How long a set-aside variant stays out of the decision.
    pub cool_off: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Self {
            images: EngineImages {
                cpu: format!("ghcr.io/bitscale-dev/bitscale-engine:{version}"),
                cuda: format!("ghcr.io/bitscale-dev/bitscale-engine:{version}-cuda"),
            },
            namespace: None,
            instance: None,
            resync: Duration::from_secs(300),
            concurrency: DEFAULT_CONCURRENCY,
            debounce: DEFAULT_DEBOUNCE,
            observe: None,
            switch: stability::Policy::default(),
            profile_quality: false,
            pending_timeout: pending::DEFAULT_TIMEOUT,
            cool_off: pending::DEFAULT_COOL_OFF,
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    client: Client,
    config: Config,
    metrics: Metrics,
    recorder: events::Recorder,
    classes: reflector::Store<HardwareClass>,
    children: children::Children,
    ledger: Arc<apply::Ledger>,
    observations: observe::Observations,
    failures: Mutex<HashMap<ObjectRef<DeserializeGuard<InferenceService>>, u32>>,
}

/// Runs the controller until the future is dropped. Fails at once when the CRDs are not installed.
pub async fn run(client: Client, config: Config, metrics: Metrics) -> anyhow::Result<()> {
    run_until(client, config, metrics, std::future::pending()).await
}

/// Runs the controller until `shutdown` resolves, then lets reconciles in flight finish and
/// returns. Fails at once when the CRDs are not installed.
pub async fn run_until(
    client: Client,
    config: Config,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    crate::crd::check_installed(&client).await?;
    // HardwareClasses are read from a cache every reconcile needs, and any change to one may
    // change any decision.
    let (classes, class_writer) = reflector::store();
    let class_changes = reflector(
        class_writer,
        watcher(
            Api::<HardwareClass>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| futures::future::ready(r.ok().map(|_| ())));
    let ledger = Arc::new(apply::Ledger::default());
    let (children, child_changes) = watch_children(&client, &config, &ledger);
    let (isvc_cache, isvc_writer) = reflector::store();
    let gone = metrics.clone();
    let isvc_changes = triggers::changes(
        namespaced::<DeserializeGuard<InferenceService>>(&client, &config),
        watcher::Config::default(),
        isvc_writer,
        (triggers::inference_service, triggers::keep_all),
        move |isvc: &DeserializeGuard<InferenceService>| {
            gone.forget(&isvc.namespace().unwrap_or_default(), &isvc.name_any());
        },
    );
    let (observations, rounds) = observe_rounds(&config, &metrics)?;
    let ctx = Arc::new(Context {
        classes,
        children,
        ledger,
        observations,
        recorder: events::Recorder::new(client.clone(), "bitscale-operator", config.instance.clone()),
        client,
        config,
        metrics,
        failures: Mutex::default(),
    });
    let controller_config = kube::runtime::controller::Config::default()
        .concurrency(ctx.config.concurrency)
        .debounce(ctx.config.debounce);
    Controller::for_stream(isvc_changes, isvc_cache)
        .with_config(controller_config)
        .owns_stream(child_changes.deployments)
        .owns_stream(child_changes.services)
        .owns_stream(child_changes.pdbs)
        .owns_stream(child_changes.jobs)
        .reconcile_all_on(futures::stream::select(class_changes, rounds.all))
        .reconcile_on(rounds.services)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile failed"),
            }
        })
        .await;
    Ok(())
}

/// A stream of watched objects whose relevant part changed.
type Changes<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The children whose changes start a reconcile of their owner.
struct ChildChanges {
    deployments: Changes<Deployment>,
    services: Changes<Service>,
    pdbs: Changes<PodDisruptionBudget>,
    jobs: Changes<Job>,
}

/// One watch per kind of child, filtered to the labels the operator puts on them, feeding both
/// the caches the reconciler reads and the triggers that start it.
fn watch_children(
    client: &Client,
    config: &Config,
    ledger: &Arc<apply::Ledger>,
) -> (children::Children, ChildChanges) {
    let managed = || watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let (deployments, deployment_writer) = children::index();
    let (services, service_writer) = children::index();
    let (pdbs, pdb_writer) = children::index();
    let (jobs, job_writer) = reflector::store();
    let changes = ChildChanges {
        deployments: triggers::changes(
            namespaced(client, config),
            managed(),
            deployment_writer,
            (triggers::deployment, triggers::keep_all),
            forget(ledger),
        )
        .boxed(),
        services: triggers::changes(
            namespaced(client, config),
            managed(),
            service_writer,
            (triggers::service, triggers::keep_all),
            forget(ledger),
        )
        .boxed(),
        pdbs: triggers::changes(
            namespaced(client, config),
            managed(),
            pdb_writer,
            (triggers::pod_disruption_budget, triggers::keep_all),
            forget(ledger),
        )
        .boxed(),
        jobs: triggers::changes(
            namespaced(client, config),
            managed(),
            job_writer,
            (triggers::job, triggers::trim_job),
            |_: &_| {},
        )
        .boxed(),
    };
    let children = children::Children {
        deployments,
        services,
        pdbs,
        jobs,
    };
    (children, changes)
}

/// The rounds of measurements that start reconciles.
struct RoundTriggers {
    /// Every service: the kind of outcome changed (the first round, Prometheus lost or back).
    all: BoxStream<'static, ()>,
    /// The services whose measurements changed.
    services: BoxStream<'static, observe::ServiceRef>,
}

/// Starts the observer when Prometheus is configured; without it, no round ever comes.
fn observe_rounds(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<(observe::Observations, RoundTriggers)> {
    let Some(observe_config) = &config.observe else {
        let never = RoundTriggers {
            all: futures::stream::pending().boxed(),
            services: futures::stream::pending().boxed(),
        };
        return Ok((observe::Observations::new(observe::Outcome::NotConfigured), never));
    };
    let observations = observe::Observations::new(observe::Outcome::Pending);
    let rounds = observe::spawn(observe_config.clone(), observations.clone(), metrics.clone())?;
    let triggers = RoundTriggers {
        all: rounds.all.boxed(),
        services: rounds.services.boxed(),
    };
    Ok((observations, triggers))
}

/// Removes a deleted child from the ledger.
fn forget<K: Resource<DynamicType = ()>>(ledger: &Arc<apply::Ledger>) -> impl Fn(&K) + Send + 'static {
    let ledger = ledger.clone();
    move |object| ledger.forget(object)
}

/// An Api over the watched namespace, or all of them.
fn namespaced<K>(client: &Client, config: &Config) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[tracing::instrument(skip_all, fields(object = %guard.name_any(), namespace = guard.namespace()))]
async fn reconcile(guard: Arc<DeserializeGuard<InferenceService>>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start();
    let object_ref = ObjectRef::from_obj(guard.as_ref());
    let isvc = match &guard.0 {
        Ok(isvc) => isvc,
        Err(invalid) => {
            let error = Error::InvalidObject(invalid.error.clone());
            ctx.metrics.failure(error.category());
            tracing::warn!(%error, "skipping an object that does not deserialize");
            publish(
                &ctx,
                &guard.object_ref(&()),
                events::Type::Warning,
                error.reason(),
                &error.to_string(),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    match reconcile_valid(isvc, &ctx).await {
        Ok(action) => {
            lock(&ctx.failures).remove(&object_ref);
            Ok(action)
        }
        Err(error) if error.is_permanent() => {
            lock(&ctx.failures).remove(&object_ref);
            ctx.metrics.failure(error.category());
            tracing::warn!(%error, "permanent error; waiting for a change");
            report_permanent(isvc, &ctx, &error).await?;
            Ok(Action::await_change())
        }
        Err(error) => {
            ctx.metrics.failure(error.category());
            Err(error)
        }
    }
}

async fn reconcile_valid(isvc: &InferenceService, ctx: &Context) -> Result<Action> {
    ctx.classes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheUnavailable("HardwareClass"))?;
    let classes: Vec<HardwareClass> = ctx.classes.state().iter().map(|c| (**c).clone()).collect();
    let valid = validate::validate(isvc, &classes)?;
    // Read from the watch caches: waiting for them matters at start-up, when an empty cache
    // would show no Service and move traffic to a variant that is not ready.
    ctx.children.ready().await?;
    let existing = ctx.children.variant_deployments(&valid.owner);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let gathered = gather(ctx, isvc, &valid, &existing, &now).await?;
    let planned = plan::plan(isvc, &valid, &gathered.reading, &now, ctx.config.switch)?;
    let confirm = ctx.config.profile_quality
        && quality::confirm(&valid.inputs, &planned.decision, gathered.quality.as_ref());
    let (observed, serving) = roll_out(ctx, &valid, isvc, (&planned.decision, confirm), &existing).await?;
    let new_status = next_status(isvc, &valid, &planned, &gathered, &observed, &serving, &now);
    ctx.metrics.record_decision(
        &valid.owner.namespace,
        &valid.owner.name,
        &planned,
        new_status.ready_replicas,
        gathered.reading.observed.as_ref(),
    );
    if isvc.status.as_ref() != Some(&new_status) {
        announce(ctx, isvc, &planned.decision).await;
        apply::apply_status(&ctx.client, &valid.owner, &new_status).await?;
        ctx.metrics.status_writes.inc();
    }
    tracing::debug!(?observed, "reconciled");
    // Progress of the children arrives as watch events (see `triggers`), and measurements as
    // the observer's rounds; the periodic resync is only a safety net. Held scale-downs,
    // switches, pending pods and cool-offs change with time alone.
    let cool_off_ends = new_status
        .unavailable
        .iter()
        .filter_map(|u| Duration::try_from(u.until.0.duration_since(now.0)).ok())
        .map(|d| d + Duration::from_secs(1))
        .min();
    let recheck = [planned.recheck, gathered.recheck, cool_off_ends]
        .into_iter()
        .flatten()
        .min();
    Ok(Action::requeue(
        recheck.map_or(ctx.config.resync, |r| r.min(ctx.config.resync)),
    ))
}

/// Everything measured for one InferenceService this reconcile.
struct Gathered {
    reading: measure::Reading,
    quality: Option<bitscale_api::v1alpha1::QualityMeasurement>,
    recheck: Option<Duration>,
}

/// Reads the latest Prometheus round, runs the quality step, and checks for unschedulable pods.
async fn gather(
    ctx: &Context,
    isvc: &InferenceService,
    valid: &validate::Validated,
    existing: &[Child],
    now: &Time,
) -> Result<Gathered> {
    let available: i32 = existing.iter().filter_map(|d| Some(d.rollout?.available)).sum();
    let mut reading = measure::read(
        &ctx.observations.latest(),
        &valid.owner.namespace,
        &valid.owner.name,
        &valid.inputs,
        isvc.status.as_ref(),
        available,
    );
    let job = ctx.children.job(
        &valid.owner,
        &build::quality_job_name(&valid.owner.name, &isvc.spec.model.source, &valid.inputs.levels),
    );
    let step = quality::step(isvc, valid, ctx.config.profile_quality, job.as_ref());
    let quality = quality::run(&ctx.client, isvc, valid, &ctx.config.images, step).await?;
    reading.measurements.quality = quality::measured(quality.as_ref());
    let (unavailable, recheck) = pending::check(ctx, isvc, valid, existing, now).await?;
    reading.measurements.unavailable = unavailable;
    Ok(Gathered {
        reading,
        quality,
        recheck,
    })
}

/// The status to record: the decision, the children's state and what was measured.
fn next_status(
    isvc: &InferenceService,
    valid: &validate::Validated,
    planned: &plan::Plan,
    gathered: &Gathered,
    observed: &status::Observed,
    serving: &str,
    now: &Time,
) -> bitscale_api::v1alpha1::InferenceServiceStatus {
    let mut new_status = status::healthy(
        isvc.status.as_ref(),
        valid.generation,
        &planned.decision,
        observed,
        selector_string(&variant_selector(&valid.owner.name, serving)),
        format!(
            "http://{}.{}.svc:{ENGINE_PORT}",
            valid.owner.name, valid.owner.namespace
        ),
        planned.overloaded,
        now,
    );
    status::record_measurements(&mut new_status, &gathered.reading, valid.generation, now);
    new_status.scale_down_since = planned.scale_down_since.clone();
    new_status.pending_switch = planned.pending_switch.clone();
    new_status.quality = gathered.quality.clone();
    new_status.unavailable = gathered.reading.measurements.unavailable.clone();
    new_status
}

/// Builds and applies the children for `decided`, blue/green: the Service keeps selecting the
/// variant it serves until the decided one is available, and only then moves; the old
/// Deployment goes after the move. Returns what the API server reports and the variant served.
async fn roll_out(
    ctx: &Context,
    valid: &validate::Validated,
    isvc: &InferenceService,
    (decided, measure_quality): (&Decision, bool),
    existing: &[Child],
) -> Result<(status::Observed, String)> {
    let target = variant_label(&decided.variant);
    let class = valid
        .classes
        .get(&decided.variant.hardware_class)
        .ok_or_else(|| Error::UnknownHardwareClass(vec![decided.variant.hardware_class.clone()]))?;
    let current = ctx.children.serving_variant(&valid.owner);
    let target_ready_before = existing
        .iter()
        .find(|d| d.variant.as_ref() == Some(&target))
        .is_some_and(|d| status::Observed::from_deployment(d, target.clone(), true).ready());
    let old_still_there = |v: &String| existing.iter().any(|d| d.variant.as_ref() == Some(v));
    let serving = match current {
        Some(v) if v != target && old_still_there(&v) && !target_ready_before && decided.replicas > 0 => v,
        _ => target.clone(),
    };
    let input = BuildInput {
        owner: &valid.owner,
        model: &isvc.spec.model,
        engine: &isvc.spec.engine,
        class,
        decision: decided,
        images: &ctx.config.images,
        itl_target: valid.inputs.itl_slo,
        measure_quality,
    };
    let desired = build::desired(&input, &serving);
    let applied = apply::apply(&ctx.client, &ctx.children, &ctx.ledger, &valid.owner, &desired).await?;
    ctx.metrics.children_written(applied.writes);
    let switched = serving == target;
    let observed = status::Observed::from_deployment(&applied.deployment, serving.clone(), switched);
    if switched && (observed.ready() || decided.replicas == 0) {
        apply::delete_other_variants(&ctx.client, &valid.owner, existing, &target).await?;
    }
    Ok((observed, serving))
}

/// An Event for a new variant or replica count, with the decision's reason.
async fn announce(ctx: &Context, isvc: &InferenceService, decided: &Decision) {
    let previous = isvc.status.as_ref().and_then(|s| s.decision.as_ref());
    let (reason, note) = match previous {
        Some(p) if p.variant == decided.variant && p.replicas == decided.replicas => return,
        Some(p) if p.variant == decided.variant => (
            "Scaled",
            format!(
                "{} → {} replica(s): {}",
                p.replicas, decided.replicas, decided.reason
            ),
        ),
        _ => ("Decided", decided.reason.clone()),
    };
    ctx.metrics.decision_changed(reason);
    publish(ctx, &isvc.object_ref(&()), events::Type::Normal, reason, &note).await;
}

async fn report_permanent(isvc: &InferenceService, ctx: &Context, error: &Error) -> Result<()> {
    let (Some(name), Some(namespace)) = (isvc.metadata.name.clone(), isvc.metadata.namespace.clone()) else {
        return Ok(());
    };
    let message = error.to_string();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::failed(
        isvc.status.as_ref(),
        isvc.metadata.generation,
        error.reason(),
        &message,
        &now,
    );
    if isvc.status.as_ref() != Some(&new_status) {
        publish(
            ctx,
            &isvc.object_ref(&()),
            events::Type::Warning,
            error.reason(),
            &message,
        )
        .await;
        let owner = build::Owner {
            name,
            namespace,
            reference: isvc
                .controller_owner_ref(&())
                .ok_or(Error::MissingObjectKey("metadata.uid"))?,
        };
        apply::apply_status(&ctx.client, &owner, &new_status).await?;
        ctx.metrics.status_writes.inc();
    }
    Ok(())
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: events::Type,
    reason: &str,
    note: &str,
) {
    if let Err(error) = ctx.recorder.publish(reference, type_, reason, note).await {
        tracing::warn!(%error, "could not publish an Event");
    }
}

fn error_policy(guard: Arc<DeserializeGuard<InferenceService>>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = lock(&ctx.failures);
    let count = failures.entry(ObjectRef::from_obj(guard.as_ref())).or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    tracing::warn!(%error, category = error.category(), retry_in = ?delay, "transient error");
    Action::requeue(delay)
}

/// Exponential backoff: 1 s, 2 s, 4 s, … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock left a counter map; it is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }
}
