// Package checker is credinject's hot path: it answers Envoy ext_authz (gRPC
// envoy.service.auth.v3) and HTTP forward-auth requests. It validates the
// workload's service-account token (offline against the issuer's keys first,
// then TokenReview in tokenreview mode; results cached, and revoked with the
// ServiceAccount or the bound object), picks the route by host, and serves the identity's credential from
// the credential cache; on a miss it asks a CredentialSource that the caller
// provides (the watcher), and it tells a Recorder, if given, of each decision
// (the audit trail's usage records; never the token). It fails closed: every path ends in a decision, and
// the workload's token never appears in a response or a log.
//
// It does not talk to Vault, and it does not fill the cache on its own.
package checker
