//! Apply: server-side apply of the built children, and removal of variants that no longer serve.

use bitscale_api::v1alpha1::{InferenceService, InferenceServiceStatus};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, policy::v1::PodDisruptionBudget};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    build::{Desired, FIELD_MANAGER, LABEL_INSTANCE, LABEL_VARIANT, Owner},
    error::Result,
};

/// Children as the API server returned them after the apply.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The decided variant's Deployment, with its server-populated status.
    pub deployment: Deployment,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_one<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, &params(), &Patch::Apply(object)).await?)
}

/// Applies every child.
///
/// Order: the Deployment first, so the Service never selects pods that do not exist yet; then
/// the Service; the PDB last, since it only guards what is running.
pub async fn apply(client: &Client, owner: &Owner, desired: &Desired) -> Result<Applied> {
    let Desired {
        deployment,
        service,
        pdb,
    } = desired;
    let deployment = apply_one::<Deployment>(client, &owner.namespace, deployment).await?;
    apply_one::<Service>(client, &owner.namespace, service).await?;
    apply_one::<PodDisruptionBudget>(client, &owner.namespace, pdb).await?;
    Ok(Applied { deployment })
}

/// Engine Deployments of this InferenceService, by variant label.
pub async fn variant_deployments(client: &Client, owner: &Owner) -> Result<Vec<(String, Deployment)>> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &owner.namespace);
    let list = api
        .list(&ListParams::default().labels(&format!(
            "{LABEL_INSTANCE}={}",
            crate::build::shorten(&owner.name, 63, '-')
        )))
        .await?;
    Ok(list
        .items
        .into_iter()
        // Only our own children: a label alone could be copied onto anything.
        .filter(|d| d.owner_references().iter().any(|r| r.uid == owner.reference.uid))
        .filter_map(|d| d.labels().get(LABEL_VARIANT).cloned().map(|v| (v, d)))
        .collect())
}

/// The variant label the Service currently selects, if the Service exists.
pub async fn serving_variant(client: &Client, owner: &Owner) -> Result<Option<String>> {
    let api: Api<Service> = Api::namespaced(client.clone(), &owner.namespace);
    Ok(api
        .get_opt(&owner.name)
        .await?
        .and_then(|s| s.spec)
        .and_then(|s| s.selector)
        .and_then(|mut s| s.remove(LABEL_VARIANT)))
}

/// Deletes the Deployments of variants other than `keep`, once `keep` serves.
pub async fn delete_other_variants(
    client: &Client,
    owner: &Owner,
    existing: &[(String, Deployment)],
    keep: &str,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &owner.namespace);
    for (variant, deployment) in existing.iter().filter(|(v, _)| v != keep) {
        tracing::info!(variant, "removing a variant that no longer serves");
        match api
            .delete(&deployment.name_any(), &DeleteParams::background())
            .await
        {
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
                let body = serde_json::to_vec(&status).unwrap_or_default();
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(body))
                        .expect("a valid response"),
                )
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

    #[tokio::test]
    async fn a_missing_child_on_delete_is_not_an_error() {
        let (client, seen) = api_server_answering(404);
        let existing = vec![(
            "q8-0-cpu".to_owned(),
            Deployment {
                metadata: kube::api::ObjectMeta {
                    name: Some("chat-q8-0-cpu".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )];
        delete_other_variants(&client, &owner(), &existing, "q4-k-cpu")
            .await
            .expect("already gone is done");
        assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 1);
    }
}
