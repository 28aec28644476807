package checker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
)

// fakeLookup is the API server's GET of a ServiceAccount: it answers from
// uids (absent: not found), fails while err is set, waits on gate if set,
// and counts the reads.
type fakeLookup struct {
	mu    sync.Mutex
	uids  map[string]string
	err   error
	gate  chan struct{}
	gets  atomic.Int64
	entry chan struct{} // receives once per read, if set
}

func (f *fakeLookup) LookupServiceAccount(_ context.Context, ns, name string) (string, bool, error) {
	f.gets.Add(1)
	if f.entry != nil {
		f.entry <- struct{}{}
	}
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", false, f.err
	}
	uid, ok := f.uids[ns+"/"+name]
	return uid, ok, nil
}

type removalCount struct{ n atomic.Uint64 }

func (r *removalCount) Removals() uint64 { return r.n.Load() }

// waitingCtx counts the callers that have begun waiting on it (Done), so a
// test knows they all joined the read in flight; it never ends. all is
// closed when want callers wait.
type waitingCtx struct {
	context.Context
	want    int64
	waiting atomic.Int64
	all     chan struct{}
}

func (c *waitingCtx) Done() <-chan struct{} {
	if c.waiting.Add(1) == c.want {
		close(c.all)
	}
	return nil
}

func newTestLookups(t *testing.T, f *fakeLookup, rem ServiceAccountRemovals, budget LookupBudget) (*saLookups, *prometheus.Registry, *clocktesting.FakeClock) {
	t.Helper()
	reg := prometheus.NewRegistry()
	clk := clocktesting.NewFakeClock(t0)
	l, err := newSALookups(f, rem, budget, clk, time.Second, reg)
	if err != nil {
		t.Fatal(err)
	}
	return l, reg, clk
}

// TestLookupsCollapse: concurrent confirmations of one ServiceAccount share
// one read of the API server; each caller compares the uid it holds.
func TestLookupsCollapse(t *testing.T) {
	f := &fakeLookup{uids: map[string]string{"ns/sa": "u1"}, gate: make(chan struct{})}
	l, _, _ := newTestLookups(t, f, nil, LookupBudget{Rate: 1, Burst: 100})
	const callers = 20
	ctx := &waitingCtx{Context: context.Background(), want: callers, all: make(chan struct{})}
	reasons := make(chan authz.Reason, callers)
	for i := range callers {
		uid := "u1"
		if i%2 == 1 {
			uid = "u0" // a token of an earlier ServiceAccount of that name
		}
		go func() {
			_, r, _ := l.confirm(ctx, authz.NewIdentity("ns", "sa"), uid)
			reasons <- r
		}()
	}
	select {
	case <-ctx.all:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d callers waiting", ctx.waiting.Load(), callers)
	}
	close(f.gate)
	got := map[authz.Reason]int{}
	for range callers {
		got[<-reasons]++
	}
	if got[authz.ReasonNone] != callers/2 || got[authz.ReasonUnknownServiceAccount] != callers/2 {
		t.Fatalf("answers %v: want %d confirmed (their uid) and %d unknown_serviceaccount (another uid)", got, callers/2, callers/2)
	}
	if n := f.gets.Load(); n != 1 {
		t.Fatalf("%d concurrent confirmations made %d reads, want 1", callers, n)
	}
}

// TestLookupsRemembered: a ServiceAccount confirmed is not read again until
// the informer counts a removal; a missing one is read each time (its
// tokens' refusals are cached by the checker); the budget bounds the reads,
// and a failed or refused read is tokenreview_unavailable.
func TestLookupsRemembered(t *testing.T) {
	f := &fakeLookup{uids: map[string]string{"ns/sa": "u1"}}
	rem := &removalCount{}
	l, reg, clk := newTestLookups(t, f, rem, LookupBudget{Rate: 1, Burst: 4})
	ctx := context.Background()
	confirm := func(name, uid string) authz.Reason {
		_, r, _ := l.confirm(ctx, authz.NewIdentity("ns", name), uid)
		return r
	}
	for range 5 {
		if r := confirm("sa", "u1"); r != authz.ReasonNone {
			t.Fatalf("existing: %q", r)
		}
	}
	if n := f.gets.Load(); n != 1 {
		t.Fatalf("5 confirmations with no removal: %d reads, want 1", n)
	}
	// Another uid than remembered may be a replacement the informer has not
	// seen yet: read again.
	if r := confirm("sa", "u2"); r != authz.ReasonUnknownServiceAccount || f.gets.Load() != 2 {
		t.Fatalf("remembered, another uid: %q, %d reads (want 2)", r, f.gets.Load())
	}
	rem.n.Add(1)
	if r := confirm("sa", "u1"); r != authz.ReasonNone || f.gets.Load() != 3 {
		t.Fatalf("after a removal: %q, %d reads (want 3)", r, f.gets.Load())
	}
	if r := confirm("ghost", ""); r != authz.ReasonUnknownServiceAccount {
		t.Fatalf("missing: %q", r)
	}
	// Burst 4 is spent (4 reads), the clock stands still.
	if r := confirm("other", ""); r != authz.ReasonTokenReviewUnavailable || f.gets.Load() != 4 {
		t.Fatalf("over budget: %q, %d reads (want 4)", r, f.gets.Load())
	}
	clk.Step(time.Second)
	f.err = errors.New("connection refused")
	if r := confirm("other", ""); r != authz.ReasonTokenReviewUnavailable {
		t.Fatalf("failed read: %q", r)
	}
	for result, want := range map[string]float64{"found": 3, "not_found": 1, "budget_exhausted": 1, "error": 1} {
		if got := testutil.ToFloat64(l.results[result]); got != want {
			t.Errorf("credinject_serviceaccount_lookups_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "credinject_serviceaccount_lookups_total"); err != nil || n != 4 {
		t.Fatalf("registered series: %d, %v", n, err)
	}
}
