//! What a pod's containers need before they start, read from the API server and written to the
//! pod's directory on this machine: its volumes, its service-account credentials and the values
//! of `valueFrom` environment variables.
//!
//! Volumes resolve to directories: `emptyDir` to one of the pod's own; `hostPath` to that path
//! (this machine is the node); `persistentVolumeClaim` to the `hostPath` or `local` path of the
//! PersistentVolume the claim is bound to (bound by the real PV controller); `configMap`,
//! `secret`, `downwardAPI` and `projected` volumes to files written like the kubelet's. A
//! projected service-account token comes from the TokenRequest API, bound to the pod, and is
//! renewed before it expires; containers that mount it get a kubeconfig (`KUBECONFIG`) built from
//! it, the stand-in for in-cluster config, which reads fixed paths this process cannot remap.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{
            ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim,
            Pod, Secret, ServiceAccount, Volume,
        },
    },
};
use kube::{Api, Client, ResourceExt, api::PostParams};

/// A failure to prepare the pod, shown on its containers as `ContainerCreating` with the message;
/// the runner retries.
pub type SetupError = String;

/// Where the API server is and which CA signs it, for the kubeconfigs handed to containers.
#[derive(Clone, Debug)]
pub struct ApiServer {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
}

/// A service-account token file to renew.
#[derive(Clone, Debug)]
pub struct TokenFile {
    path: PathBuf,
    account: String,
    audience: Option<String>,
    expiration_seconds: i64,
    renew_at: Instant,
}

/// The pod's prepared volumes.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// Volume name → directory (or file, for a `hostPath` file) on this machine.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Volume name → kubeconfig, for volumes holding a service-account token and `ca.crt`.
    pub kubeconfigs: BTreeMap<String, PathBuf>,
    /// Tokens to renew.
    pub tokens: Vec<TokenFile>,
}

/// Prepares every volume of `pod` under `dir`.
pub async fn prepare(
    client: &Client,
    api: &ApiServer,
    pod: &Pod,
    dir: &Path,
) -> Result<Prepared, SetupError> {
    let mut prepared = Prepared::default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for volume in &volumes {
        let path = volume_path(client, pod, dir, volume, &mut prepared).await?;
        if path.join("token").is_file() && path.join("ca.crt").is_file() {
            let kubeconfig = dir.join(format!("{}.kubeconfig", volume.name));
            write_kubeconfig(&kubeconfig, api, &path, &pod.namespace().unwrap_or_default())?;
            prepared.kubeconfigs.insert(volume.name.clone(), kubeconfig);
        }
        prepared.volumes.insert(volume.name.clone(), path);
    }
    Ok(prepared)
}

async fn volume_path(
    client: &Client,
    pod: &Pod,
    dir: &Path,
    volume: &Volume,
    prepared: &mut Prepared,
) -> Result<PathBuf, SetupError> {
    let own = dir.join("volumes").join(&volume.name);
    if let Some(host) = &volume.host_path {
        return Ok(PathBuf::from(&host.path));
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        return claim_path(client, &pod.namespace().unwrap_or_default(), &claim.claim_name).await;
    }
    create_dir(&own)?;
    if volume.empty_dir.is_some() {
        return Ok(own);
    }
    let ns = pod.namespace().unwrap_or_default();
    if let Some(cm) = &volume.config_map {
        let data = config_map(client, &ns, &cm.name, cm.optional.unwrap_or(false)).await?;
        write_items(&own, &data, cm.items.as_deref())?;
    } else if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let data = secret_data(client, &ns, &name, secret.optional.unwrap_or(false)).await?;
        write_items(&own, &data, secret.items.as_deref())?;
    } else if let Some(downward) = &volume.downward_api {
        write_downward(&own, pod, downward.items.as_deref().unwrap_or_default())?;
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                let file = TokenFile {
                    path: own.join(&token.path),
                    account: service_account(pod),
                    audience: token.audience.clone(),
                    expiration_seconds: token.expiration_seconds.unwrap_or(3600),
                    renew_at: Instant::now(),
                };
                let file = renew(client, pod, file).await?;
                prepared.tokens.push(file);
            }
            if let Some(cm) = &source.config_map {
                let data = config_map(client, &ns, &cm.name, cm.optional.unwrap_or(false)).await?;
                write_items(&own, &data, cm.items.as_deref())?;
            }
            if let Some(secret) = &source.secret {
                let data = secret_data(client, &ns, &secret.name, secret.optional.unwrap_or(false)).await?;
                write_items(&own, &data, secret.items.as_deref())?;
            }
            if let Some(downward) = &source.downward_api {
                write_downward(&own, pod, downward.items.as_deref().unwrap_or_default())?;
            }
        }
    } else {
        return Err(format!(
            "volume {} has a type the local pod runner does not support",
            volume.name
        ));
    }
    Ok(own)
}

/// Renews the tokens due; returns when the next one is due.
pub async fn renew_due(client: &Client, pod: &Pod, tokens: &mut [TokenFile]) -> Result<(), SetupError> {
    let now = Instant::now();
    for token in tokens.iter_mut().filter(|t| t.renew_at <= now) {
        *token = renew(client, pod, token.clone()).await?;
    }
    Ok(())
}

async fn renew(client: &Client, pod: &Pod, mut file: TokenFile) -> Result<TokenFile, SetupError> {
    let ns = pod.namespace().unwrap_or_default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: file.audience.clone().map(|a| vec![a]),
            expiration_seconds: Some(file.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(&file.account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            format!(
                "requesting a token for service account {ns}/{}: {e}",
                file.account
            )
        })?;
    let token = issued.status.and_then(|s| s.token).unwrap_or_default();
    write_file(&file.path, token.as_bytes())?;
    // Like the kubelet: renew at 80 % of the lifetime.
    let lifetime = Duration::from_secs(u64::try_from(file.expiration_seconds).unwrap_or(3600));
    file.renew_at = Instant::now() + lifetime.mul_f64(0.8);
    Ok(file)
}

fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into())
}

async fn claim_path(client: &Client, ns: &str, claim: &str) -> Result<PathBuf, SetupError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = claims
        .get(claim)
        .await
        .map_err(|e| format!("persistentvolumeclaim {claim}: {e}"))?;
    let volume = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|_| pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .ok_or_else(|| format!("persistentvolumeclaim {claim} is not bound yet"))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .map_err(|e| format!("persistentvolume {volume}: {e}"))?;
    let spec = pv.spec.unwrap_or_default();
    spec.host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "persistentvolume {volume} is neither hostPath nor local: nothing on this machine backs it"
            )
        })
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, SetupError> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(Some(cm)) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, ByteString(v))| (k, v)),
            );
            Ok(data)
        }
        Ok(None) if optional => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("configmap {name} not found")),
        Err(e) => Err(format!("configmap {name}: {e}")),
    }
}

async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, SetupError> {
    match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(Some(secret)) => Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v))
            .collect()),
        Ok(None) if optional => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("secret {name} not found")),
        Err(e) => Err(format!("secret {name}: {e}")),
    }
}

/// The values of `valueFrom` environment variables of `container`, by name.
pub async fn resolve_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
) -> Result<BTreeMap<String, String>, SetupError> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else { continue };
        let value = if let Some(field) = &from.field_ref {
            field_value(pod, &field.field_path)
        } else if let Some(resource) = &from.resource_field_ref {
            resource_value(container, &resource.resource)
        } else if let Some(key) = &from.config_map_key_ref {
            let data = config_map(client, &ns, &key.name, key.optional.unwrap_or(false)).await?;
            data.get(&key.key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        } else if let Some(key) = &from.secret_key_ref {
            let data = secret_data(client, &ns, &key.name, key.optional.unwrap_or(false)).await?;
            data.get(&key.key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        } else {
            None
        };
        if let Some(value) = value {
            out.insert(var.name.clone(), value);
        }
    }
    Ok(out)
}

/// A pod field by its downward-API path.
pub fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => Some(service_account(pod)),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => Some("127.0.0.1".into()),
        _ if path.starts_with("metadata.labels['") => keyed("metadata.labels['", meta.labels.as_ref()),
        _ if path.starts_with("metadata.annotations['") => {
            keyed("metadata.annotations['", meta.annotations.as_ref())
        }
        _ => None,
    }
}

/// A container's resource as `resourceFieldRef` gives it (divisor 1): CPUs rounded up, bytes.
fn resource_value(container: &Container, resource: &str) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let resources = container.resources.as_ref()?;
    let list = match kind {
        "limits" => resources.limits.as_ref(),
        "requests" => resources.requests.as_ref(),
        _ => None,
    }?;
    let quantity = list.get(name)?;
    match name {
        "cpu" => Some(super::invocation::cpu_threads(container).to_string()),
        _ => parse_bytes(&quantity.0).map(|b| b.to_string()),
    }
}

/// A memory quantity in bytes (`512Mi`, `1G`, `1048576`).
pub fn parse_bytes(q: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let q = q.trim();
    let (number, scale) = UNITS
        .iter()
        .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((q, 1));
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then(|| (value * scale as f64).round() as u64)
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<(), SetupError> {
    match items {
        Some(items) => {
            for item in items {
                if let Some(value) = data.get(&item.key) {
                    write_file(&dir.join(&item.path), value)?;
                }
            }
        }
        None => {
            for (key, value) in data {
                write_file(&dir.join(key), value)?;
            }
        }
    }
    Ok(())
}

fn write_downward(dir: &Path, pod: &Pod, items: &[DownwardAPIVolumeFile]) -> Result<(), SetupError> {
    for item in items {
        let value = item
            .field_ref
            .as_ref()
            .and_then(|f| field_value(pod, &f.field_path))
            .unwrap_or_default();
        write_file(&dir.join(&item.path), value.as_bytes())?;
    }
    Ok(())
}

fn write_kubeconfig(
    path: &Path,
    api: &ApiServer,
    credentials: &Path,
    namespace: &str,
) -> Result<(), SetupError> {
    let user = serde_json::json!({ "tokenFile": credentials.join("token") });
    crate::kubeconfig::write_for(path, &api.url, &credentials.join("ca.crt"), namespace, user)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn create_dir(dir: &Path) -> Result<(), SetupError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), SetupError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    // Written whole, then renamed: a reader (kube-rs re-reading its token) never sees half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, contents)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities_parse_to_bytes() {
        assert_eq!(parse_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn downward_fields_read_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "namespace": "ns", "labels": { "app": "web" } },
            "spec": { "containers": [], "nodeName": "cpu-0" },
            "status": { "podIP": "127.2.0.3" },
        }))
        .expect("pod");
        assert_eq!(field_value(&pod, "metadata.name").as_deref(), Some("p"));
        assert_eq!(
            field_value(&pod, "metadata.labels['app']").as_deref(),
            Some("web")
        );
        assert_eq!(field_value(&pod, "status.podIP").as_deref(), Some("127.2.0.3"));
        assert_eq!(
            field_value(&pod, "spec.serviceAccountName").as_deref(),
            Some("default")
        );
        assert_eq!(field_value(&pod, "metadata.generation"), None);
    }
}
