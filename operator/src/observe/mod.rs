//! Observe: what the engines measurably do, from Prometheus.
//!
//! Every decision period one round of [`queries`] (a fixed handful, each grouped by namespace,
//! InferenceService and variant) is asked at once, each bounded in time; the answers become one
//! [`Snapshot`] that every reconcile reads. Its outcome is either a sample per variant or the
//! reason there is none, which the controller turns into `MetricsAvailable=False` and a held
//! decision: missing data never scales anything down.

pub mod prometheus;
pub mod queries;
pub mod sample;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use bitscale_api::{
    telemetry::{SERIES_INSTANCE, SERIES_NAMESPACE, SERIES_VARIANT},
    v1alpha1::InferenceService,
};
use futures::{Stream, StreamExt};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{core::DeserializeGuard, runtime::reflector::ObjectRef};

use crate::metrics::Metrics;

use self::{
    prometheus::{Prometheus, QueryError},
    queries::Field,
    sample::{ServiceKey, VariantSample, Variants},
};

/// Default time between two rounds of queries (and decisions): a few scrape intervals.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30);
/// Default range of the rates and quantiles: four scrapes at Prometheus's default 15 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Default bound on each query.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how often to observe.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prometheus's base URL.
    pub url: String,
    /// Time between rounds.
    pub period: Duration,
    /// Range of rates and quantiles.
    pub window: Duration,
    /// Bound on each query.
    pub timeout: Duration,
}

impl Config {
    /// A configuration with the defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            period: DEFAULT_PERIOD,
            window: DEFAULT_WINDOW,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What one round found.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No Prometheus is configured: decisions stay on priors.
    NotConfigured,
    /// No round has finished yet.
    Pending,
    /// The round failed; the reason, for `MetricsAvailable=False`.
    Unavailable(String),
    /// Samples per variant label, per InferenceService.
    Measured(HashMap<ServiceKey, Variants>),
}

/// The latest round.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// When it was asked.
    pub time: Time,
    /// Its window, in seconds.
    pub window_seconds: f64,
    /// What it found.
    pub outcome: Outcome,
}

impl Snapshot {
    /// The samples of one InferenceService's variants; `None` when the round has none at all.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Variants> {
        match &self.outcome {
            Outcome::Measured(services) => services.get(&(namespace.to_owned(), name.to_owned())),
            _ => None,
        }
    }
}

/// The latest snapshot, shared by the observer and every reconcile.
#[derive(Clone, Debug)]
pub struct Observations(Arc<RwLock<Arc<Snapshot>>>);

impl Observations {
    /// Holds `outcome` until the first round replaces it.
    pub fn new(outcome: Outcome) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(Snapshot {
            time: Time(Timestamp::now()),
            window_seconds: 0.0,
            outcome,
        }))))
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        // A panic while holding the lock left a whole snapshot; it is still usable.
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn store(&self, snapshot: Snapshot) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(snapshot);
    }
}

/// Queries in flight at once. Each answer is folded in as it arrives, so at most this many
/// are held whole: at 10,000 services one answer is a few MiB.
const QUERIES_IN_FLIGHT: usize = 4;

/// Asks every query once, a few at a time, and groups the answers by service and variant.
pub async fn round(prometheus: &Prometheus, window: Duration) -> Snapshot {
    let time = Time(Timestamp::now());
    let mut answers = futures::stream::iter(Field::ALL)
        .map(|field| async move { (field, prometheus.query(&queries::promql(field, window)).await) })
        .buffer_unordered(QUERIES_IN_FLIGHT);
    let mut grouping = Grouping::default();
    while let Some((field, answer)) = answers.next().await {
        if !grouping.take(field, answer) {
            break;
        }
    }
    Snapshot {
        time,
        window_seconds: window.as_secs_f64(),
        outcome: grouping.outcome(),
    }
}

/// The answers of a round so far, by service and variant.
#[derive(Default)]
struct Grouping {
    services: HashMap<ServiceKey, Variants>,
    failed: Option<String>,
}

