//go:build !race

// The race detector makes sync.Pool drop what is put back, so allocation
// counts are only meaningful without it.

package checker_test

import (
	"context"
	"testing"

	"github.com/credinject/credinject/cache"
)

// TestShapesHitAllocatesNothing: every shape but signing is rendered into
// the cached answer, so a hit with headers, query parameters and metadata
// costs no allocation.
func TestShapesHitAllocatesNothing(t *testing.T) {
	r := newRig(t, nil, true)
	putShapes(t, r, "x-api-key", "k-1", &cache.Shapes{
		Headers:  []cache.Field{{Name: "x-org", Value: "org-1"}, {Name: "authorization", Value: "Basic dTpw"}},
		Query:    []cache.Field{{Name: "key", Value: "q-1"}},
		Metadata: []cache.Field{{Name: "upstream_key", Value: "m-1"}},
	})
	q := request("Bearer "+r.token(t, "team-a", "app"), "api.example.com")
	ctx := context.Background()
	r.g.Check(ctx, q)
	// The token cache fills asynchronously: the first request's result is
	// in it once WaitTokens returns.
	r.c.WaitTokens()
	if n := testing.AllocsPerRun(200, func() {
		if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
			t.Fatalf("not allowed: %s", outcome(resp))
		}
	}); n != 0 {
		t.Errorf("%v allocations per hit", n)
	}
}
