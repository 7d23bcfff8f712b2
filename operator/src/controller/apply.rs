//! Apply: server-side apply of the built children, and removal of variants that no longer serve.

use bitscale_api::v1alpha1::{InferenceService, InferenceServiceStatus};
use k8s_openapi::api::apps::v1::Deployment;
use std::{collections::HashMap, sync::Mutex};

use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    build::{Desired, FIELD_MANAGER, Owner},
    controller::{
        children::{Child, Children, Index, Kind},
        triggers::hash,
    },
    error::Result,
};

/// Children as the API server returned them after the apply (or as the cache holds them, when
/// nothing needed applying).
#[derive(Clone, Debug)]
pub struct Applied {
    /// The decided variant's Deployment, with its server-populated status.
    pub deployment: Child,
    /// Children written to the API server by this reconcile (0 when all were current).
    pub writes: usize,
}

/// What the operator last applied to each child and how the API server answered, so that a
/// reconcile whose desired child equals the last applied one, on a child nobody has touched
/// since, skips the request. A server-side apply that changes nothing still costs the API server
/// a decode, a managed-fields merge and a compare; at 1,000 objects those were most of its work.
///
/// In memory only: after a restart the first reconcile of each object applies everything.
#[derive(Default)]
pub struct Ledger(Mutex<HashMap<ChildKey, (u64, u64)>>);

/// Kind, namespace, name.
type ChildKey = (&'static str, String, String);

impl Ledger {
    fn key<K: Resource<DynamicType = ()>>(namespace: &str, object: &K) -> ChildKey {
        let kind: &'static str = match K::kind(&()) {
            std::borrow::Cow::Borrowed(kind) => kind,
            std::borrow::Cow::Owned(_) => "",
        };
        (
            kind,
            namespace.to_owned(),
            object.meta().name.clone().unwrap_or_default(),
        )
    }

    fn current<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        desired: &K,
        want: u64,
        live: &Child,
    ) -> bool {
        lock(&self.0).get(&Self::key(namespace, desired)) == Some(&(want, live.fingerprint))
    }

    fn record<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        desired: &K,
        want: u64,
        applied: &Child,
    ) {
        lock(&self.0).insert(Self::key(namespace, desired), (want, applied.fingerprint));
    }

    /// Forgets a deleted child.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, object: &K) {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        lock(&self.0).remove(&Self::key(&namespace, object));
    }

    /// Children remembered (one per child the operator has applied and not seen deleted).
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock left a map of hashes; it is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies `object` unless the cache shows it as last applied; returns the child as it stands
/// and whether it was written.
async fn apply_one<K>(
    client: &Client,
    (ledger, cache): (&Ledger, &Index),
    owner: &Owner,
    object: &K,
) -> Result<(Child, bool)>
where
    K: Kind
        + Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let namespace = &owner.namespace;
    let want = hash(&serde_json::to_vec(object).unwrap_or_default());
    let name = object.meta().name.clone().unwrap_or_default();
    if let Some(live) = cache.get(owner, &name)
        && ledger.current(namespace, object, want, &live)
    {
        return Ok((live, false));
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let applied = api.patch(&name, &params(), &Patch::Apply(object)).await?.child();
    ledger.record(namespace, object, want, &applied);
    Ok((applied, true))
}

/// Applies every child that differs from what was last applied.
///
/// Order: the Deployment first, so the Service never selects pods that do not exist yet; then
/// the Service; the PDB last, since it only guards what is running.
pub async fn apply(
    client: &Client,
    children: &Children,
    ledger: &Ledger,
    owner: &Owner,
    desired: &Desired,
) -> Result<Applied> {
    let Desired {
        deployment,
        service,
        pdb,
    } = desired;
    let (deployment, a) = apply_one(client, (ledger, &children.deployments), owner, deployment).await?;
    let (_, b) = apply_one(client, (ledger, &children.services), owner, service).await?;
    let (_, c) = apply_one(client, (ledger, &children.pdbs), owner, pdb).await?;
    Ok(Applied {
        deployment,
        writes: usize::from(a) + usize::from(b) + usize::from(c),
    })
}

