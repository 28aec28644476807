// Package events carries credential-rotation notices to credinject over NATS.
// It owns the event format (a CloudEvents 1.0 JSON document of type
// io.credinject.credential.rotated, see FORMAT.md), its validation, a
// Publisher for tools such as `credinject rotate`, and a Subscriber that hands
// valid events, in arrival order, to a Refresher (duplicates dropped, floods
// coalesced to at most one refresh per scope and MinInterval) and asks a
// Resyncer to re-read everything whenever events may have been lost (a
// dropped connection, a reconnect, a full queue, a slow-consumer drop).
//
// Every connection to NATS of credinject's processes is made here (conn.go):
// Credentials turns the credential and TLS files into options,
// KeepConnected keeps a connection for a process's life (the Subscriber and
// the audit bridge), Connect opens one for a one-shot publisher; both
// redact the URL and the server's errors.
//
// It does not know what a credential is, where it lives or how it is cached:
// Refresher and Resyncer are declared here; *watcher.Watcher satisfies both
// and internal/app hands it to the Subscriber. It knows nothing of Envoy or
// Vault (the audit bridge, which reads Vault's audit log, is package
// auditbridge). Events are hints
// that something changed, never carriers of secrets; the periodic refresh of
// the watcher stays the safety net while NATS is unreachable.
package events
