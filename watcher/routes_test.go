package watcher

import (
	"context"
	"strings"
	"testing"

	"github.com/credinject/credinject/authz"
)

var (
	kvRoute    = Route{Name: "", Path: "egress/{namespace}/{serviceaccount}", Header: "authorization", Value: "Bearer {api_key}"}
	leaseRoute = Route{Name: "db", Source: SourceVaultRead, Path: "creds/{namespace}/{serviceaccount}", Header: "x-db", Value: "{username}"}
)

// TestSetRoutes: a route set change is ordinary work of the executor. A
// route added is read at once by a prefetched identity, on its first miss
// by a request-only one; a route removed drops its entries and revokes its
// lease; a route changed is read again under its new definition; an
// unchanged route keeps its state and costs nothing.
func TestSetRoutes(t *testing.T) {
	for name, tc := range map[string]struct {
		before, after []Route
		check         func(t *testing.T, r *rig, prefetched, requested authz.Identity, reads, revoked int)
	}{
		"add": {
			before: []Route{kvRoute},
			after:  []Route{kvRoute, leaseRoute},
			check: func(t *testing.T, r *rig, p, q authz.Identity, reads, _ int) {
				if e := r.entry("db", p); e == nil || !strings.HasPrefix(e.Value, "u") {
					t.Errorf("prefetched: db %+v; want read at once", e)
				}
				if e := r.entry("db", q); e != nil {
					t.Errorf("request-only: db %+v; want nothing before a request", e)
				}
				if reads != 1 {
					t.Errorf("%d reads; want 1 (the prefetched identity's new route)", reads)
				}
			},
		},
		"remove": {
			before: []Route{kvRoute, leaseRoute},
			after:  []Route{kvRoute},
			check: func(t *testing.T, r *rig, p, q authz.Identity, reads, revoked int) {
				for _, id := range []authz.Identity{p, q} {
					if e := r.entry("db", id); e != nil {
						t.Errorf("%s: db %+v after its removal", id.Key(), e)
					}
					if e := r.entry("", id); e == nil || e.Value != "Bearer k" {
						t.Errorf("%s: the remaining route lost its entry: %+v", id.Key(), e)
					}
				}
				if reads != 0 || revoked != 2 || r.vault.liveLeases() != 0 {
					t.Errorf("%d reads, %d leases revoked, %d live; want 0, 2 (one each), 0", reads, revoked, r.vault.liveLeases())
				}
				if n := strings.Count(strings.Join(r.audit.since(0), "\n"), "route_removed"); n != 2 {
					t.Errorf("%d lease_revoked route_removed records; want 2", n)
				}
			},
		},
		"change": {
			before: []Route{kvRoute, leaseRoute},
			after:  []Route{kvRoute, {Name: "db", Source: SourceVaultRead, Path: "static/{namespace}/{serviceaccount}", Header: "x-db", Value: "{password}"}},
			check: func(t *testing.T, r *rig, p, q authz.Identity, reads, revoked int) {
				for _, id := range []authz.Identity{p, q} {
					if e := r.entry("db", id); e == nil || e.Value != "static" {
						t.Errorf("%s: db %+v; want the new path's value", id.Key(), e)
					}
				}
				if reads != 2 || revoked != 2 {
					t.Errorf("%d reads, %d leases revoked; want 2 (one each) and the old leases", reads, revoked)
				}
			},
		},
		"unchanged": {
			before: []Route{kvRoute, leaseRoute},
			after:  []Route{leaseRoute, kvRoute},
			check: func(t *testing.T, r *rig, p, q authz.Identity, reads, revoked int) {
				if reads != 0 || revoked != 0 || r.vault.liveLeases() != 2 {
					t.Errorf("%d reads, %d revoked, %d live leases; want 0, 0, 2", reads, revoked, r.vault.liveLeases())
				}
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, tc.before...)
			p, _ := r.identity("ns", "pre", "k")
			if err := r.w.Prefetch(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			q, tok := r.identity("ns", "req", "k")
			for _, rt := range tc.before {
				if _, err := r.miss(rt.Name, q, tok); err != nil {
					t.Fatal(err)
				}
			}
			reads, revoked := r.vault.count("read"), r.vault.count("revoke_lease")
			if err := r.w.SetRoutes(context.Background(), tc.after); err != nil {
				t.Fatal(err)
			}
			tc.check(t, r, p, q, r.vault.count("read")-reads, r.vault.count("revoke_lease")-revoked)
		})
	}
}

// TestSetRoutesRefusesBadRoutes: a route set that could not be served is
// refused whole, and the routes in force stay.
func TestSetRoutesRefusesBadRoutes(t *testing.T) {
	r := newRig(t, kvRoute)
	for name, routes := range map[string][]Route{
		"none":           nil,
		"unknown source": {{Name: "x", Source: "ftp", Path: "p", Header: "h", Value: "v"}},
		"oauth2 no url":  {{Name: "x", Source: SourceOAuth2, Path: "p", Header: "h", Value: "v"}},
		"defined twice":  {kvRoute, kvRoute},
	} {
		if err := r.w.SetRoutes(context.Background(), routes); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, ok := r.w.table()[""]; !ok || len(r.w.table()) != 1 {
		t.Fatalf("routes in force changed: %v", r.w.table())
	}
}

// TestEventsInOneBatchReadOnce: a named event and a wildcard covering one
// identity, refreshed together, read each of its routes once, the named
// event's way (the lease read anew); an identity only the wildcard covers
// keeps its lease.
func TestEventsInOneBatchReadOnce(t *testing.T) {
	r := newRig(t, kvRoute, leaseRoute)
	a, ta := r.identity("ns", "a", "k")
	b, tb := r.identity("ns", "b", "k")
	for _, c := range []struct {
		id  authz.Identity
		tok string
	}{{a, ta}, {b, tb}} {
		for _, route := range []string{"", "db"} {
			if _, err := r.miss(route, c.id, c.tok); err != nil {
				t.Fatal(err)
			}
		}
	}
	dbA, dbB := r.entry("db", a).Value, r.entry("db", b).Value
	reads := r.vault.count("read")
	if err := r.w.RefreshBatch(context.Background(), []authz.Scope{{Namespace: "ns"}, {Namespace: "ns", ServiceAccount: "a"}}); err != nil {
		t.Fatal(err)
	}
	if got := r.vault.count("read") - reads; got != 3 {
		t.Errorf("%d reads; want 3: a's KV and lease once each, b's KV", got)
	}
	if r.entry("db", a).Value == dbA || r.vault.count("revoke_lease") != 1 {
		t.Errorf("a's lease: %s -> %s, %d revoked; want read anew and the old one revoked", dbA, r.entry("db", a).Value, r.vault.count("revoke_lease"))
	}
	if r.entry("db", b).Value != dbB {
		t.Errorf("b's lease replaced by a wildcard")
	}
}
