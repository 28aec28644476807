// Package cache owns credinject's two in-memory caches: the credential cache
// (one entry per route and identity, filled by the watcher and read by the
// checker on every request) and the token-result cache (validation results
// keyed by an HMAC of the token). Both sit on ristretto, which shards its
// store; both key ristretto by a 64-bit hash and keep the full key inside the
// entry, so a hash collision is a miss, never another identity's answer.
//
// The package is a leaf: it knows nothing of Envoy, Vault or Kubernetes, and
// it does no I/O.
package cache
