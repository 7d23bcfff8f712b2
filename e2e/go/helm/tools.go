//go:build tools

// Package tools pins the Helm command the e2e harness builds from this module.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
