//go:build tools

// Package tools pins the Prometheus command the e2e harness builds from this module (with only
// its Kubernetes service discovery: -tags remove_all_sd,enable_kubernetes_sd).
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
