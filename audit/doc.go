// Package audit writes credinject's credential audit trail: JSON lines, one
// record per line, each with "log":"audit" so that they can share stdout
// with other output, or in a file of their own.
//
// Two kinds of records:
//   - lifecycle records (Log.Lifecycle), written as they happen: a
//     credential fetched, rotated, refused, a lease renewed or revoked, an
//     identity forgotten. The credential layer produces them (internal/app
//     turns the watcher's events into Events).
//   - usage records (Log.Use), aggregated: allows per (identity, route,
//     credential version, host) and denies per (reason, identity, route), or
//     per reason alone without a valid token (so forged tokens add no key),
//     each with a count and the first and last time, written once per
//     interval and at shutdown, followed by a flush record. The number of
//     keys per interval is bounded (MaxKeys allow keys and, apart, MaxKeys
//     deny keys, so denies never crowd out an allow); decisions beyond the
//     bound are counted in credinject_audit_dropped_total and in the flush
//     record, never held.
//
// A record never holds a token or a secret: an identity is its
// "namespace/serviceaccount", a token without an identity is a tag (a prefix
// of its per-process HMAC), a credential is its source, Vault path, KV
// version or lease id. The package imports nothing of credinject's but authz;
// it does not know who calls it.
package audit
