//go:build tools

// Package kube pins the Kubernetes binaries that the test bed builds.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
