//go:build tools

// Package tools pins Helm, built by ../build.sh (not part of credinject).
package tools

import _ "helm.sh/helm/v4/cmd/helm"
