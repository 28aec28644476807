// Package watcher is credinject's credential layer: it fills the credential
// cache and keeps it fresh.
//
// # How a refresh flows
//
// Credential work starts in one place. A request's miss (Credential), a
// rotation event (Refresh, RefreshBatch, ResyncAll), a prefetch (Prefetch),
// a route set change (SetRoutes), a deleted ServiceAccount (Forget) and the
// schedule itself each record a request on the identity (what, for which
// route, and why: a typed Trigger) and add the identity to the executor's
// client-go work queue; a caller that needs the answer (a miss, an event)
// waits for it. The executor (scheduler.go) runs each identity on one of a
// fixed pool of workers (vault.concurrency): the queue holds an identity
// once however often it is added, so requests that wait together coalesce
// into one run, each route read with the strongest trigger asked for it;
// it never gives one identity to two workers at once, so a read that
// starts later stores later, and the workers are the bound on concurrent
// Vault calls. A timer heap on the injected clock adds due identities; no
// goroutine per identity.
//
// One run is read top to bottom in refresh.go: run takes the requests,
// plan decides the reads (reconcile drops routes removed or changed; a
// miss's read is skipped when the entry is fresh again, a wildcard's when
// a lease or minted token is still valid), a scheduled full refresh checks
// the Vault token first, read fetches each route through its Provider and
// stores the outcome, the session revokes the Vault tokens it replaced
// (retire, once per run), settle lets the identity go or schedules its next
// turn (the pure schedule in schedule.go, with backoff after a failure),
// and answer tells the callers waiting. classify is the one place an error
// is sorted into an outcome (refused, no token, retry, no credential, ok);
// every step switches on it.
//
// # Who owns what
//
//   - identity.go: an identity owns its session (Vault token), its routes'
//     state (a provider's Held, such as a lease; what the audit trail heard;
//     when a credential is due) and its schedule. Only its run changes them.
//   - session.go: a session logs in with the identity's own service-account
//     token (presented on a request, or minted by TokenRequest for a
//     prefetched identity and not kept), renews the Vault token at two
//     thirds of its life (±10 %), logs in again when it cannot be renewed or
//     every relogin interval (Vault re-checks a role's bindings only at
//     login), and revokes the token it replaced at the end of the run.
//   - provider.go, lease.go, oauth2.go, idtoken.go: a Provider obtains one
//     kind of credential for (identity, route): KV v2, a leased read of any
//     path (renewed, re-read before max TTL, replaced lease revoked), an
//     OAuth2 access token (client credentials), a Vault identity token.
//   - prefetch.go: the Prefetcher follows the ServiceAccount informer; it
//     paces the first pass (prefetch.concurrency identities asked of the
//     executor at once) and does no credential work itself.
//   - audit.go: the lifecycle records handed to an Auditor; never a token or
//     a value. vault.go: the Vault calls behind a small interface, so runs
//     are table-tested with a fake Vault and a fake clock.
//
// # Locks
//
// Three, never nested except as written: Watcher.mu (the registry of
// identities), scheduler.mu (the timer heap and each identity's place on
// it), and each identity's mu (its pending requests, the tokens a request
// offers, whether it was let go), taken before the credential cache's own
// lock when a run stores an entry. None is held across I/O. The work queue
// has its own, inside client-go.
//
// Vault, not credinject, decides who may read what: the watcher never holds a
// Vault token more powerful than the identity's own. It answers no requests
// and knows nothing of Envoy or NATS; an OAuth2 client secret is sent to its
// token endpoint and nowhere else.
package watcher
