// Package cache owns credinject's two in-memory caches: the credential cache
// (one entry per route and identity, filled by the watcher and read by the
// checker on every request) and the token-result cache (validation results
// keyed by an HMAC of the token). Both are sharded maps keyed by a 64-bit
// hash that keep the full key inside the entry and compare it on every hit,
// so a hash collision is never another identity's answer: the token cache
// sits on ristretto (a true cache: it evicts and expires) and a collision
// there is a miss; the credential cache never evicts, needs no admission
// policy, and keeps colliding keys side by side.
//
// The package is a leaf: it knows nothing of Envoy, Vault or Kubernetes, and
// it does no I/O.
package cache
