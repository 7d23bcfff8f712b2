//! A namespace per test: unique name, labelled for cleanup, with a Pod Security level enforced.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
    runtime::wait::conditions,
};
use rand::{Rng, distr::Alphanumeric};

use crate::{Error, wait::await_condition};

/// The label on every namespace a test creates; `cleanup_test_namespaces` deletes by it.
pub const TEST_LABEL: (&str, &str) = ("bitscale.dev/e2e", "true");

/// How long a new namespace may take to get its `default` ServiceAccount from the controller manager.
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// The Pod Security Standard a test namespace enforces (and warns and audits at).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodSecurity {
    /// No restrictions.
    Privileged,
    /// Blocks known privilege escalations; ordinary pods pass without a securityContext.
    Baseline,
    /// Hardened pods only: non-root, no privilege escalation, all capabilities dropped,
    /// `RuntimeDefault` seccomp. What the operator's pods must satisfy in production clusters.
    #[default]
    Restricted,
}

impl PodSecurity {
    /// The level's name in `pod-security.kubernetes.io/*` labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// A namespace created for one test.
#[derive(Clone)]
pub struct TestNamespace {
    /// The namespace's name: the prefix, a dash, and a random suffix.
    pub name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` enforcing [`PodSecurity::Restricted`], and waits until pods can
    /// be created in it (its `default` ServiceAccount exists).
    pub async fn create(client: &Client, prefix: &str) -> Result<Self, Error> {
        Self::create_with(client, prefix, PodSecurity::default()).await
    }

    /// Like [`TestNamespace::create`], at the given Pod Security level.
    pub async fn create_with(client: &Client, prefix: &str, level: PodSecurity) -> Result<Self, Error> {
        let suffix: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(6)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        // Namespace names are DNS labels: at most 63 characters, lowercase, no leading/trailing dash.
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(63 - suffix.len() - 1)
            .collect();
        let prefix = prefix.trim_matches('-');
        let name = if prefix.is_empty() {
            format!("test-{suffix}")
        } else {
            format!("{prefix}-{suffix}")
        };

        let level = level.as_str();
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": {
                    TEST_LABEL.0: TEST_LABEL.1,
                    "pod-security.kubernetes.io/enforce": level,
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "pod-security.kubernetes.io/warn": level,
                    "pod-security.kubernetes.io/audit": level,
                },
            },
        }))
        .map_err(|source| Error::Encode {
            what: "namespace",
            source,
        })?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;

        // Pods are rejected until the ServiceAccount controller has made `default`.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        await_condition(
            accounts,
            "default",
            conditions::is_created(),
            SERVICE_ACCOUNT_TIMEOUT,
        )
        .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Requests deletion of the namespace and everything in it; does not wait for it to be gone.
    pub async fn delete(self) -> Result<(), Error> {
        match Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Requests deletion of every namespace labelled [`TEST_LABEL`], e.g. those left by failed tests.
pub async fn cleanup_test_namespaces(client: &Client) -> Result<usize, Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let selector = ListParams::default().labels(&format!("{}={}", TEST_LABEL.0, TEST_LABEL.1));
    let mut deleted = 0;
    for namespace in namespaces.list(&selector).await? {
        if let Some(name) = namespace.metadata.name {
            namespaces.delete(&name, &DeleteParams::background()).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
