package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/nats-io/nats.go"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/internal/apptest"
	"github.com/credinject/credinject/internal/testenv"
)

// TestEventFloodIsBounded: on the real bed (NATS, Vault), a flood of 1,000
// wildcard events and 200 copies of one event cost Vault a bounded number of
// KV reads, counted in Vault's own audit log: at most one re-read per
// identity per events.minInterval (plus the trailing one), and one read for
// the 200 copies. A key written just before the last event of the flood is
// served shortly after it.
func TestEventFloodIsBounded(t *testing.T) {
	env := testenv.Get(t)
	ctx := context.Background()
	type ident struct{ ns, sa, tok string }
	ids := make([]ident, 3)
	for i := range ids {
		ns, sa, tok := boundIdentity(ctx, t, env, fmt.Sprintf("flood%d", i), "sk-0")
		ids[i] = ident{ns, sa, tok}
	}
	cfg := apptest.Config(env)
	cfg.Prefetch.Refresh = time.Hour // only events explain a read
	minInterval := cfg.Events.MinInterval
	r := apptest.Start(t, env, cfg)
	for _, id := range ids {
		if got := r.Check(t, id.tok, "h"); got != "allow authorization=Bearer sk-0" {
			t.Fatalf("before: %q", got)
		}
	}
	apptest.Eventually(t, 10*time.Second, "NATS subscription", func() bool {
		return r.Counter(t, "credinject_events_connected", nil) == 1
	})
	reads := vaultReads(t, env)
	nc, err := nats.Connect(env.NATS.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	publish := func(b []byte) {
		t.Helper()
		if err := nc.Publish("credinject.rotated", b); err != nil {
			t.Fatal(err)
		}
	}
	newEvent := func(rot events.Rotation) []byte {
		t.Helper()
		b, err := events.NewEvent("e2e-flood", rot, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Every event is one refresh call of the watcher, three identities each.
	settled := func(received float64) func() bool {
		return func() bool {
			calls := r.Counter(t, "credinject_watcher_refreshes_total", map[string]string{"trigger": "event"}) / float64(len(ids))
			return r.Counter(t, "credinject_events_received_total", nil) == received &&
				r.Counter(t, "credinject_events_coalesced_total", nil)+
					r.Counter(t, "credinject_events_dropped_total", map[string]string{"reason": events.DropDuplicate})+calls == received
		}
	}

	// 1,000 wildcard events, the key of ids[0] rotated before the last one.
	const flood = 1000
	start := time.Now()
	for range flood - 1 {
		publish(newEvent(events.Rotation{}))
	}
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ids[0].ns+"/"+ids[0].sa, map[string]any{"api_key": "sk-flood"}); err != nil {
		t.Fatal(err)
	}
	publish(newEvent(events.Rotation{}))
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	last := time.Now()
	apptest.Eventually(t, minInterval+5*time.Second, "the key written before the last event", func() bool {
		return r.Check(t, ids[0].tok, "h") == "allow authorization=Bearer sk-flood"
	})
	served := time.Since(last)
	apptest.Eventually(t, 10*time.Second, "every event handled", settled(flood))
	span := time.Since(start)
	floodReads := reads.count(t, ids[0].ns, ids[1].ns, ids[2].ns)
	limit := 2 + int(span/minInterval)
	for i, id := range ids {
		if n := floodReads[id.ns]; n < 1 || n > limit {
			t.Errorf("identity %d: %d KV reads for %d wildcard events over %v; want 1 to %d (one per %v, and the trailing one)",
				i, n, flood, span.Round(time.Millisecond), limit, minInterval)
		}
	}
	t.Logf("%d wildcard events published in %v: KV reads per identity %v (without coalescing: %d each); the key written before the last event served %v after it",
		flood, last.Sub(start).Round(time.Millisecond), floodReads, flood, served.Round(time.Millisecond))

	// 200 copies of one event naming ids[1], its key rotated first.
	if _, err := env.Vault.PutCredential(ctx, "egress/"+ids[1].ns+"/"+ids[1].sa, map[string]any{"api_key": "sk-copies"}); err != nil {
		t.Fatal(err)
	}
	copyOf := newEvent(events.Rotation{Namespace: ids[1].ns, ServiceAccount: ids[1].sa})
	for range 200 {
		publish(copyOf)
	}
	apptest.Eventually(t, 10*time.Second, "the copies handled", func() bool {
		return r.Counter(t, "credinject_events_received_total", nil) == flood+200 &&
			r.Counter(t, "credinject_events_dropped_total", map[string]string{"reason": events.DropDuplicate}) == 199
	})
	apptest.Eventually(t, 5*time.Second, "the rotated key", func() bool {
		return r.Check(t, ids[1].tok, "h") == "allow authorization=Bearer sk-copies"
	})
	after := reads.count(t, ids[0].ns, ids[1].ns, ids[2].ns)
	if n := after[ids[1].ns] - floodReads[ids[1].ns]; n != 1 {
		t.Errorf("200 copies of one event: %d KV reads, want 1", n)
	}
	if n := after[ids[0].ns] + after[ids[2].ns] - floodReads[ids[0].ns] - floodReads[ids[2].ns]; n != 0 {
		t.Errorf("an event naming one identity read %d others' credentials", n)
	}
	t.Logf("200 copies of one event: %d KV read (without deduplication: 200)", after[ids[1].ns]-floodReads[ids[1].ns])
}

// auditReads is a file audit device on the bed's Vault, removed at the end.
type auditReads struct{ c *costBed }

// vaultReads enables a file audit device; its log from now on is what
// count reads.
func vaultReads(t *testing.T, env *testenv.Env) auditReads {
	t.Helper()
	c := &costBed{env: env, role: testenv.UniqueName("flood")}
	auditOnce.Lock()
	c.audit = filepath.Join(env.Dir, c.role+"-audit.log")
	if err := env.Vault.Client.Sys().EnableAuditWithOptions(c.role, &vaultapi.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": c.audit},
	}); err != nil {
		auditOnce.Unlock()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer auditOnce.Unlock()
		if err := env.Vault.Client.Sys().DisableAudit(c.role); err != nil {
			t.Errorf("disable audit: %v", err)
		}
		_ = os.Remove(c.audit)
	})
	return auditReads{c}
}

// count is how many KV reads of each namespace's credentials Vault answered
// since the device was enabled.
func (a auditReads) count(t *testing.T, namespaces ...string) map[string]int {
	t.Helper()
	n := map[string]int{}
	a.c.responses(t, func(e *auditResponse) {
		if e.Request.Operation != "read" {
			return
		}
		for _, ns := range namespaces {
			if strings.HasPrefix(e.Request.Path, testenv.VaultKVMount+"/data/egress/"+ns+"/") {
				n[ns]++
			}
		}
	})
	return n
}
