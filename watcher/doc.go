// Package watcher fills credinject's credential cache. It discovers
// identities (a ServiceAccount informer for the prefetch namespaces, or a miss
// reported by the checker), logs in to Vault *as each identity* (Kubernetes or
// JWT auth, with that identity's own service-account token), reads the
// identity's credential per route, renews the Vault token, re-reads on
// schedule and on demand (rotation events), and writes the cache.
//
// Vault, not credinject, decides who may read what: the watcher never holds a
// Vault token more powerful than the identity's own. It does not answer
// requests and knows nothing of Envoy or NATS.
package watcher
