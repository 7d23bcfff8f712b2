//! The watch caches of the operator's children, cut to what a reconcile reads of them.
//!
//! A reconcile reads of its children: which Deployments exist, per variant, and how far each has
//! rolled out; which variant the Service selects; and whether each child still is what the
//! operator last applied (`apply::Ledger`). Kept whole, the Deployments, Services and disruption
//! budgets of 10,000 InferenceServices were most of the operator's memory, and finding one
//! owner's Deployments meant scanning everyone's. Here each is a [`Child`] of a few hundred bytes,
//! indexed by the owner's uid.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::{
    api::{apps::v1::Deployment, batch::v1::Job, core::v1::Service, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::watch;

use crate::{
    build::{LABEL_VARIANT, OWN_LABELS, Owner},
    controller::triggers::hash,
    error::{Error, Result},
};

/// What a reconcile reads of one child.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    /// Its name.
    pub name: String,
    /// Its [`fingerprint`] as last seen.
    pub fingerprint: u64,
    /// A Deployment's variant label, or the variant a Service selects.
    pub variant: Option<String>,
    /// A Deployment's rollout.
    pub rollout: Option<Rollout>,
    /// Why a Deployment's rollout cannot finish, if its controller says so.
    pub stall: Option<Stall>,
}

/// A Deployment whose controller reports that its rollout cannot finish: pods that cannot be
/// created (`ReplicaFailure`, such as a ResourceQuota refusing them) or a rollout past its
/// progress deadline (`ProgressDeadlineExceeded`: pods that never become available).
#[derive(Clone, Debug, PartialEq)]
pub struct Stall {
    /// The condition's reason, such as `FailedCreate` or `ProgressDeadlineExceeded`.
    pub reason: String,
    /// The controller's message.
    pub message: String,
    /// Since when.
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// True when the controller has given up (the progress deadline passed); false while it
    /// keeps retrying (a failed create is retried with backoff).
    pub given_up: bool,
}

/// Reads a Deployment's conditions for a [`Stall`].
pub fn stall(deployment: &Deployment) -> Option<Stall> {
    let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
    let deadline = conditions.iter().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.status.as_deref() == Some("False")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let failure = || {
        conditions
            .iter()
            .find(|c| c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True"))
    };
    let condition = deadline.or_else(failure)?;
    Some(Stall {
        reason: condition
            .reason
            .clone()
            .or_else(|| condition.type_.clone())
            .unwrap_or_default(),
        message: condition.message.clone().unwrap_or_default(),
        since: condition.last_transition_time.clone(),
        given_up: deadline.is_some(),
    })
}

/// How far a Deployment has rolled out, as the Deployment controller reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rollout {
    /// Replicas its spec asks for.
    pub desired: i32,
    /// Whether the Deployment controller has observed its latest spec.
    pub current: bool,
    /// Replicas of the latest pod template.
    pub updated: i32,
    /// Replicas available.
    pub available: i32,
    /// Replicas of any template.
    pub total: i32,
}

/// A child's state as far as its owner is concerned: identity, spec revision, the labels the
/// operator sets (others, such as one a user adds, are not its business), owners. Status writes
/// do not change it.
pub fn fingerprint(meta: &ObjectMeta) -> u64 {
    let revision = match meta.generation {
        Some(generation) => generation.to_string(),
        // Kinds without a generation (Service): every revision counts.
        None => meta.resource_version.clone().unwrap_or_default(),
    };
    let labels: Vec<Option<&String>> = OWN_LABELS
        .iter()
        .map(|key| meta.labels.as_ref().and_then(|l| l.get(*key)))
        .collect();
    let owners: Vec<&str> = meta
        .owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.as_str())
        .collect();
    hash(&(&meta.uid, revision, labels, owners))
}

/// A kind the operator keeps as [`Child`]ren.
pub trait Kind: Resource<DynamicType = ()> {
    /// What a reconcile reads of it.
    fn child(&self) -> Child {
        Child {
            name: self.meta().name.clone().unwrap_or_default(),
            fingerprint: fingerprint(self.meta()),
            variant: None,
            rollout: None,
            stall: None,
        }
    }
}

