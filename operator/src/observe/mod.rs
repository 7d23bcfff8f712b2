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
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use bitscale_api::telemetry::{SERIES_INSTANCE, SERIES_NAMESPACE, SERIES_VARIANT};
use futures::{Stream, StreamExt};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use self::{
    prometheus::{Prometheus, QueryError},
    queries::Field,
    sample::{ServiceKey, VariantSample},
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
    Measured(HashMap<ServiceKey, BTreeMap<String, VariantSample>>),
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
    pub fn service(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, VariantSample>> {
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

/// Asks every query once, concurrently, and groups the answers by service and variant.
pub async fn round(prometheus: &Prometheus, window: Duration) -> Snapshot {
    let time = Time(Timestamp::now());
    let answers = futures::future::join_all(
        Field::ALL
            .iter()
            .map(|field| async move { (*field, prometheus.query(&queries::promql(*field, window)).await) }),
    )
    .await;
    Snapshot {
        time,
        window_seconds: window.as_secs_f64(),
        outcome: group(answers),
    }
}

fn group(answers: Vec<(Field, Result<Vec<prometheus::Series>, QueryError>)>) -> Outcome {
    let mut services: HashMap<ServiceKey, BTreeMap<String, VariantSample>> = HashMap::new();
    for (field, answer) in answers {
        let series = match answer {
            Ok(series) => series,
            Err(error) => return Outcome::Unavailable(error.to_string()),
        };
        for s in series {
            let label = |name: &str| s.labels.get(name).cloned();
            let (Some(namespace), Some(service), Some(variant)) = (
                label(SERIES_NAMESPACE),
                label(SERIES_INSTANCE),
                label(SERIES_VARIANT),
            ) else {
                continue;
            };
            services
                .entry((namespace, service))
                .or_default()
                .entry(variant)
                .or_default()
                .set(field, s.value);
        }
    }
    Outcome::Measured(services)
}

/// Runs a round every `config.period` into `observations` on a task of its own, until the
/// returned stream (which yields after each round; the controller reconciles every
/// InferenceService on each) is dropped.
pub fn spawn(config: Config, observations: Observations) -> anyhow::Result<Rounds> {
    let prometheus = Prometheus::new(&config.url, config.timeout)?;
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(config.period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let snapshot = round(&prometheus, config.window).await;
            if let Outcome::Unavailable(reason) = &snapshot.outcome {
                tracing::warn!(%reason, "no measurements this round");
            }
            observations.store(snapshot);
            // A full channel already holds a wake-up; a closed one means nobody listens.
            if tx.try_send(()).is_err_and(|e| e.is_disconnected()) {
                break;
            }
        }
    });
    Ok(Rounds { rx, task })
}

/// The observer's rounds as a stream; dropping it stops the observer.
pub struct Rounds {
    rx: futures::channel::mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for Rounds {
    type Item = ();

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        self.rx.poll_next_unpin(cx)
    }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{prometheus::Series, *};

    fn series(ns: &str, svc: &str, variant: &str, value: f64) -> Series {
        Series {
            labels: BTreeMap::from([
                (SERIES_NAMESPACE.to_owned(), ns.to_owned()),
                (SERIES_INSTANCE.to_owned(), svc.to_owned()),
                (SERIES_VARIANT.to_owned(), variant.to_owned()),
            ]),
            value: Some(value),
        }
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
            (Field::Pods, Ok(vec![series("a", "s", "q8_0.cpu", 2.0)])),
        ]);
        let Outcome::Measured(services) = outcome else {
            panic!("measured: {outcome:?}");
        };
        let a = &services[&("a".to_owned(), "s".to_owned())]["q8_0.cpu"];
        assert_eq!((a.generated_tokens, a.pods), (10.0, 2.0));
        assert_eq!(services[&("b".to_owned(), "s".to_owned())]["q8_0.cpu"].pods, 0.0);
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
}
