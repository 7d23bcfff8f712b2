//! The InferenceService controller: for each object, validate → decide → build → apply →
//! status. Permanent errors set `Ready=False` with a reason and an Event, then wait for a change;
//! transient ones retry with per-object exponential backoff.

pub mod apply;
pub mod scale_down;
pub mod status;
pub mod triggers;
pub mod validate;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bitscale_api::v1alpha1::{Decision, HardwareClass, InferenceService};
use futures::StreamExt;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector,
        reflector::ObjectRef,
        watcher,
    },
};

use crate::{
    build::{self, BuildInput, ENGINE_PORT, EngineImages, selector_string, variant_label, variant_selector},
    decision,
    error::{Error, Result},
    metrics::Metrics,
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
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    client: Client,
    config: Config,
    metrics: Metrics,
    recorder: Recorder,
    classes: reflector::Store<HardwareClass>,
    children: apply::Children,
    ledger: Arc<apply::Ledger>,
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
    let isvcs: Api<DeserializeGuard<InferenceService>> = namespaced(&client, &config);
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
    let reporter = Reporter {
        controller: "bitscale-operator".into(),
        instance: config.instance.clone(),
    };
    // Children: one watch per kind, filtered to the labels the operator puts on them, feeding
    // both the caches the reconciler reads and the triggers that start it.
    let managed = || watcher::Config::default().labels("app.kubernetes.io/managed-by=bitscale-operator");
    let ledger = Arc::new(apply::Ledger::default());
    let (deployments, deployment_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let (pdbs, pdb_writer) = reflector::store();
    let deployment_changes = triggers::changes(
        namespaced::<Deployment>(&client, &config),
        managed(),
        deployment_writer,
        triggers::deployment,
        forget(&ledger),
    );
    let service_changes = triggers::changes(
        namespaced::<Service>(&client, &config),
        managed(),
        service_writer,
        triggers::service,
        forget(&ledger),
    );
    let pdb_changes = triggers::changes(
        namespaced::<PodDisruptionBudget>(&client, &config),
        managed(),
        pdb_writer,
        triggers::pod_disruption_budget,
        forget(&ledger),
    );
    let (isvc_cache, isvc_writer) = reflector::store();
    let isvc_changes = triggers::changes(
        isvcs,
        watcher::Config::default(),
        isvc_writer,
        triggers::inference_service,
        |_: &_| {},
    );
    let ctx = Arc::new(Context {
        classes,
        children: apply::Children {
            deployments,
            services,
            pdbs,
        },
        ledger,
        recorder: Recorder::new(client.clone(), reporter),
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
        .owns_stream(deployment_changes)
        .owns_stream(service_changes)
        .owns_stream(pdb_changes)
        .reconcile_all_on(class_changes)
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
                EventType::Warning,
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
    let client = &ctx.client;
    ctx.classes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheUnavailable("HardwareClass"))?;
    let classes: Vec<HardwareClass> = ctx.classes.state().iter().map(|c| (**c).clone()).collect();
    let valid = validate::validate(isvc, &classes)?;
    let outcome = decision::decide(&valid.inputs)?;
    let mut decided = outcome.decision;
    let target = variant_label(&decided.variant);
    let class = valid
        .classes
        .get(&decided.variant.hardware_class)
        .ok_or_else(|| Error::UnknownHardwareClass(vec![decided.variant.hardware_class.clone()]))?;

    // Blue/green: the Service keeps selecting the variant it serves until the decided one is
    // available, and only then moves; the old Deployment goes after the move.
    // Read from the watch caches: waiting for them matters at start-up, when an empty cache
    // would show no Service and move traffic to a variant that is not ready.
    ctx.children.ready().await?;
    let existing = ctx.children.variant_deployments(&valid.owner);
    let current = ctx.children.serving_variant(&valid.owner);
    let target_ready_before = existing
        .iter()
        .find(|(v, _)| v == &target)
        .map(|(_, d)| status::Observed::from_deployment(d, target.clone(), true).ready())
        .unwrap_or(false);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (scale_down_since, requeue) = hold_scale_down(isvc, &valid, &mut decided, &now);
    let old_still_there = |v: &String| existing.iter().any(|(e, _)| e == v);
    let serving = match current {
        Some(v) if v != target && old_still_there(&v) && !target_ready_before && decided.replicas > 0 => v,
        _ => target.clone(),
    };

    let input = BuildInput {
        owner: &valid.owner,
        model: &isvc.spec.model,
        engine: &isvc.spec.engine,
        class,
        decision: &decided,
        images: &ctx.config.images,
        itl_target: valid.inputs.itl_slo,
    };
    let desired = build::desired(&input, &serving);
    let applied = apply::apply(client, &ctx.children, &ctx.ledger, &valid.owner, &desired).await?;
    ctx.metrics.children_written(applied.writes);
    let switched = serving == target;
    let observed = status::Observed::from_deployment(&applied.deployment, serving.clone(), switched);
    if switched && (observed.ready() || decided.replicas == 0) {
        apply::delete_other_variants(client, &valid.owner, &existing, &target).await?;
    }

    let selector = selector_string(&variant_selector(&valid.owner.name, &serving));
    let endpoint = format!(
        "http://{}.{}.svc:{ENGINE_PORT}",
        valid.owner.name, valid.owner.namespace
    );
    let mut new_status = status::healthy(
        isvc.status.as_ref(),
        valid.generation,
        &decided,
        &observed,
        selector,
        endpoint,
        outcome.overloaded,
        &now,
    );
    new_status.scale_down_since = scale_down_since;
    if isvc.status.as_ref() != Some(&new_status) {
        let previous = isvc
            .status
            .as_ref()
            .and_then(|s| s.decision.as_ref())
            .map(|d| d.variant.clone());
        if previous.as_ref() != Some(&decided.variant) {
            publish(
                ctx,
                &isvc.object_ref(&()),
                EventType::Normal,
                "Decided",
                &decided.reason,
            )
            .await;
        }
        apply::apply_status(client, &valid.owner, &new_status).await?;
    }
    tracing::debug!(?observed, writes = applied.writes, "reconciled");
    // Progress of the children arrives as watch events (see `triggers`); the periodic resync is
    // only a safety net, so a variant still rolling out needs no shorter timer. A held
    // scale-down is the one thing that changes with time alone.
    Ok(Action::requeue(
        requeue.map_or(ctx.config.resync, |r| r.min(ctx.config.resync)),
    ))
}

/// Applies `spec.scaling.scaleDownDelay` to `decided` (see `scale_down`): while it holds, the
/// decision keeps the replica count the operator last set for that variant (from
/// `status.decision`, so a hand edit of the Deployment is not mistaken for it), says so in its
/// reason, and costs what runs. Returns the `status.scaleDownSince` to record and when to look
/// again.
fn hold_scale_down(
    isvc: &InferenceService,
    valid: &validate::Validated,
    decided: &mut Decision,
    now: &Time,
) -> (Option<Time>, Option<Duration>) {
    if valid.inputs.external {
        // An external autoscaler owns the count and has its own stabilization window.
        return (None, None);
    }
    let status = isvc.status.as_ref();
    let running = status
        .and_then(|s| s.decision.as_ref())
        .filter(|d| d.variant == decided.variant)
        .map(|d| d.replicas);
    let pending = status.and_then(|s| s.scale_down_since.as_ref());
    match scale_down::scale_down(decided.replicas, running, pending, valid.scale_down_delay, now) {
        scale_down::ScaleDown::Apply => (None, None),
        scale_down::ScaleDown::Hold {
            replicas,
            since,
            until,
        } => {
            let per_replica = decided.cost_per_hour / f64::from(decided.replicas.max(1));
            if decided.replicas > 0 {
                decided.cost_per_million_tokens *= f64::from(replicas) / f64::from(decided.replicas);
                decided.cost_per_hour = per_replica * f64::from(replicas);
            }
            decided.reason = format!(
                "{}; holding the {replicas} running replica(s) until {} (scaleDownDelay), then {}",
                decided.reason, until.0, decided.replicas
            );
            decided.replicas = replicas;
            let wait = until.0.duration_since(now.0);
            // One second past the deadline, so the next reconcile finds it expired.
            let wait = Duration::try_from(wait).unwrap_or_default() + Duration::from_secs(1);
            (Some(since), Some(wait))
        }
    }
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
            EventType::Warning,
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
    }
    Ok(())
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    // Events 1 KiB max; decisions can be longer.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
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