/// Deletes the Deployments of variants other than `keep`, once `keep` serves.
pub async fn delete_other_variants(
    client: &Client,
    owner: &Owner,
    existing: &[Child],
    keep: &str,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &owner.namespace);
    for deployment in existing.iter().filter(|d| d.variant.as_deref() != Some(keep)) {
        tracing::info!(
            variant = deployment.variant,
            "removing a variant that no longer serves"
        );
        match api.delete(&deployment.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes the status with server-side apply, under the operator's field manager.
pub async fn apply_status(client: &Client, owner: &Owner, status: &InferenceServiceStatus) -> Result<()> {
    let api: Api<InferenceService> = Api::namespaced(client.clone(), &owner.namespace);
    let body = serde_json::json!({
        "apiVersion": "bitscale.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": { "name": owner.name },
        "status": status,
    });
    api.patch_status(&owner.name, &params(), &Patch::Apply(&body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;
    use crate::{build::fixtures::owner, controller::backoff};

    fn json_response(code: u16, body: &serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
            .expect("a valid response")
    }

    // A kube Client whose API server answers every request with `code` and a Status body, and
    // records each request's method and URI.
    fn api_server_answering(code: u16) -> (Client, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let log = log.clone();
            async move {
                if let Ok(mut log) = log.lock() {
                    log.push(format!("{} {}", request.method(), request.uri()));
                }
                let status = serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": format!("mock {code}"), "reason": "Mock", "code": code,
                });
                Ok::<_, Infallible>(json_response(code, &status))
            }
        });
        (Client::new(service, "default"), seen)
    }

    async fn status_write_fails_with(code: u16) -> (crate::Error, Vec<String>) {
        let (client, seen) = api_server_answering(code);
        let error = apply_status(&client, &owner(), &InferenceServiceStatus::default())
            .await
            .expect_err("the API server refuses");
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        (error, seen)
    }

    #[tokio::test]
    async fn conflicts_and_server_errors_on_apply_are_transient() {
        for code in [409, 429, 500, 503] {
            let (error, seen) = status_write_fails_with(code).await;
            assert!(!error.is_permanent(), "{code}: {error}");
            assert_eq!(error.category(), "kube_api");
            // One server-side apply of the status subresource, under the operator's field manager.
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert!(
                seen[0].starts_with("PATCH ")
                    && seen[0].contains("/inferenceservices/chat/status?")
                    && seen[0].contains("fieldManager=bitscale.dev%2Foperator")
                    && seen[0].contains("force=true"),
                "{seen:?}"
            );
        }
        // error_policy retries a transient error after 1 s, then 2 s, 4 s, …
        assert!(backoff(1) < backoff(2) && backoff(2) < backoff(3));
    }

    #[tokio::test]
    async fn invalid_requests_are_permanent() {
        for code in [400, 422] {
            let (error, _) = status_write_fails_with(code).await;
            assert!(error.is_permanent(), "{code}: {error}");
        }
    }

    // An API server that answers a server-side apply with the applied object, as created.
    fn api_server_echoing() -> (Client, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let log = log.clone();
            async move {
                if let Ok(mut log) = log.lock() {
                    log.push(format!("{} {}", request.method(), request.uri().path()));
                }
                let bytes = request.into_body().collect_bytes().await.unwrap_or_default();
                let mut object: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                object["metadata"]["uid"] = "child-uid".into();
                object["metadata"]["generation"] = 1.into();
                object["metadata"]["resourceVersion"] = "7".into();
                Ok::<_, Infallible>(json_response(200, &object))
            }
        });
        (Client::new(service, "default"), seen)
    }

    #[tokio::test]
    async fn children_unchanged_since_the_last_apply_are_not_written_again() {
        use kube::runtime::{reflector, watcher};

        use crate::{
            build::fixtures::desired_q8_0,
            controller::children::{Sink, index},
        };

        let (client, seen) = api_server_echoing();
        let requests = || seen.lock().map(|s| s.len()).unwrap_or_default();
        let (owner, wanted) = (owner(), desired_q8_0());
        let (deployments, mut deployment_writer) = index::<Deployment>();
        let (services, mut service_writer) = index();
        let (pdbs, mut pdb_writer) = index();
        let (jobs, _) = reflector::store();
        let children = Children {
            deployments,
            services,
            pdbs,
            jobs,
        };
        let ledger = Ledger::default();

        // First time: all three are written.
        let first = apply(&client, &children, &ledger, &owner, &wanted)
            .await
            .expect("applied");
        assert_eq!((first.writes, requests()), (3, 3));
        assert_eq!(ledger.len(), 3);

        // Still absent from the cache (the watch has not delivered them): written again.
        apply(&client, &children, &ledger, &owner, &wanted)
            .await
            .expect("applied");
        assert_eq!(requests(), 6);

        // The watch delivers them as applied: nothing to write.
        let mut live = wanted.deployment.clone();
        live.metadata = as_created(&live.metadata);
        deployment_writer.take(&watcher::Event::Apply(live.clone()));
        let mut service = wanted.service.clone();
        service.metadata = as_created(&service.metadata);
        service_writer.take(&watcher::Event::Apply(service));
        let mut pdb = wanted.pdb.clone();
        pdb.metadata = as_created(&pdb.metadata);
        pdb_writer.take(&watcher::Event::Apply(pdb));
        let quiet = apply(&client, &children, &ledger, &owner, &wanted)
            .await
            .expect("applied");
        assert_eq!((quiet.writes, requests()), (0, 6));
        assert_eq!(quiet.deployment, live.child());

        // Another controller annotates the Deployment (as the Deployment controller does with its
        // revision): not the operator's business, nothing to write.
        live.metadata
            .annotations
            .get_or_insert_default()
            .insert("deployment.kubernetes.io/revision".into(), "1".into());
        deployment_writer.take(&watcher::Event::Apply(live.clone()));
        apply(&client, &children, &ledger, &owner, &wanted)
            .await
            .expect("applied");
        assert_eq!(requests(), 6);

        // Someone edits the Deployment's spec (generation moves): it is written again.
        live.metadata.generation = Some(2);
        deployment_writer.take(&watcher::Event::Apply(live.clone()));
        let undo = apply(&client, &children, &ledger, &owner, &wanted)
            .await
            .expect("applied");
        assert_eq!((undo.writes, requests()), (1, 7));
        assert!(lock(&seen)[6].contains("/deployments/"));
        live.metadata.generation = Some(1);
        deployment_writer.take(&watcher::Event::Apply(live));

        // A different desired child (a new decision) is written though the cache is current.
        let mut changed = wanted.clone();
        changed
            .pdb
            .metadata
            .labels
            .get_or_insert_default()
            .insert("x".into(), "y".into());
        apply(&client, &children, &ledger, &owner, &changed)
            .await
            .expect("applied");
        assert_eq!(requests(), 8);
        assert!(lock(&seen)[7].contains("/poddisruptionbudgets/"));
    }

    fn as_created(meta: &kube::api::ObjectMeta) -> kube::api::ObjectMeta {
        kube::api::ObjectMeta {
            uid: Some("child-uid".into()),
            generation: Some(1),
            resource_version: Some("7".into()),
            ..meta.clone()
        }
    }

    #[tokio::test]
    async fn a_missing_child_on_delete_is_not_an_error() {
        let (client, seen) = api_server_answering(404);
        let existing = vec![Child {
            name: "chat-q8-0-cpu".into(),
            fingerprint: 0,
            variant: Some("q8-0-cpu".into()),
            rollout: None,
            stall: None,
        }];
        delete_other_variants(&client, &owner(), &existing, "q4-k-cpu")
            .await
            .expect("already gone is done");
        assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 1);
    }
}
