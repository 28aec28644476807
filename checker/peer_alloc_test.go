//go:build !race

package checker_test

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/credinject/credinject/authz"
)

// TestPeerHitAllocatesNothing: a peer identity's check on a cache hit (its
// parsed result cached, its credential cached) allocates nothing, as a
// token's does.
func TestPeerHitAllocatesNothing(t *testing.T) {
	r, _ := newPeerRig(t, authz.SourcePeer, authz.SourceToken)
	r.put(t, "", "egress-test", "default", "authorization", "Bearer k")
	q := peerRequest("", "spiffe://cluster.local/ns/egress-test/sa/default", "api.openai.com")
	ctx := from(gatewayAddr)
	check := func() {
		if resp, _ := r.g.Check(ctx, q); resp.GetOkResponse() == nil {
			t.Fatalf("not allowed: %v", outcome(resp))
		}
	}
	// The result cache fills asynchronously: wait until a hit costs nothing.
	err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return testing.AllocsPerRun(20, check) == 0, nil
	})
	if n := testing.AllocsPerRun(500, check); err != nil || n != 0 {
		t.Fatalf("%v allocations per peer check on a hit, want 0", n)
	}
}
