// Package watcher is credinject's credential layer: it fills the credential
// cache and keeps it fresh.
//
// Its parts, one file each:
//   - session.go: a session owns one identity's Vault token. It logs in with
//     the identity's own service-account token (presented on a request, or
//     minted by TokenRequest for a prefetched identity, used for that login
//     and not kept), renews the token at two thirds of its life (±10 %),
//     logs in again only when it cannot be renewed or every relogin interval
//     (the first time at a random point within it, so identities that logged
//     in together do not log in again together; Vault re-checks a role's
//     bindings only at login; the plan is a pure function in schedule.go)
//     and revokes the token it replaces once the refresh
//     that replaced it is done (the leases read with it end then), and its
//     tokens when the identity is forgotten.
//   - provider.go: a Provider obtains one kind of credential for (route,
//     identity) with the session's token; each route names its source. KV v2
//     (kv, the default) is there; lease.go keeps a leased read of any path
//     (vault-read: renewed, re-read before max TTL, replaced lease revoked),
//     oauth2.go mints OAuth2 access tokens with the client credentials grant
//     from the identity's client in KV (oauth2-client-credentials), and
//     idtoken.go mints identity tokens for the identity's Vault entity
//     (vault-identity-token).
//   - refresher.go: each identity's refresher re-reads its routes on a
//     schedule (FullRefreshAt, a pure function: the read interval, longer
//     while rotation events arrive, or the session's token when due), on a
//     resync and with backoff
//     after failures, and stores the outcome in order: a read that started
//     later always wins, and a read that ends after its identity was
//     forgotten is dropped. Failures are served stale until staleGrace, and
//     a credential that expires (a lease, a token) is refreshed alone before
//     it does and never served past it.
//   - scheduler.go: the refreshers share one scheduler, not a goroutine
//     each: a timer heap on the injected clock hands due identities to a
//     client-go work queue drained by Concurrency workers, so 100,000
//     identities cost no goroutines and a hanging one holds one worker.
//   - watcher.go: the registry of identities and the API the other parts
//     call: Credential (the checker's miss path), Refresh and ResyncAll
//     (rotation events), Prefetch and Forget (the ServiceAccount informer).
//   - audit.go: the lifecycle records (fetched, rotated, refused, lease
//     renewed and revoked, forgotten) handed to an Auditor declared here;
//     internal/app joins it to the audit trail. Never a token or a value.
//   - vault.go: the Vault calls (login, renew, read, revoke, lease renew and
//     revoke) behind a small interface declared here,
//     so the state machines are table-tested with a fake Vault and a fake
//     clock.
//
// Vault, not credinject, decides who may read what: the watcher never holds a
// Vault token more powerful than the identity's own. It answers no requests
// and knows nothing of Envoy or NATS; an OAuth2 client secret is sent to its
// token endpoint and nowhere else.
package watcher
