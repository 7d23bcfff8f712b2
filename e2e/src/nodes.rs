//! The fake nodes KWOK plays: a CPU pool and a GPU pool, labelled as Bitscale's HardwareClasses expect.

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, api::PostParams};

use crate::Error;

/// The annotation KWOK is told to manage nodes by; nodes without it are left alone.
pub const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// The label naming a node's pool.
pub const POOL_LABEL: &str = "bitscale.dev/pool";

/// The extended resource GPU nodes advertise.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// One fake node.
#[derive(Clone, Copy, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: &'static str,
    /// Value of [`POOL_LABEL`].
    pub pool: &'static str,
    /// CPU cores, allocatable and capacity.
    pub cpu: &'static str,
    /// Memory, allocatable and capacity.
    pub memory: &'static str,
    /// GPUs ([`GPU_RESOURCE`]); GPU nodes are also tainted `nvidia.com/gpu=present:NoSchedule`.
    pub gpus: u32,
}

/// The cluster's nodes: three 16-CPU/64Gi CPU nodes and two 8-CPU/32Gi nodes with one GPU each.
pub const NODES: [NodeSpec; 5] = [
    NodeSpec {
        name: "cpu-0",
        pool: "cpu",
        cpu: "16",
        memory: "64Gi",
        gpus: 0,
    },
    NodeSpec {
        name: "cpu-1",
        pool: "cpu",
        cpu: "16",
        memory: "64Gi",
        gpus: 0,
    },
    NodeSpec {
        name: "cpu-2",
        pool: "cpu",
        cpu: "16",
        memory: "64Gi",
        gpus: 0,
    },
    NodeSpec {
        name: "gpu-0",
        pool: "gpu",
        cpu: "8",
        memory: "32Gi",
        gpus: 1,
    },
    NodeSpec {
        name: "gpu-1",
        pool: "gpu",
        cpu: "8",
        memory: "32Gi",
        gpus: 1,
    },
];

impl NodeSpec {
    /// The Node object, status included (the API server keeps status given at creation for nodes).
    pub fn manifest(&self) -> Result<Node, Error> {
        let mut resources = serde_json::json!({ "cpu": self.cpu, "memory": self.memory, "pods": "110" });
        let mut taints = Vec::new();
        if self.gpus > 0 {
            resources[GPU_RESOURCE] = self.gpus.to_string().into();
            taints
                .push(serde_json::json!({ "key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule" }));
        }
        let node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    POOL_LABEL: self.pool,
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
                "annotations": { KWOK_ANNOTATION.0: KWOK_ANNOTATION.1 },
            },
            "spec": { "taints": taints },
            "status": { "allocatable": resources, "capacity": resources },
        });
        serde_json::from_value(node).map_err(|source| Error::Encode {
            what: "node manifest",
            source,
        })
    }
}

/// Creates every node in [`NODES`] that does not exist yet.
pub async fn register(client: &Client) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    for spec in &NODES {
        match nodes.create(&PostParams::default(), &spec.manifest()?).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a node is Ready and free of the taints the node lifecycle controller sets until it is.
pub fn is_ready(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let untainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_none_or(|ts| !ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
    ready && untainted
}
