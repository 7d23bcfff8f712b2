//go:build tools

// Package tools pins the KWOK command the e2e harness builds from this module.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
