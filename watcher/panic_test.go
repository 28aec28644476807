package watcher

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/credinject/credinject/authz"
)

// panicky is the KV provider, except that it panics for one identity.
type panicky struct {
	kvProvider
	bad string // an identity's key
}

func (p panicky) Fetch(ctx context.Context, f Fetch) (Credential, error) {
	if f.Identity.Key() == p.bad {
		panic("a provider bug")
	}
	return p.kvProvider.Fetch(ctx, f)
}

// TestPanickingRunForgetsOnlyItsIdentity: a run that panics costs its own
// identity (forgotten, its caller answered with an error), is counted in
// credinject_panics_total{component="watcher"}, and the executor goes on
// serving the others.
func TestPanickingRunForgetsOnlyItsIdentity(t *testing.T) {
	r := newRigProviders(t, nil, func(r *rig) map[Source]Provider {
		return map[Source]Provider{SourceKV: panicky{kvProvider: kvProvider{vault: r.vault, mount: "secret"}, bad: "ns/bad"}}
	})

	bad, badToken := r.identity("ns", "bad", "k-bad")
	// Answered at once with internal, not left to its 10 s deadline.
	if _, err := r.miss("", bad, badToken); authz.ReasonOf(err) != authz.ReasonInternal {
		t.Fatalf("the panicking identity's miss: %v, want reason internal", err)
	}
	r.eventually("the panicking identity forgotten", func() bool { return r.w.Len() == 0 })
	want := `
# HELP credinject_panics_total Panics recovered, by component (check, events, auditbridge, a server's name): each cost its request, event, connection or server, not the process.
# TYPE credinject_panics_total counter
credinject_panics_total{component="watcher"} 1
`
	if err := testutil.GatherAndCompare(r.reg, strings.NewReader(want), "credinject_panics_total"); err != nil {
		t.Fatal(err)
	}

	good, goodToken := r.identity("ns", "good", "k-good")
	e, err := r.miss("", good, goodToken)
	if err != nil || e == nil || e.Value != "Bearer k-good" || e.Denied != authz.ReasonNone {
		t.Fatalf("after the panic, another identity's miss: %+v, %v", e, err)
	}
}