impl Grouping {
    /// Adds one query's answer; false once a query failed, which makes the round unavailable.
    fn take(&mut self, field: Field, answer: Result<Vec<prometheus::Series>, QueryError>) -> bool {
        let series = match answer {
            Ok(series) => series,
            Err(error) => {
                self.failed = Some(error.to_string());
                return false;
            }
        };
        for s in series {
            let (Some(namespace), Some(service), Some(variant)) = (
                s.label(SERIES_NAMESPACE),
                s.label(SERIES_INSTANCE),
                s.label(SERIES_VARIANT),
            ) else {
                continue;
            };
            let variants = self
                .services
                .entry((namespace.to_owned(), service.to_owned()))
                .or_insert_with(|| Vec::with_capacity(1));
            let at = match variants.binary_search_by(|(label, _)| label.as_str().cmp(variant)) {
                Ok(at) => at,
                Err(at) => {
                    variants.insert(at, (variant.to_owned(), VariantSample::default()));
                    at
                }
            };
            variants[at].1.set(field, s.value);
        }
        true
    }

    fn outcome(self) -> Outcome {
        match self.failed {
            Some(reason) => Outcome::Unavailable(reason),
            None => Outcome::Measured(self.services),
        }
    }
}

/// Which InferenceServices a round asks the controller to reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Wake {
    /// Every one: the kind of outcome changed (the first round, Prometheus lost or back).
    All,
    /// Those whose samples changed since the previous round (appeared, went or moved).
    Services(Vec<ServiceKey>),
}

/// What changed from the `previous` round's outcome to the `next` one's. A service whose
/// samples did not change would decide the same again, so it is left alone: at 10,000 idle
/// services a round then costs no reconcile at all.
pub fn wake(previous: &Outcome, next: &Outcome) -> Wake {
    match (previous, next) {
        (Outcome::Measured(before), Outcome::Measured(after)) => {
            let mut changed: Vec<ServiceKey> = after
                .iter()
                .filter(|(key, variants)| before.get(*key) != Some(*variants))
                .map(|(key, _)| key.clone())
                .chain(before.keys().filter(|key| !after.contains_key(*key)).cloned())
                .collect();
            changed.sort();
            Wake::Services(changed)
        }
        _ if std::mem::discriminant(previous) == std::mem::discriminant(next) => Wake::Services(Vec::new()),
        _ => Wake::All,
    }
}

/// Runs a round every `config.period` into `observations` on a task of its own, recording each
/// in `metrics`, until the returned [`Rounds`] are dropped.
pub fn spawn(
    config: Config,
    observations: Observations,
    metrics: Metrics,
) -> anyhow::Result<
    Rounds<impl Stream<Item = ()> + Send + 'static, impl Stream<Item = ServiceRef> + Send + 'static>,
> {
    let prometheus = Prometheus::new(&config.url, config.timeout)?;
    let (mut all_tx, all) = futures::channel::mpsc::channel(1);
    let (services_tx, services) = futures::channel::mpsc::unbounded();
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(config.period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let started = std::time::Instant::now();
            let snapshot = round(&prometheus, config.window).await;
            record(&metrics, &snapshot.outcome, started.elapsed().as_secs_f64());
            let wake = wake(&observations.latest().outcome, &snapshot.outcome);
            observations.store(snapshot);
            let open = match wake {
                // A full channel already holds a wake-up; a closed one means nobody listens.
                Wake::All => !all_tx.try_send(()).is_err_and(|e| e.is_disconnected()),
                Wake::Services(keys) => {
                    metrics.observe_triggers.inc_by(keys.len() as u64);
                    keys.into_iter().all(|(namespace, name)| {
                        services_tx
                            .unbounded_send(ObjectRef::new(&name).within(&namespace))
                            .is_ok()
                    })
                }
            };
            if !open {
                break;
            }
        }
    });
    let guard = Abort(task.abort_handle());
    Ok(Rounds {
        all: all.map(move |()| {
            let _ = &guard;
        }),
        services,
    })
}

fn record(metrics: &Metrics, outcome: &Outcome, seconds: f64) {
    match outcome {
        Outcome::Unavailable(reason) => {
            tracing::warn!(%reason, "no measurements this round");
            metrics.observe_round("unavailable", seconds, Field::ALL.len(), None);
        }
        Outcome::Measured(services) => {
            tracing::debug!(services = services.len(), seconds, "round");
            metrics.observe_round("measured", seconds, Field::ALL.len(), Some(services.len()));
        }
        Outcome::NotConfigured | Outcome::Pending => {}
    }
}

/// An InferenceService to reconcile after a round.
pub type ServiceRef = ObjectRef<DeserializeGuard<InferenceService>>;

/// The observer's wake-ups: of every service, and of single ones.
pub struct Rounds<A, S> {
    /// A wake-up of every InferenceService; dropping it stops the observer.
    pub all: A,
    /// Single InferenceServices whose samples changed.
    pub services: S,
}

