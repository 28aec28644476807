// Package devstack brings up what `credinject dev` needs around credinject on
// loopback: a real Vault server (the test bed's vaultdev binary, built and
// cached on first use), an embedded NATS server, a local token issuer whose
// tokens look like Kubernetes service-account tokens, and Vault's JWT auth
// method configured to trust that issuer with a templated policy that confines
// each identity to its own secret/data/egress/<namespace>/<serviceaccount>.
//
// It owns the processes and the Vault bootstrap; it does not own credinject
// itself (cmd/credinject wires internal/app with Stack.Config) and it is not a
// test helper: the product binary links it, so it must never import
// internal/testenv (which imports testing). The Vault and NATS starters are
// small on purpose and duplicate a little of testenv's; testenv configures
// Vault for Kubernetes auth against a real API server, devstack for JWT auth
// against its own issuer.
package devstack
