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