impl Kind for PodDisruptionBudget {}

impl Kind for Deployment {
    fn child(&self) -> Child {
        let status = self.status.clone().unwrap_or_default();
        let rollout = Rollout {
            desired: self.spec.replicas.unwrap_or(1),
            current: status.observed_generation >= self.metadata.generation,
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
        };
        Child {
            name: self.name_any(),
            fingerprint: fingerprint(&self.metadata),
            variant: self.labels().get(LABEL_VARIANT).cloned(),
            rollout: Some(rollout),
            stall: stall(self),
        }
    }
}

impl Kind for Service {
    fn child(&self) -> Child {
        let selector = self.spec.as_ref().and_then(|s| s.selector.as_ref());
        Child {
            name: self.name_any(),
            fingerprint: fingerprint(&self.metadata),
            variant: selector.and_then(|s| s.get(LABEL_VARIANT)).cloned(),
            rollout: None,
            stall: None,
        }
    }
}

/// Children of one kind by owner uid. An owner has one to a few of each kind: a vector is a
/// fraction of a map's size.
type ByOwner = HashMap<String, Vec<Child>>;

/// The children of one kind, by owner. Cheap to clone; every clone reads the same cache.
#[derive(Clone)]
pub struct Index {
    children: Arc<RwLock<ByOwner>>,
    listed: watch::Receiver<bool>,
}

/// Fills an [`Index`] from a watch.
pub struct Writer<K> {
    children: Arc<RwLock<ByOwner>>,
    listed: watch::Sender<bool>,
    // A relist fills this and then replaces the cache, so children deleted while the watch was
    // down disappear and readers never see a half-listed cache.
    relisting: Option<ByOwner>,
    kind: std::marker::PhantomData<fn(&K)>,
}

/// An empty index and the writer that fills it.
pub fn index<K: Kind>() -> (Index, Writer<K>) {
    let children = Arc::<RwLock<ByOwner>>::default();
    let (listed, listed_rx) = watch::channel(false);
    let writer = Writer {
        children: children.clone(),
        listed,
        relisting: None,
        kind: std::marker::PhantomData,
    };
    (
        Index {
            children,
            listed: listed_rx,
        },
        writer,
    )
}

impl Index {
    /// Waits until the watch has listed every child once.
    pub async fn listed(&self) -> Result<()> {
        let mut listed = self.listed.clone();
        listed
            .wait_for(|done| *done)
            .await
            .map(|_| ())
            .map_err(|_| Error::CacheUnavailable("children"))
    }

    /// The child `name` of `owner`.
    pub fn get(&self, owner: &Owner, name: &str) -> Option<Child> {
        read(&self.children)
            .get(&owner.reference.uid)
            .and_then(|c| c.iter().find(|c| c.name == name))
            .cloned()
    }

    /// Every child of `owner`, by name.
    pub fn of(&self, owner: &Owner) -> Vec<Child> {
        let mut children = read(&self.children)
            .get(&owner.reference.uid)
            .cloned()
            .unwrap_or_default();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        children
    }

    /// Children cached, over every owner.
    pub fn len(&self) -> usize {
        read(&self.children).values().map(Vec::len).sum()
    }

    /// True when no child is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What takes a watch's events: the reconciler's caches.
pub trait Sink<K> {
    /// Takes one event.
    fn take(&mut self, event: &watcher::Event<K>);
}

impl<K> Sink<K> for reflector::store::Writer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn take(&mut self, event: &watcher::Event<K>) {
        self.apply_watcher_event(event);
    }
}

