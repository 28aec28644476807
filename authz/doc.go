// Package authz is credinject's shared vocabulary: the workload Identity a
// service-account token maps to, the closed set of deny Reasons with their
// HTTP status, the typed deny Error that carries a Reason from where a
// decision arises to where the answer is written, and the Scope a rotation
// event names.
//
// It imports nothing of credinject and does no I/O. Every other package may
// import it; it knows nothing of Envoy, Vault, Kubernetes or NATS.
package authz
