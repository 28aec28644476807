package authz

// Trace attribute keys that more than one part puts on its spans (the
// checker on Check and TokenReview, the watcher on refreshes and Vault
// calls), so one trace query finds an identity's Check and its Vault calls
// alike. Extend, never rename: dashboards and trace queries name them.
const (
	// TraceAttrIdentity is the workload identity, "namespace/serviceaccount".
	TraceAttrIdentity = "credinject.identity"
	// TraceAttrIdentitySource is where the identity came from: token or
	// peer (IdentitySource).
	TraceAttrIdentitySource = "credinject.identity_source"
	// TraceAttrRoute is the route's name ("" for the default route).
	TraceAttrRoute = "credinject.route"
	// TraceAttrResult is the outcome of the span's work (the checker: allow
	// or deny; the watcher: the refresh's or call's result).
	TraceAttrResult = "credinject.result"
)
