//! Leader election on a coordination.k8s.io Lease, so two operator replicas can run and only one
//! reconciles. Hand-rolled: acquire when the lease is free or expired, renew every `renew`,
//! and stop (the caller exits) when renewal fails or another holder took the lease. On a clean
//! shutdown the leader releases the lease, so a standby takes over within one `renew` instead of
//! waiting out `duration`.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// Where and as whom to hold the lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew: Duration,
}

/// Waits for the lease (or `shutdown`), runs the controller while holding it, and releases it
/// when `shutdown` resolves. Fails when leadership is lost: the caller should exit, as a restart
/// is the simplest way to drop every cached decision of a former leader.
pub async fn run_as_leader(
    client: Client,
    controller: crate::Config,
    metrics: crate::metrics::Metrics,
    lease: &LeaseConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    // One trigger for both phases: waiting for the lease, and running.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let trigger = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    tokio::select! {
        result = acquire(&client, lease) => result?,
        () = until_stopped(stopped.clone()) => {
            trigger.abort();
            return Ok(());
        }
    }
    let result = tokio::select! {
        result = crate::run_until(client.clone(), controller, metrics, until_stopped(stopped)) => result,
        error = hold(&client, lease) => Err(error),
    };
    trigger.abort();
    if let Err(error) = release(&client, lease).await {
        tracing::warn!(%error, "could not release the lease; a standby takes over once it expires");
    }
    result
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: &Client, config: &LeaseConfig) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    loop {
        match try_acquire(&api, config).await {
            Ok(true) => {
                tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
                return Ok(());
            }
            Ok(false) => tracing::debug!(lease = %config.name, "another replica leads; waiting"),
            Err(error) => tracing::warn!(%error, "leader election attempt failed"),
        }
        tokio::time::sleep(config.renew).await;
    }
}

/// Renews the lease until renewal fails; returns the reason leadership was lost.
pub async fn hold(client: &Client, config: &LeaseConfig) -> anyhow::Error {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(config.renew).await;
        match try_acquire(&api, config).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => return anyhow::anyhow!("lost the lease {} to another replica", config.name),
            Err(error) if last_renewal.elapsed() < config.duration => {
                tracing::warn!(%error, "lease renewal failed; retrying");
            }
            Err(error) => return error.context("could not renew the lease before it expired"),
        }
    }
}

/// Gives the lease up if this replica holds it, so a standby need not wait for it to expire.
pub async fn release(client: &Client, config: &LeaseConfig) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    // As client-go's ReleaseOnCancel does: no holder, and a lease that expires at once.
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&config.name, &PostParams::default(), &lease).await?;
    tracing::info!(lease = %config.name, identity = %config.identity, "released the lease");
    Ok(())
}

// Takes or renews the lease if it is ours, free or expired. Conflicts (someone else wrote first)
// surface as errors from `replace`, which checks the resourceVersion.
async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> anyhow::Result<bool> {
    let now = Timestamp::now();
    let seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        api.create(&PostParams::default(), &lease).await?;
        return Ok(true);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let valid_for = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
        t.0 + valid_for < now
    });
    if !ours && !expired && spec.holder_identity.is_some() {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    api.replace(&config.name, &PostParams::default(), &lease).await?;
    Ok(true)
}
