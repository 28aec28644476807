package watcher

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
)

// recAuditor keeps the lifecycle records.
type recAuditor struct {
	mu   sync.Mutex
	recs []Lifecycle
}

func (a *recAuditor) Lifecycle(e Lifecycle) {
	a.mu.Lock()
	a.recs = append(a.recs, e)
	a.mu.Unlock()
}

// since returns the records from the n-th on, summarised.
func (a *recAuditor) since(n int) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.recs[n:] {
		out = append(out, summary(e))
	}
	return out
}

func (a *recAuditor) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.recs)
}

func summary(e Lifecycle) string {
	s := fmt.Sprintf("%s %s route=%q", e.Kind, e.Identity.Key(), e.Route)
	if e.Source != "" {
		s += fmt.Sprintf(" %s %s", e.Source, e.Path)
	}
	if e.Version != 0 || e.OldVersion != 0 {
		s += fmt.Sprintf(" v%d", e.Version)
		if e.Kind == Rotated {
			s = strings.Replace(s, fmt.Sprintf(" v%d", e.Version), fmt.Sprintf(" v%d->v%d", e.OldVersion, e.Version), 1)
		}
	}
	if e.OldLeaseID != "" {
		s += " " + e.OldLeaseID + "->"
	}
	if e.LeaseID != "" {
		if e.OldLeaseID == "" {
			s += " "
		}
		s += e.LeaseID
	}
	for _, f := range []string{e.Trigger.String(), string(e.Reason), e.Cause} {
		if f != "" {
			s += " " + f
		}
	}
	if e.TTL != 0 {
		s += " ttl=" + e.TTL.String()
	}
	return s
}

// TestLifecycleKV: a first read is fetched, a re-read of the same version
// records nothing, a new version is a rotation with both versions and its
// trigger, a refusal is recorded once however often it is repeated, and a
// deleted ServiceAccount is forgotten. No record holds a token or a key.
func TestLifecycleKV(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "key-v1")
	if _, err := r.miss("", id, tok); err != nil {
		t.Fatal(err)
	}
	want := []string{`fetched ns/sa route="" kv secret/data/egress/ns/sa v1 miss`}
	if got := r.audit.since(0); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after a miss:\n got %q\nwant %q", got, want)
	}

	// A scheduled re-read of the same version: nothing to record.
	reads := r.vault.count("read")
	r.step(4 * time.Minute)
	r.eventually("the scheduled re-read", func() bool { return r.vault.count("read") > reads && r.clock.HasWaiters() })
	if got := r.audit.since(1); len(got) != 0 {
		t.Fatalf("a re-read of the same version recorded %q", got)
	}

	// A new version through a rotation event.
	r.vault.put(id.Key(), "key-v2")
	if err := r.w.Refresh(context.Background(), authz.Scope{Namespace: "ns", ServiceAccount: "sa"}); err != nil {
		t.Fatal(err)
	}
	want = []string{`rotated ns/sa route="" kv secret/data/egress/ns/sa v1->v2 event`}
	if got := r.audit.since(1); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after an event:\n got %q\nwant %q", got, want)
	}

	// And on schedule.
	r.vault.put(id.Key(), "key-v3")
	r.step(4 * time.Minute)
	r.eventually("the scheduled rotation", func() bool { return r.audit.len() == 3 })
	want = []string{`rotated ns/sa route="" kv secret/data/egress/ns/sa v2->v3 schedule`}
	if got := r.audit.since(2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after a scheduled rotation:\n got %q\nwant %q", got, want)
	}

	// Forgotten: the ServiceAccount was deleted.
	r.w.Forget(id)
	want = []string{`forgotten ns/sa route="" serviceaccount_deleted`}
	if got := r.audit.since(3); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after Forget:\n got %q\nwant %q", got, want)
	}
	// An identity never held is not recorded.
	r.w.Forget(authz.NewIdentity("ns", "never"))
	if n := r.audit.len(); n != 4 {
		t.Fatalf("%d records after forgetting an identity never held", n)
	}
	noSecrets(t, r, "key-v", tok, "hvs.")
}

