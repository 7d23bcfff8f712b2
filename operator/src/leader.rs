//! Leader election on a coordination.k8s.io Lease, so two operator replicas can run and only one
//! reconciles. Hand-rolled: acquire when the lease is free or expired, renew every `renew`,
//! and stop (the caller exits) when renewal fails or another holder took the lease.

use std::time::Duration;

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
