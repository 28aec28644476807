// Package cache owns credinject's two in-memory caches: the credential cache
// (one entry per route and identity, filled by the watcher and read by the
// checker on every request) and the token-result cache (validation results
// keyed by an HMAC of the token). The token cache sits on ristretto (a true
// cache: it evicts and expires), keyed by 64 bits of the HMAC with the whole
// HMAC kept in the item and compared on every hit, so a collision there is a
// miss. The credential cache never evicts and needs no admission policy: it
// is a map keyed exactly by (route, identity), so there is no hash to
// collide.
//
// The package is a leaf: it knows nothing of Envoy, Vault or Kubernetes, and
// it does no I/O.
package cache
