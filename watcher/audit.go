package watcher

import (
	"strings"
	"time"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// Auditor receives the credential layer's lifecycle records, as they
// happen (internal/app hands over the audit trail). Lifecycle is called
// from the executor's workers, never with a lock held; it must not block for
// long. A record never holds a token or a credential's value.
type Auditor interface {
	Lifecycle(e Lifecycle)
}

// AuditorFunc adapts a function to Auditor.
type AuditorFunc func(e Lifecycle)

// Lifecycle calls f.
func (f AuditorFunc) Lifecycle(e Lifecycle) { f(e) }

// LifecycleKind names a lifecycle record. Extend, never rename: they are
// the audit trail's "record" values.
type LifecycleKind string

// The lifecycle kinds.
const (
	// Fetched: the first credential of (identity, route) since the watcher
	// began holding it (or since it was refused).
	Fetched LifecycleKind = "fetched"
	// Rotated: a read brought a new credential (another value, KV version
	// or lease) in place of the one held.
	Rotated LifecycleKind = "rotated"
	// Refused: Vault (or a token endpoint) refused the identity, or holds
	// nothing usable; Reason says which. Written when the refusal starts,
	// not again while it lasts.
	Refused LifecycleKind = "refused"
	// LeaseRenewed: a leased credential's lease was extended (vault-read).
	LeaseRenewed LifecycleKind = "lease_renewed"
	// LeaseRevoked: a lease ended before its TTL: replaced by a new read
	// (Cause "replaced"), with the identity's Vault token when the
	// identity was let go (Cause "token_revoked"), or because its route
	// was removed or changed (Cause "route_removed").
	LeaseRevoked LifecycleKind = "lease_revoked"
	// Forgotten: the watcher stopped holding the identity and evicted its
	// credentials; Cause is serviceaccount_deleted, no_token or panic.
	Forgotten LifecycleKind = "forgotten"
)

// Lifecycle is one lifecycle record: the fields its Kind has are set.
type Lifecycle struct {
	Kind     LifecycleKind
	Identity authz.Identity
	// Route is the route's name ("" for the default route).
	Route  string
	Source Source
	// Path is the Vault path read: the KV v2 data path (kv,
	// oauth2-client-credentials) or the route's full path.
	Path string
	// Version and OldVersion are KV v2 versions (0: the source has none).
	Version, OldVersion int64
	// LeaseID and OldLeaseID are Vault lease ids (vault-read).
	LeaseID, OldLeaseID string
	// Trigger is what started the read (its String is the audit trail's
	// trigger: miss, schedule, event, prefetch).
	Trigger Trigger
	// Reason is a refusal's deny reason.
	Reason authz.Reason
	// Cause says why a lease was revoked or an identity forgotten.
	Cause string
	// TTL is a renewed lease's new duration.
	TTL time.Duration
}

type nopAuditor struct{}

func (nopAuditor) Lifecycle(Lifecycle) {}

// origin says where a stored entry came from, for its lifecycle record.
type origin struct {
	trigger Trigger
	source  Source
	path    string
	lease   string
}

// held is what the audit trail last heard of one route of an identity.
type held struct {
	version int64
	lease   string
	value   string // compared, never recorded
	refused authz.Reason
}

// vaultPath is the Vault path a route reads for id.
func (w *Watcher) vaultPath(rt Route, id authz.Identity) string {
	p := authz.ExpandPath(rt.Path, id)
	switch rt.Source {
	case SourceKV, SourceOAuth2, "":
		if rt.Vault.KVMount != "" {
			return rt.Vault.KVMount + "/data/" + p
		}
		return w.cfg.KVMount + "/data/" + p
	}
	return p
}

// lifecycle decides the record that storing e for route means, if any, and
// remembers e. Called with x.mu held.
func (x *identity) lifecycle(rs *routeState, e *cache.Entry, o origin) (Lifecycle, bool) {
	prev, had := rs.held, rs.hasHeld
	ev := Lifecycle{Identity: x.Identity, Route: rs.name, Source: o.source, Path: o.path, Trigger: o.trigger}
	if e.Denied != authz.ReasonNone {
		if had && prev.refused == e.Denied {
			return Lifecycle{}, false
		}
		rs.held, rs.hasHeld = held{refused: e.Denied}, true
		ev.Kind, ev.Reason = Refused, e.Denied
		return ev, true
	}
	cur := held{version: e.Version, lease: o.lease, value: injected(e)}
	rs.held, rs.hasHeld = cur, true
	ev.Version, ev.LeaseID = cur.version, cur.lease
	switch {
	case !had || prev.refused != authz.ReasonNone:
		ev.Kind = Fetched
	case prev.value != cur.value || prev.version != cur.version || prev.lease != cur.lease:
		ev.Kind, ev.OldVersion, ev.OldLeaseID = Rotated, prev.version, prev.lease
	default:
		return Lifecycle{}, false
	}
	return ev, true
}

// injected is every rendered value of e in one string, so a change of any
// (a minted token, a rotated key) reads as a rotation.
func injected(e *cache.Entry) string {
	sh := e.Shapes
	if sh == nil {
		return e.Value
	}
	var b strings.Builder
	b.WriteString(e.Value)
	for _, fs := range [][]cache.Field{sh.Headers, sh.Query, sh.Metadata} {
		for _, f := range fs {
			b.WriteString("\x00" + f.Value)
		}
	}
	if k := sh.Sign; k != nil {
		b.WriteString("\x00" + k.AccessKey + "\x00" + k.SecretKey + "\x00" + k.SessionToken)
	}
	return b.String()
}
