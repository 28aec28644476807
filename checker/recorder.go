package checker

import (
	"encoding/binary"
	"time"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// Recorder is told of every decision, once, as it is made: the audit
// trail's usage records (internal/app hands over the audit log). Record is
// on the hot path: it must not block on I/O, should not allocate for a key
// it already holds, and may keep u's strings but nothing else of the
// request.
type Recorder interface {
	Record(u Use)
}

// RecorderFunc adapts a function to Recorder.
type RecorderFunc func(u Use)

// Record calls f.
func (f RecorderFunc) Record(u Use) { f(u) }

// Use is one decision as the audit trail sees it. It never holds the token.
type Use struct {
	// At is when the check started (the checker's clock).
	At time.Time
	// Reason is the deny reason; authz.ReasonNone for an allow.
	Reason authz.Reason
	// Identity is the token's or the peer's identity; zero when neither
	// named a valid one.
	Identity authz.Identity
	// IdentitySource is where the identity came from (or was looked for).
	IdentitySource authz.IdentitySource
	// Route is the matched route's name ("" for the default route, and
	// for a deny before routing).
	Route string
	// Host is the request's host as the gateway sent it.
	Host string
	// Version is the served credential's version (allow only; 0 when its
	// source has none).
	Version int64
	// TokenTag is the first 4 bytes of the token's per-process HMAC, as in
	// the debug log's "token" (0 without a token).
	TokenTag uint32
}

// record tells the Recorder, if any, of d.
func (c *Checker) record(at time.Time, d Decision, route, host string, mac *cache.MAC) {
	u := Use{At: at, Reason: d.Reason, Identity: d.Identity, IdentitySource: d.Source, Route: route, Host: host,
		TokenTag: binary.BigEndian.Uint32(mac[:4])}
	if d.Entry != nil {
		u.Version = d.Entry.Version
	}
	c.cfg.Recorder.Record(u)
}