impl<K: Kind> Sink<K> for Writer<K> {
    fn take(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relisting = Some(ByOwner::new()),
            watcher::Event::InitApply(object) => match self.relisting.as_mut() {
                Some(relisting) => insert(relisting, object),
                None => insert(&mut write(&self.children), object),
            },
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    *write(&self.children) = listed;
                }
                self.listed.send_replace(true);
            }
            watcher::Event::Apply(object) => insert(&mut write(&self.children), object),
            watcher::Event::Delete(object) => remove(&mut write(&self.children), object),
        }
    }
}

fn insert<K: Kind>(children: &mut ByOwner, object: &K) {
    let child = object.child();
    for owner in object.owner_references() {
        let owned = children
            .entry(owner.uid.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        match owned.iter_mut().find(|c| c.name == child.name) {
            Some(cached) => *cached = child.clone(),
            None => owned.push(child.clone()),
        }
    }
}

fn remove<K: Kind>(children: &mut ByOwner, object: &K) {
    let name = object.name_any();
    for owner in object.owner_references() {
        if let Some(owned) = children.get_mut(&owner.uid) {
            owned.retain(|c| c.name != name);
            if owned.is_empty() {
                children.remove(&owner.uid);
            }
        }
    }
}

fn read(lock: &RwLock<ByOwner>) -> std::sync::RwLockReadGuard<'_, ByOwner> {
    // A panic while writing left a map of plain values; it is still usable.
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(lock: &RwLock<ByOwner>) -> std::sync::RwLockWriteGuard<'_, ByOwner> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The caches of the operator's children (labelled `managed-by`).
#[derive(Clone)]
pub struct Children {
    /// Engine Deployments.
    pub deployments: Index,
    /// Services.
    pub services: Index,
    /// Disruption budgets.
    pub pdbs: Index,
    /// Quality-profiling Jobs, whole but for their pod template: few, and their conditions
    /// are read.
    pub jobs: Store<Job>,
}

impl Children {
    /// Waits until every cache has listed its objects once.
    pub async fn ready(&self) -> Result<()> {
        self.deployments.listed().await?;
        self.services.listed().await?;
        self.pdbs.listed().await?;
        self.jobs
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheUnavailable("children"))
    }

    /// Engine Deployments of this InferenceService that carry a variant label.
    pub fn variant_deployments(&self, owner: &Owner) -> Vec<Child> {
        let mut deployments = self.deployments.of(owner);
        deployments.retain(|d| d.variant.is_some());
        deployments
    }

    /// The quality-profiling Job `name` of this InferenceService, if the cache has it.
    pub fn job(&self, owner: &Owner, name: &str) -> Option<Job> {
        self.jobs
            .get(&ObjectRef::new(name).within(&owner.namespace))
            .filter(|j| j.owner_references().iter().any(|r| r.uid == owner.reference.uid))
            .map(|j| (*j).clone())
    }

    /// The variant label the Service currently selects, if the Service exists.
    pub fn serving_variant(&self, owner: &Owner) -> Option<String> {
        self.services.get(owner, &owner.name)?.variant
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::build::fixtures::owner;

    fn deployment(name: &str, variant: &str, owner: &Owner) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(owner.namespace.clone()),
                labels: Some([(LABEL_VARIANT.to_owned(), variant.to_owned())].into()),
                owner_references: Some(vec![owner.reference.clone()]),
                generation: Some(2),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(3),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(3),
                updated_replicas: Some(3),
                available_replicas: Some(2),
                ..Default::default()
            }),
        }
    }

    fn other_owner() -> Owner {
        let mut other = owner();
        other.reference.uid = "someone-else".into();
        other
    }

    #[test]
    fn a_deployment_is_cut_to_its_variant_and_rollout() {
        let child = deployment("chat-q8-0-cpu", "q8_0.cpu", &owner()).child();
        assert_eq!(child.variant.as_deref(), Some("q8_0.cpu"));
        assert_eq!(
            child.rollout,
            Some(Rollout {
                desired: 3,
                current: true,
                updated: 3,
                available: 2,
                total: 3,
            })
        );
    }

    fn with_condition(type_: &str, status: &str, reason: &str) -> Deployment {
        let mut d = deployment("chat-q8-0-cpu", "q8_0.cpu", &owner());
        let condition = k8s_openapi::api::apps::v1::DeploymentCondition {
            type_: Some(type_.into()),
            status: Some(status.into()),
            reason: Some(reason.into()),
            message: Some("pods \"chat-x\" is forbidden: exceeded quota: gpus".into()),
            ..Default::default()
        };
        if let Some(status) = d.status.as_mut() {
            status.conditions = Some(vec![condition]);
        }
        d
    }

    #[test]
    fn a_deployment_that_cannot_roll_out_says_why() {
        let refused = with_condition("ReplicaFailure", "True", "FailedCreate").child();
        let stall = refused.stall.expect("a failed create stalls the rollout");
        assert_eq!((stall.reason.as_str(), stall.given_up), ("FailedCreate", false));
        assert!(stall.message.contains("exceeded quota"), "{}", stall.message);
        let late = with_condition("Progressing", "False", "ProgressDeadlineExceeded").child();
        assert!(late.stall.expect("past the deadline").given_up);
        let fine = with_condition("Progressing", "True", "NewReplicaSetAvailable").child();
        assert_eq!(fine.stall, None);
        assert_eq!(deployment("chat-a", "a", &owner()).child().stall, None);
    }

    #[test]
    fn children_are_found_by_owner_and_go_when_deleted() {
        let (index, mut writer) = index::<Deployment>();
        let (mine, theirs) = (owner(), other_owner());
        let a = deployment("chat-a", "a", &mine);
        writer.take(&watcher::Event::Apply(a.clone()));
        writer.take(&watcher::Event::Apply(deployment("chat-b", "b", &mine)));
        writer.take(&watcher::Event::Apply(deployment("other-a", "a", &theirs)));
        let names = |o: &Owner| index.of(o).into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(&mine), ["chat-a", "chat-b"]);
        assert_eq!(names(&theirs), ["other-a"]);
        writer.take(&watcher::Event::Delete(a));
        assert_eq!(names(&mine), ["chat-b"]);
        assert!(index.get(&mine, "chat-a").is_none());
        assert_eq!(index.len(), 2);
    }

    #[tokio::test]
    async fn a_relist_drops_what_was_deleted_while_the_watch_was_down() {
        let (index, mut writer) = index::<Deployment>();
        let mine = owner();
        writer.take(&watcher::Event::Init);
        writer.take(&watcher::Event::InitApply(deployment("chat-a", "a", &mine)));
        assert!(index.is_empty(), "a half-listed cache is not shown");
        writer.take(&watcher::Event::InitDone);
        index.listed().await.expect("listed");
        assert_eq!(index.len(), 1);

        // The watch restarts; chat-a was deleted meanwhile, chat-b created.
        writer.take(&watcher::Event::Init);
        writer.take(&watcher::Event::InitApply(deployment("chat-b", "b", &mine)));
        assert!(
            index.get(&mine, "chat-a").is_some(),
            "still readable while relisting"
        );
        writer.take(&watcher::Event::InitDone);
        assert!(index.get(&mine, "chat-a").is_none());
        assert!(index.get(&mine, "chat-b").is_some());
    }

    #[test]
    fn a_service_is_cut_to_the_variant_it_selects() {
        let mine = owner();
        let service = crate::build::service(&mine, "q4_k.cpu");
        assert_eq!(service.child().variant.as_deref(), Some("q4_k.cpu"));
    }

    #[test]
    fn the_fingerprint_ignores_labels_and_annotations_of_others() {
        let d = deployment("chat-a", "a", &owner());
        let mut touched = d.clone();
        touched
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("deployment.kubernetes.io/revision".into(), "2".into());
        touched
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "a".into());
        assert_eq!(fingerprint(&d.metadata), fingerprint(&touched.metadata));
        let mut relabelled = d.clone();
        relabelled
            .metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_VARIANT.into(), "b".into());
        assert_ne!(fingerprint(&d.metadata), fingerprint(&relabelled.metadata));
    }
}
