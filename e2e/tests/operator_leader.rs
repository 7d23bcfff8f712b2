//! Leader election: of two operator instances on one Lease only the holder reconciles; a standby
//! takes over at once when the leader shuts down cleanly (it releases the Lease), and once the
//! Lease expires when the leader dies without releasing it.

mod operator_support;

use std::time::{Duration, Instant};

use bitscale_api::v1alpha1::InferenceService;
use bitscale_e2e::{Cluster, TestNamespace, await_condition};
use bitscale_operator::{Config, build::EngineImages, leader::LeaseConfig, metrics::Metrics};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use operator_support::*;
use tokio::{sync::oneshot, task::JoinHandle};

const LEASE_DURATION: Duration = Duration::from_secs(6);
const RENEW: Duration = Duration::from_secs(1);

/// One operator instance competing for the namespace's Lease.
struct Instance {
    metrics: Metrics,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

fn start(client: &Client, namespace: &str, identity: &str) -> Instance {
    let config = Config {
        images: EngineImages {
            cpu: FAKE_ENGINE_IMAGES[0].into(),
            cuda: FAKE_ENGINE_IMAGES[1].into(),
        },
        namespace: Some(namespace.to_owned()),
        instance: Some(identity.to_owned()),
        ..Config::default()
    };
    let lease = LeaseConfig {
        namespace: namespace.to_owned(),
        name: "bitscale-operator".into(),
        identity: identity.to_owned(),
        duration: LEASE_DURATION,
        renew: RENEW,
    };
    let metrics = Metrics::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let (client, metrics) = (client.clone(), metrics.clone());
        async move {
            bitscale_operator::leader::run_as_leader(client, config, metrics, &lease, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    Instance { metrics, stop, task }
}

async fn await_holder(client: &Client, namespace: &str, identity: &str) -> anyhow::Result<Instant> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let holder = identity.to_owned();
    await_condition(
        leases,
        "bitscale-operator",
        move |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                == Some(holder.as_str())
        },
        TIMEOUT,
    )
    .await?;
    Ok(Instant::now())
}

async fn create_and_await_ready(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    let class = format!("{namespace}-cpu");
    isvcs
        .patch(
            name,
            &PatchParams::apply("bitscale-e2e").force(),
            &Patch::Apply(&smol(name, namespace, &[&class])),
        )
        .await?;
    // Ready needs the operator to have applied the children and written the status.
    await_condition(isvcs, name, ready, TIMEOUT).await?;
    Ok(())
}

fn reconciles(metrics: &Metrics) -> u64 {
    metrics.reconciles.get()
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_on_release() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let client = cluster.client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-leader").await?;
    let classes = [cpu_class(&ns.name)];
    apply_classes(&client, &classes).await?;

    let a = start(&client, &ns.name, "operator-a");
    await_holder(&client, &ns.name, "operator-a").await?;
    let b = start(&client, &ns.name, "operator-b");

    create_and_await_ready(&client, &ns.name, "first").await?;
    assert!(reconciles(&a.metrics) > 0, "the leader reconciled");
    assert_eq!(reconciles(&b.metrics), 0, "the standby must not reconcile");
    // The standby has tried (and failed) to take the lease by now; the holder is unchanged.
    await_holder(&client, &ns.name, "operator-a").await?;

    // A clean stop releases the lease: the standby need not wait for it to expire.
    let stopped = Instant::now();
    let Instance {
        metrics: a_metrics,
        stop,
        task,
    } = a;
    let _ = stop.send(());
    task.await??;
    let a_final = reconciles(&a_metrics);
    let taken_over = await_holder(&client, &ns.name, "operator-b").await?;
    let handover = taken_over - stopped;
    assert!(
        handover < LEASE_DURATION,
        "took {handover:?}: the released lease should pass on within a renew period"
    );

    create_and_await_ready(&client, &ns.name, "second").await?;
    assert!(reconciles(&b.metrics) > 0, "the new leader reconciles");
    assert_eq!(reconciles(&a_metrics), a_final, "the stopped leader does nothing");

    let _ = b.stop.send(());
    b.task.await??;
    delete_classes(&client, &classes).await;
    ns.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_standby_takes_over_once_a_crashed_leaders_lease_expires() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let client = cluster.client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-leader-crash").await?;
    let classes = [cpu_class(&ns.name)];
    apply_classes(&client, &classes).await?;

    let a = start(&client, &ns.name, "operator-a");
    await_holder(&client, &ns.name, "operator-a").await?;
    let b = start(&client, &ns.name, "operator-b");

    // A crash: the task is gone without releasing anything.
    let crashed = Instant::now();
    a.task.abort();
    let taken_over = await_holder(&client, &ns.name, "operator-b").await?;
    let waited = taken_over - crashed;
    assert!(
        waited + RENEW >= LEASE_DURATION - Duration::from_secs(2),
        "took over after {waited:?}, before the lease ({LEASE_DURATION:?}) could have expired"
    );

    create_and_await_ready(&client, &ns.name, "after-crash").await?;
    assert!(reconciles(&b.metrics) > 0, "the new leader reconciles");

    let _ = b.stop.send(());
    b.task.await??;
    delete_classes(&client, &classes).await;
    ns.delete().await?;
    Ok(())
}
