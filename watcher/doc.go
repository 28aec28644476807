// Package watcher is credinject's credential layer: it fills the credential
// cache and keeps it fresh.
//
// Its parts, one file each:
//   - session.go: a session owns one identity's Vault token. It logs in with
//     the identity's own service-account token (presented on a request, or
//     minted by TokenRequest for a prefetched identity), renews the token past
//     half its life, logs in again on schedule (Vault re-checks a role's
//     bindings only at login) and revokes the token it replaces.
//   - provider.go: a Provider obtains one kind of credential for (route,
//     identity) with the session's token. KV v2 is the provider today.
//   - refresher.go: one refresher per identity re-reads its routes on a
//     schedule (NextRefresh, a pure function), on a resync and with backoff
//     after failures, and stores the outcome in order: a read that started
//     later always wins, and a read that ends after its identity was
//     forgotten is dropped. Failures are served stale until staleGrace.
//   - watcher.go: the registry of identities and the API the other parts
//     call: Credential (the checker's miss path), Refresh and ResyncAll
//     (rotation events), Prefetch and Forget (the ServiceAccount informer).
//   - vault.go: the four Vault calls behind a small interface declared here,
//     so the state machines are table-tested with a fake Vault and a fake
//     clock.
//
// Vault, not credinject, decides who may read what: the watcher never holds a
// Vault token more powerful than the identity's own. It answers no requests
// and knows nothing of Envoy or NATS.
package watcher
