package watcher

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
)

// leaseProvider reads any Vault path (a database or cloud secrets engine's
// creds/<role>) as the identity and keeps the response's lease in the
// identity's Held: the executor calls Fetch again at about 2/3 of the
// lease's TTL, and Fetch then renews the lease instead of reading a new
// secret, until Vault caps the renewal at the lease's max TTL; the next
// Fetch reads a new secret and revokes the old lease, so an identity holds
// at most one lease per route (two for the moment of a replacement).
//
// A lease belongs to the Vault token that read it: when the session logs in
// again, the old token (and with it its leases) is revoked after the routes
// were re-read, so a Fetch under a new token reads anew. Forgetting an
// identity revokes its token, and Vault revokes its leases with it.
//
// This is vault/api's LifetimeWatcher's job done by the one executor: the
// schedule stays a pure function on an injected clock, no goroutine per
// lease is needed, and the provider holds no state and no lock of its own
// (the executor never runs two fetches of one identity at once).
type leaseProvider struct {
	vault vault
	clock clock.PassiveClock
	log   *slog.Logger
	audit Auditor
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

var _ Provider = (*leaseProvider)(nil)

func newLeaseProvider(v vault, c clock.PassiveClock, log *slog.Logger, audit Auditor) *leaseProvider {
	if audit == nil {
		audit = nopAuditor{}
	}
	return &leaseProvider{vault: v, clock: c, log: log, audit: audit}
}

func (p *leaseProvider) Fetch(ctx context.Context, f Fetch) (Credential, error) {
	h := f.Held
	if h == nil {
		h = &Held{}
	}
	old := h.lease
	tok, err := f.Tokens.VaultToken(ctx, false)
	if err != nil {
		return Credential{}, err
	}
	if old != nil && !f.Anew && old.token == tok && old.renewable && !old.final && p.clock.Now().Before(old.expires) {
		if c, ok := p.renew(ctx, h, f.Identity, f.Route.Name); ok {
			return c, nil
		}
	}
	return p.read(ctx, h, f)
}

// renew extends h's lease; false means read a new secret instead (Vault no
// longer knows the lease, or refused the renewal).
func (p *leaseProvider) renew(ctx context.Context, h *Held, id authz.Identity, route string) (Credential, bool) {
	l := h.lease
	now := p.clock.Now()
	ttl, err := p.vault.RenewLease(ctx, l.token, l.id, l.ttl)
	if err != nil || ttl <= 0 {
		if errors.Is(err, authz.ErrVaultUnavailable) {
			// Keep serving the lease while it lasts; the executor backs off.
			return Credential{Data: l.data, Expires: l.expires, LeaseID: l.id}, true
		}
		p.log.Info("lease renewal refused; reading a new secret", "lease", leaseName(l.id), "error", err)
		return Credential{}, false
	}
	n := *l
	n.expires = now.Add(ttl)
	n.final = ttl < l.ttl
	h.lease = &n
	p.audit.Lifecycle(Lifecycle{Kind: LeaseRenewed, Identity: id, Route: route, Source: SourceVaultRead, Path: l.path, LeaseID: l.id, TTL: ttl})
	return Credential{Data: n.data, Expires: n.expires, LeaseID: n.id}, true
}

// read reads a new secret at the route's path and revokes the lease it
// replaces when that was taken with the same token (with another token, it
// ends with that token's revocation).
func (p *leaseProvider) read(ctx context.Context, h *Held, f Fetch) (Credential, error) {
	id, rt, old := f.Identity, f.Route, h.lease
	now := p.clock.Now()
	path := authz.ExpandPath(rt.Path, id)
	s, err := readAs(ctx, p.vault, f.Tokens, path)
	if err != nil {
		return Credential{}, err
	}
	tok, err := f.Tokens.VaultToken(ctx, false)
	if err != nil {
		return Credential{}, err
	}
	n := &lease{id: s.LeaseID, token: tok, data: s.Data, renewable: s.Renewable,
		ttl: time.Duration(s.LeaseDuration) * time.Second, path: path}
	c := Credential{LeaseID: n.id, Data: n.data}
	if n.id != "" && n.ttl > 0 {
		n.expires = now.Add(n.ttl)
		c.Expires = n.expires
	}
	h.lease = n
	if old != nil && old.id != "" && old.id != n.id && old.token == tok {
		p.revoke(ctx, tok, id, rt.Name, old, "replaced")
	}
	return c, nil
}

// revoke revokes l with token, for cause (the lease_revoked record's).
func (p *leaseProvider) revoke(ctx context.Context, token string, id authz.Identity, route string, l *lease, cause string) {
	if err := p.vault.RevokeLease(ctx, token, l.id); err != nil {
		// Counted by the client; the lease ends at its TTL.
		p.log.Warn("could not revoke a lease; it ends at its TTL", "identity", id.Key(), "route", route, "lease", leaseName(l.id), "error", err)
		return
	}
	p.audit.Lifecycle(Lifecycle{Kind: LeaseRevoked, Identity: id, Route: route, Source: SourceVaultRead, Path: l.path, LeaseID: l.id, Cause: cause})
}

// drop ends what h holds for (id, route): with revoke, its lease is
// revoked now with the token that read it (the route was removed or
// changed, the identity stays); without, its token's revocation ends it
// (the identity is let go) and only the record is written.
func (p *leaseProvider) drop(ctx context.Context, h *Held, id authz.Identity, route string, revoke bool) {
	l := h.lease
	h.lease = nil
	if l == nil || l.id == "" {
		return
	}
	if revoke {
		p.revoke(ctx, l.token, id, route, l, "route_removed")
		return
	}
	p.audit.Lifecycle(Lifecycle{Kind: LeaseRevoked, Identity: id, Route: route, Source: SourceVaultRead, Path: l.path, LeaseID: l.id, Cause: "token_revoked"})
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
