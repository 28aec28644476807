//go:build !race

// The race detector makes sync.Pool drop what is put back, so allocation
// counts are only meaningful without it.

package checker_test

import (
	"context"
	"testing"
)

// TestPolicyHitAllocatesNothing: a hit on a route with path prefixes and
// subjects costs no allocation.
func TestPolicyHitAllocatesNothing(t *testing.T) {
	f := policyFixture(t, 10, true)
	ctx := context.Background()
	for _, q := range f.reqs {
		f.r.g.Check(ctx, q)
	}
	// The token cache fills asynchronously: every result is in it once
	// WaitTokens returns.
	f.r.c.WaitTokens()
	q := f.reqs[3]
	if n := testing.AllocsPerRun(200, func() {
		if resp, _ := f.r.g.Check(ctx, q); resp.GetOkResponse() == nil {
			t.Fatalf("not allowed: %s", outcome(resp))
		}
	}); n != 0 {
		t.Errorf("%v allocations per hit", n)
	}
}
