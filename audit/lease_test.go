package audit

import (
	"strings"
	"testing"
)

func TestLeaseRef(t *testing.T) {
	for id, want := range map[string]string{
		"database/creds/team-a/Xq3AbCdEfGhIjKlMnOpQrStU": "database/creds/team-a/Xq3AbC…",
		"aws/creds/deploy/abcdefgh":                      "aws/creds/deploy/ab…",
		"database/creds/team-a/abc":                      "database/creds/team-a/…",
		"noslash0123456789012345678":                     "noslas…",
		"database/creds/team-a/":                         "database/creds/team-a/…",
		"":                                               "",
	} {
		if got := LeaseRef(id); got != want {
			t.Errorf("LeaseRef(%q) = %q, want %q", id, got, want)
		}
	}
}

// TestLeaseIDsNeverWhole: lifecycle records name a lease by LeaseRef, so
// the trail never holds an id that lets its reader renew or revoke it.
func TestLeaseIDsNeverWhole(t *testing.T) {
	r := newRig(t, 10)
	const old, cur = "database/creds/team-a/OLDabCdEfGhIjKlMnOpQrStU", "database/creds/team-a/NEWabCdEfGhIjKlMnOpQrStU"
	r.log.Lifecycle(Event{Kind: KindFetched, Identity: "team-a/app", Route: "db", Source: "vault-read", Path: "database/creds/team-a", LeaseID: old, Trigger: "miss"})
	r.log.Lifecycle(Event{Kind: KindRotated, Identity: "team-a/app", Route: "db", Source: "vault-read", Path: "database/creds/team-a", LeaseID: cur, OldLeaseID: old, Trigger: "event"})
	r.log.Lifecycle(Event{Kind: KindLeaseRenewed, Identity: "team-a/app", Route: "db", Source: "vault-read", Path: "database/creds/team-a", LeaseID: cur, TTLSeconds: 60})
	r.log.Lifecycle(Event{Kind: KindLeaseRevoked, Identity: "team-a/app", Route: "db", Source: "vault-read", Path: "database/creds/team-a", LeaseID: old, Cause: "replaced"})
	recs := r.out.records(t)
	if len(recs) != 4 {
		t.Fatalf("%d records", len(recs))
	}
	r.out.mu.Lock()
	all := r.out.b.String()
	r.out.mu.Unlock()
	for _, id := range []string{old, cur} {
		if strings.Contains(all, id) || strings.Contains(all, id[len(id)-18:]) {
			t.Fatalf("the trail holds lease id %q:\n%s", id, all)
		}
	}
	if recs[1]["leaseId"] != "database/creds/team-a/NEWabC…" || recs[1]["oldLeaseId"] != "database/creds/team-a/OLDabC…" || recs[3]["leaseId"] != recs[0]["leaseId"] {
		t.Fatalf("records do not name the leases consistently: %v", recs)
	}
}
