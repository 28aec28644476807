//go:build !race

// The race detector makes sync.Pool drop what is put back, so allocation
// counts are only meaningful without it.

package checker_test

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// An unsampled hit allocates nothing with tracing on, as with it off. The
// token cache fills asynchronously: wait until one Check allocates nothing
// (a token-cache hit), which never happens if tracing allocates, then count
// over many.
func TestTraceUnsampledHitAllocatesNothing(t *testing.T) {
	for name, c := range unsampledCases {
		t.Run(name, func(t *testing.T) {
			r, _, q := c.hitRig(t)
			ctx := context.Background()
			check := func() {
				if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
					t.Fatalf("not allowed: %v", outcome(resp))
				}
			}
			err := wait.PollUntilContextTimeout(ctx, time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
				return testing.AllocsPerRun(1, check) == 0, nil
			})
			if err != nil {
				t.Fatalf("no Check without allocations: %v", err)
			}
			if allocs := testing.AllocsPerRun(500, check); allocs != 0 {
				t.Errorf("%v allocations per unsampled hit, want 0", allocs)
			}
		})
	}
}