/// Aborts the observer's task when the stream holding it is dropped.
struct Abort(tokio::task::AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{prometheus::Series, *};

    fn series(ns: &str, svc: &str, variant: &str, value: f64) -> Series {
        Series {
            labels: vec![
                (SERIES_NAMESPACE.to_owned(), ns.to_owned()),
                (SERIES_INSTANCE.to_owned(), svc.to_owned()),
                (SERIES_VARIANT.to_owned(), variant.to_owned()),
            ],
            value: Some(value),
        }
    }

    type Answer = (Field, Result<Vec<Series>, QueryError>);

    fn group(answers: Vec<Answer>) -> Outcome {
        let mut grouping = Grouping::default();
        for (field, answer) in answers {
            if !grouping.take(field, answer) {
                break;
            }
        }
        grouping.outcome()
    }

    fn sample<'a>(services: &'a HashMap<ServiceKey, Variants>, ns: &str, variant: &str) -> &'a VariantSample {
        let variants = &services[&(ns.to_owned(), "s".to_owned())];
        &variants.iter().find(|(v, _)| v == variant).expect("variant").1
    }

    #[test]
    fn answers_group_by_service_and_variant() {
        let outcome = group(vec![
            (
                Field::GeneratedTokens,
                Ok(vec![
                    series("a", "s", "q8_0.cpu", 10.0),
                    series("b", "s", "q8_0.cpu", 5.0),
                ]),
            ),
            (
                Field::Pods,
                Ok(vec![
                    series("a", "s", "q8_0.cpu", 2.0),
                    series("a", "s", "q4_k.cpu", 1.0),
                ]),
            ),
        ]);
        let Outcome::Measured(services) = outcome else {
            panic!("measured: {outcome:?}");
        };
        let labels: Vec<&str> = services[&("a".to_owned(), "s".to_owned())]
            .iter()
            .map(|(v, _)| v.as_str())
            .collect();
        assert_eq!(
            labels,
            ["q4_k.cpu", "q8_0.cpu"],
            "sorted, so rounds compare equal"
        );
        let a = sample(&services, "a", "q8_0.cpu");
        assert_eq!((a.generated_tokens, a.pods), (10.0, 2.0));
        assert_eq!(sample(&services, "b", "q8_0.cpu").pods, 0.0);
    }

    #[test]
    fn one_failed_query_makes_the_round_unavailable() {
        let refused = QueryError::Refused {
            query: "q".into(),
            message: "overloaded".into(),
        };
        let outcome = group(vec![
            (Field::Pods, Ok(vec![series("a", "s", "v", 1.0)])),
            (Field::Steps, Err(refused)),
        ]);
        assert!(matches!(outcome, Outcome::Unavailable(m) if m.contains("overloaded")));
    }

    fn measured(services: &[(&str, f64)]) -> Outcome {
        Outcome::Measured(
            services
                .iter()
                .map(|(name, tokens)| {
                    let sample = VariantSample {
                        pods: 1.0,
                        generated_tokens: *tokens,
                        ..Default::default()
                    };
                    (
                        ("ns".to_owned(), (*name).to_owned()),
                        vec![("q8_0.cpu".to_owned(), sample)],
                    )
                })
                .collect(),
        )
    }

    fn keys(names: &[&str]) -> Wake {
        Wake::Services(names.iter().map(|n| ("ns".to_owned(), (*n).to_owned())).collect())
    }

    #[test]
    fn a_round_wakes_only_the_services_whose_samples_changed() {
        let before = measured(&[("idle", 0.0), ("busy", 10.0), ("leaving", 1.0)]);
        let after = measured(&[("idle", 0.0), ("busy", 12.5), ("new", 3.0)]);
        assert_eq!(wake(&before, &after), keys(&["busy", "leaving", "new"]));
        assert_eq!(wake(&after, &after), keys(&[]), "an unchanged round wakes nobody");
    }

    #[test]
    fn a_change_of_outcome_wakes_every_service() {
        let data = measured(&[("a", 1.0)]);
        let down = Outcome::Unavailable("connection refused".into());
        assert_eq!(wake(&Outcome::Pending, &data), Wake::All);
        assert_eq!(wake(&data, &down), Wake::All);
        assert_eq!(wake(&down, &data), Wake::All);
        assert_eq!(
            wake(&down, &Outcome::Unavailable("timed out".into())),
            keys(&[]),
            "still down: the services already hold"
        );
    }
}