// TestLifecycleRefused: a refusal by Vault is recorded with its reason when
// it starts, once; a credential obtained after it is fetched anew.
func TestLifecycleRefused(t *testing.T) {
	r := newRig(t)
	id, tok := r.identity("ns", "sa", "k1")
	r.vault.bind(id.Key(), false)
	for range 2 {
		if e, err := r.miss("", id, tok); err != nil || e.Denied != authz.ReasonVaultDenied {
			t.Fatalf("miss: %+v, %v", e, err)
		}
		r.clock.Step(11 * time.Second) // past DeniedTTL: asked again
	}
	want := []string{`refused ns/sa route="" kv secret/data/egress/ns/sa miss vault_denied`, `refused ns/sa route="" kv secret/data/egress/ns/sa miss vault_denied`}
	// The identity is let go after a refusal (forgetLoop), so each new
	// miss is a new refusal: two, one per miss, none while the first lasted.
	if got := r.audit.since(0); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("refusals:\n got %q\nwant %q", got, want)
	}
	r.vault.bind(id.Key(), true)
	if _, err := r.miss("", id, tok); err != nil {
		t.Fatal(err)
	}
	if got := r.audit.since(2); len(got) != 1 || !strings.HasPrefix(got[0], "fetched ") {
		t.Fatalf("after the binding came back: %q", got)
	}

	// Nothing stored at the path: refused no_credential, repeated
	// refreshes record it once.
	r2 := newRig(t)
	id2, tok2 := r2.identity("ns", "empty", "")
	if e, err := r2.miss("", id2, tok2); err != nil || e.Denied != authz.ReasonNoCredential {
		t.Fatalf("miss: %+v, %v", e, err)
	}
	reads := r2.vault.count("read")
	r2.step(4 * time.Minute)
	r2.eventually("a scheduled re-read", func() bool { return r2.vault.count("read") > reads && r2.clock.HasWaiters() })
	want = []string{`refused ns/empty route="" kv secret/data/egress/ns/empty miss no_credential`}
	if got := r2.audit.since(0); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("no credential:\n got %q\nwant %q", got, want)
	}
	noSecrets(t, r, "k1", tok, "hvs.")
}

// TestLifecycleLease: a leased read is fetched with its lease id, renewed
// (lease_renewed, no rotation), replaced before its max TTL (rotated with
// both lease ids, the old one lease_revoked as replaced), and revoked with
// the identity's token when it is forgotten.
func TestLifecycleLease(t *testing.T) {
	r := newRig(t, Route{Name: "db", Source: SourceVaultRead, Path: "creds/{namespace}/{serviceaccount}", Header: "x-db", Value: "{username}:{password}"})
	r.vault.leaseMax = 100 * time.Second
	id, tok := r.identity("ns", "sa", "")
	if _, err := r.miss("db", id, tok); err != nil {
		t.Fatal(err)
	}
	// Renewed at 2/3 of the TTL, then read anew before the max TTL.
	for i := 0; r.audit.len() < 5; i++ {
		if i == 40 {
			t.Fatalf("no new read after 200 s: %q", r.audit.since(0))
		}
		r.step(5 * time.Second)
		r.eventually("the refresh", r.clock.HasWaiters)
	}
	r.w.Forget(id)
	want := []string{
		`fetched ns/sa route="db" vault-read creds/ns/sa creds/ns/sa/l2 miss`,
		`lease_renewed ns/sa route="db" vault-read creds/ns/sa creds/ns/sa/l2 ttl=1m0s`,
		`lease_renewed ns/sa route="db" vault-read creds/ns/sa creds/ns/sa/l2 ttl=20s`, // capped by the max TTL
		`lease_revoked ns/sa route="db" vault-read creds/ns/sa creds/ns/sa/l2 replaced`,
		`rotated ns/sa route="db" vault-read creds/ns/sa creds/ns/sa/l2->creds/ns/sa/l3 schedule`,
		`lease_revoked ns/sa route="db" vault-read creds/ns/sa creds/ns/sa/l3 token_revoked`,
		`forgotten ns/sa route="" serviceaccount_deleted`,
	}
	if got := r.audit.since(0); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lease lifecycle:\n got %q\nwant %q", got, strings.Join(want, "\n"))
	}
	noSecrets(t, r, "u2", tok, "hvs.")
}

// noSecrets fails if any record holds one of the values.
func noSecrets(t *testing.T, r *rig, values ...string) {
	t.Helper()
	r.audit.mu.Lock()
	defer r.audit.mu.Unlock()
	all := fmt.Sprintf("%+v", r.audit.recs)
	for _, v := range values {
		if strings.Contains(all, v) {
			t.Errorf("a lifecycle record holds %q: %s", v, all)
		}
	}
}
