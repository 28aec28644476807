// Package auditbridge turns Vault's audit stream into credential-rotation
// events: every successful write or delete of a watched KV v2 secret becomes
// an events.Rotation published on NATS, so a key changed with a plain
// `vault kv put` reaches every credinject replica with no extra step.
//
// It owns the reading of audit lines (a TCP listener for Vault's socket audit
// device, a follower for its file device), their parsing (ParseLine, a pure
// function of a line and a Matcher) and a bounded, coalescing buffer in
// front of the NATS publisher that survives NATS outages. It does not own the
// event format (package events) and never reads a secret: Vault HMACs the
// audit entry's data, and the bridge only looks at the request's path and
// operation, which Vault writes in clear.
//
// See README.md for the Vault side of the setup and the limits.
package auditbridge
