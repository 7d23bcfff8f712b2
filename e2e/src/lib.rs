//! A local Kubernetes control plane assembled from upstream parts, for tests and the demo.
