package audit

import (
	"time"
)

// Record kinds: the "record" field of every line. Extend, never rename:
// readers of the trail match on them.
const (
	KindFetched      = "fetched"
	KindRotated      = "rotated"
	KindRefused      = "refused"
	KindLeaseRenewed = "lease_renewed"
	KindLeaseRevoked = "lease_revoked"
	KindForgotten    = "forgotten"
	KindUsage        = "usage"
	KindDenied       = "denied"
	KindFlush        = "flush"
)

// Kinds lists every record kind (the record label of
// credinject_audit_records_total).
var Kinds = []string{KindFetched, KindRotated, KindRefused, KindLeaseRenewed, KindLeaseRevoked, KindForgotten, KindUsage, KindDenied, KindFlush}

// header starts every record.
type header struct {
	Time   time.Time `json:"time"`
	Log    string    `json:"log"` // always "audit"
	Record string    `json:"record"`
}

// Event is a lifecycle record of the credential layer. Kind is one of the
// lifecycle kinds (fetched … forgotten); the other fields are set as the
// kind has them. No field may hold a token or a secret value.
type Event struct {
	Kind string `json:"-"`
	// Identity is "namespace/serviceaccount".
	Identity string `json:"identity"`
	// Route is the route's name ("" for the default route); empty and
	// meaningless for forgotten.
	Route string `json:"route"`
	// Source is the route's credential source (kv, vault-read, …) and Path
	// the Vault path read (a KV v2 data path, or the full path).
	Source string `json:"source,omitempty"`
	Path   string `json:"path,omitempty"`
	// Version is the KV v2 version obtained (0: the source has none), and
	// OldVersion the one it replaced (rotated).
	Version    int64 `json:"version,omitzero"`
	OldVersion int64 `json:"oldVersion,omitzero"`
	// LeaseID is the Vault lease of a leased read (vault-read); OldLeaseID
	// the one it replaced (rotated). Given whole; written as LeaseRef
	// shortens it, never whole.
	LeaseID    string `json:"leaseId,omitempty"`
	OldLeaseID string `json:"oldLeaseId,omitempty"`
	// Trigger is what caused the read: miss, schedule, event or prefetch.
	Trigger string `json:"trigger,omitempty"`
	// Reason is a refusal's deny reason (refused).
	Reason string `json:"reason,omitempty"`
	// Cause says why a lease was revoked (replaced, token_revoked) or an
	// identity forgotten (serviceaccount_deleted, no_token, panic).
	Cause string `json:"cause,omitempty"`
	// TTLSeconds is a renewed lease's new TTL (lease_renewed).
	TTLSeconds int64 `json:"ttlSeconds,omitzero"`
}

type eventRecord struct {
	header
	Event
}

// usageRecord: allows of one (identity, route, version, host) in an interval.
type usageRecord struct {
	header
	Identity string `json:"identity"`
	// IdentitySource: token or peer.
	IdentitySource string    `json:"identity_source,omitempty"`
	Route          string    `json:"route"`
	Version        int64     `json:"version"`
	Host           string    `json:"host"`
	Count          int64     `json:"count"`
	First          time.Time `json:"first"`
	Last           time.Time `json:"last"`
}

// deniedRecord: denies of one (reason, identity, route) in an interval, or
// of one reason without an identity (no valid token), with the tag of the
// last such token as a sample.
type deniedRecord struct {
	header
	Reason   string `json:"reason"`
	Identity string `json:"identity,omitempty"`
	// IdentitySource: token or peer.
	IdentitySource string    `json:"identity_source,omitempty"`
	TokenTag       string    `json:"tokenTag,omitempty"`
	Route          string    `json:"route,omitempty"`
	Count          int64     `json:"count"`
	First          time.Time `json:"first"`
	Last           time.Time `json:"last"`
}

// flushRecord closes an interval's usage records.
type flushRecord struct {
	header
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Usage and Denied count the records written for the interval; Dropped
	// the decisions not aggregated because MaxKeys keys were held.
	Usage   int   `json:"usage"`
	Denied  int   `json:"denied"`
	Dropped int64 `json:"dropped"`
}
