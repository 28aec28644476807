//go:build tools

// Package tools pins controller-gen, built by ../build.sh (not part of
// credinject).
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
