//! Watches the benchmark namespace and records when each milestone is reached: N Deployments,
//! N Services, N PodDisruptionBudgets, N statuses written for the current generation, N `Ready`.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bitscale_api::v1alpha1::InferenceService;
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, policy::v1::PodDisruptionBudget};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::task::JoinHandle;

const MILESTONES: [&str; 5] = [
    "deployments",
    "services",
    "pod_disruption_budgets",
    "statuses_written",
    "ready",
];

// Objects seen per milestone, and when each milestone first reached `target`.
#[derive(Default)]
struct State {
    seen: BTreeMap<&'static str, HashSet<String>>,
    reached: BTreeMap<&'static str, Instant>,
}

/// Background watches of the namespace.
pub struct Tracker {
    state: Arc<Mutex<State>>,
    target: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl Tracker {
    /// Starts watching before anything is applied, so no milestone is missed.
    pub fn start(client: &Client, namespace: &str, target: usize) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let tasks =
            vec![
                watch::<Deployment>(client, namespace, &state, target, |_| vec!["deployments"]),
                watch::<Service>(client, namespace, &state, target, |_| vec!["services"]),
                watch::<PodDisruptionBudget>(client, namespace, &state, target, |_| {
                    vec!["pod_disruption_budgets"]
                }),
                watch::<InferenceService>(client, namespace, &state, target, |isvc| {
                    let generation = isvc.metadata.generation;
                    let Some(status) = isvc.status.as_ref() else {
                        return vec![];
                    };
                    let mut hit = Vec::new();
                    if status.observed_generation == generation && status.decision.is_some() {
                        hit.push("statuses_written");
                    }
                    if status.conditions.iter().any(|c| {
                        c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation
                    }) {
                        hit.push("ready");
                    }
                    hit
                }),
            ];
        Self { state, target, tasks }
    }

    /// Waits until every milestone is reached or `timeout` after `started` passes.
    pub async fn wait(self, started: Instant, timeout: Duration) -> Milestones {
        loop {
            let done = lock(&self.state).reached.len() == MILESTONES.len();
            if done || started.elapsed() >= timeout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        let state = lock(&self.state);
        Milestones {
            reached: state
                .reached
                .iter()
                .map(|(k, t)| (*k, t.saturating_duration_since(started)))
                .collect(),
            counts: MILESTONES
                .iter()
                .map(|m| (*m, state.seen.get(m).map_or(0, HashSet::len)))
                .collect(),
            target: self.target,
        }
    }
}

/// When each milestone was reached, relative to the first apply.
pub struct Milestones {
    reached: BTreeMap<&'static str, Duration>,
    counts: BTreeMap<&'static str, usize>,
    target: usize,
}

impl Milestones {
    /// True when every milestone was reached.
    pub fn complete(&self) -> bool {
        self.reached.len() == MILESTONES.len()
    }

    /// Seconds per milestone (null if missed), the slowest of the children and statuses as
    /// `all_children_and_statuses`, and the counts reached.
    pub fn to_json(&self) -> serde_json::Value {
        let secs = |m: &str| self.reached.get(m).map(|d| super::secs(*d));
        let all = MILESTONES[..4]
            .iter()
            .map(|m| self.reached.get(m).copied())
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max())
            .map(super::secs);
        let mut out = serde_json::Map::new();
        out.insert("all_children_and_statuses".into(), json!(all));
        for m in MILESTONES {
            out.insert(m.into(), json!(secs(m)));
        }
        out.insert(
            "counts".into(),
            json!({ "target": self.target, "reached": self.counts }),
        );
        out.into()
    }
}

fn watch<K>(
    client: &Client,
    namespace: &str,
    state: &Arc<Mutex<State>>,
    target: usize,
    milestones: fn(&K) -> Vec<&'static str>,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let state = state.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(object) = event else { continue };
            let now = Instant::now();
            let mut state = lock(&state);
            for milestone in milestones(&object) {
                let seen = state.seen.entry(milestone).or_default();
                seen.insert(object.name_any());
                if seen.len() >= target && !state.reached.contains_key(milestone) {
                    state.reached.insert(milestone, now);
                    eprintln!("scale-bench: {milestone}: all {target}");
                }
            }
        }
    })
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
