package watcher

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
)

// leaseProvider reads any Vault path (a database or cloud secrets engine's
// creds/<role>) as the identity and keeps the response's lease: the loop
// calls Fetch again at about 2/3 of the lease's TTL, and Fetch then renews
// the lease instead of reading a new secret, until Vault caps the renewal at
// the lease's max TTL; the next Fetch reads a new secret and revokes the old
// lease, so an identity holds at most one lease per route (two for the
// moment of a replacement).
//
// A lease belongs to the Vault token that read it: when the session logs in
// again, the old token (and with it its leases) is revoked after the routes
// were re-read, so a Fetch under a new token reads anew. Forgetting an
// identity revokes its token, and Vault revokes its leases with it.
//
// This is vault/api's LifetimeWatcher's job done by the one refresh loop:
// the schedule stays a pure function on an injected clock, and no goroutine
// per lease is needed.
type leaseProvider struct {
	vault vault
	clock clock.PassiveClock
	log   *slog.Logger
	audit Auditor

	mu     sync.Mutex
	leases map[string]*lease // route NUL identity key
	// fetching serialises the Fetches of one key (a scheduled renewal and
	// an event's re-read), held across Vault I/O on purpose, so that two
	// reads never race and leave a lease nobody revokes.
	fetching map[string]*sync.Mutex
}

// lease is one route's current leased secret for one identity.
type lease struct {
	id      string
	token   string // the Vault token that read it
	data    map[string]any
	ttl     time.Duration // the lease's duration as first granted
	expires time.Time
	// final: a renewal came back shorter than asked (the max TTL is near):
	// the next Fetch reads a new secret.
	final     bool
	renewable bool
	// path is where it was read (for the audit trail).
	path string
}

var (
	_ Provider    = (*leaseProvider)(nil)
	_ Releaser    = (*leaseProvider)(nil)
	_ Invalidator = (*leaseProvider)(nil)
)

func newLeaseProvider(v vault, c clock.PassiveClock, log *slog.Logger, audit Auditor) *leaseProvider {
	if audit == nil {
		audit = nopAuditor{}
	}
	return &leaseProvider{vault: v, clock: c, log: log, audit: audit, leases: map[string]*lease{}, fetching: map[string]*sync.Mutex{}}
}

func leaseKey(route string, id authz.Identity) string { return route + "\x00" + id.Key }

func (p *leaseProvider) Fetch(ctx context.Context, tokens TokenSource, id authz.Identity, rt Route) (Credential, error) {
	key := leaseKey(rt.Name, id)
	p.mu.Lock()
	f := p.fetching[key]
	if f == nil {
		f = &sync.Mutex{}
		p.fetching[key] = f
	}
	p.mu.Unlock()
	f.Lock()
	defer f.Unlock()
	p.mu.Lock()
	old := p.leases[key]
	p.mu.Unlock()
	tok, err := tokens.VaultToken(ctx, false)
	if err != nil {
		return Credential{}, err
	}
	if old != nil && old.token == tok && old.renewable && !old.final && p.clock.Now().Before(old.expires) {
		if c, ok := p.renew(ctx, key, old, id, rt.Name); ok {
			return c, nil
		}
	}
	return p.read(ctx, tokens, key, id, rt, old)
}

// renew extends l; false means read a new secret instead (Vault no longer
// knows the lease, or refused the renewal).
func (p *leaseProvider) renew(ctx context.Context, key string, l *lease, id authz.Identity, route string) (Credential, bool) {
	now := p.clock.Now()
	ttl, err := p.vault.RenewLease(ctx, l.token, l.id, l.ttl)
	if err != nil || ttl <= 0 {
		if errors.Is(err, authz.ErrVaultUnavailable) {
			// Keep serving the lease while it lasts; the loop backs off.
			return Credential{Data: l.data, Expires: l.expires, LeaseID: l.id}, true
		}
		p.log.Info("lease renewal refused; reading a new secret", "lease", leaseName(l.id), "error", err)
		return Credential{}, false
	}
	n := *l
	n.expires = now.Add(ttl)
	n.final = ttl < l.ttl
	p.mu.Lock()
	if p.leases[key] == l {
		p.leases[key] = &n
	}
	p.mu.Unlock()
	p.audit.Lifecycle(Lifecycle{Kind: LeaseRenewed, Identity: id, Route: route, Source: SourceVaultRead, Path: l.path, LeaseID: l.id, TTL: ttl})
	return Credential{Data: n.data, Expires: n.expires, LeaseID: n.id}, true
}

// read reads a new secret at the route's path and revokes old's lease when
// it was taken with the same token (with another token, it ends with that
// token's revocation).
func (p *leaseProvider) read(ctx context.Context, tokens TokenSource, key string, id authz.Identity, rt Route, old *lease) (Credential, error) {
	now := p.clock.Now()
	s, err := readAs(ctx, p.vault, tokens, authz.ExpandPath(rt.Path, id))
	if err != nil {
		return Credential{}, err
	}
	tok, err := tokens.VaultToken(ctx, false)
	if err != nil {
		return Credential{}, err
	}
	path := authz.ExpandPath(rt.Path, id)
	n := &lease{id: s.LeaseID, token: tok, data: s.Data, renewable: s.Renewable,
		ttl: time.Duration(s.LeaseDuration) * time.Second, path: path}
	c := Credential{LeaseID: n.id}
	if n.id != "" && n.ttl > 0 {
		n.expires = now.Add(n.ttl)
		c.Expires = n.expires
	}
	c.Data = n.data
	p.mu.Lock()
	p.leases[key] = n
	p.mu.Unlock()
	if old != nil && old.id != "" && old.id != n.id && old.token == tok {
		if err := p.vault.RevokeLease(ctx, tok, old.id); err != nil {
			// Counted by the client; the lease ends at its TTL.
			p.log.Warn("could not revoke a replaced lease; it ends at its TTL", "identity", id.Key, "route", rt.Name, "lease", leaseName(old.id), "error", err)
		} else {
			p.audit.Lifecycle(Lifecycle{Kind: LeaseRevoked, Identity: id, Route: rt.Name, Source: SourceVaultRead, Path: old.path, LeaseID: old.id, Cause: "replaced"})
		}
	}
	return c, nil
}

// Invalidate makes the next Fetch read a new secret (and revoke this lease)
// instead of renewing it: a rotation event asks for a new value.
func (p *leaseProvider) Invalidate(id authz.Identity, route string) {
	key := leaseKey(route, id)
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.leases[key]; l != nil {
		n := *l
		n.final = true
		p.leases[key] = &n
	}
}

// Release drops the identity's lease state (its token's revocation revokes
// the lease in Vault).
func (p *leaseProvider) Release(id authz.Identity, route string) {
	p.mu.Lock()
	l := p.leases[leaseKey(route, id)]
	delete(p.leases, leaseKey(route, id))
	delete(p.fetching, leaseKey(route, id))
	p.mu.Unlock()
	if l != nil && l.id != "" {
		p.audit.Lifecycle(Lifecycle{Kind: LeaseRevoked, Identity: id, Route: route, Source: SourceVaultRead, Path: l.path, LeaseID: l.id, Cause: "token_revoked"})
	}
}

// leaseName is a lease id without its unique suffix, for logs: the path it
// came from is enough to tell which one, and the id is not a secret to print
// whole.
func leaseName(id string) string {
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == '/' {
			return id[:i]
		}
	}
	return ""
}
