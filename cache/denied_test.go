package cache

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
)

func credential(id string, now time.Time) *Entry {
	return &Entry{Identity: authz.NewIdentity("ns", id), Value: "v-" + id, ReadAt: now, FreshUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
}

func refusal(id string, reason authz.Reason, now time.Time) *Entry {
	return &Entry{Identity: authz.NewIdentity("ns", id), Denied: reason, ReadAt: now, FreshUntil: now.Add(10 * time.Second), ExpiresAt: now.Add(10 * time.Second)}
}

// TestRefusalFloodStaysBounded: a flood of 100 times DeniedCapacity
// distinct refused identities, from several writers, keeps at most
// DeniedCapacity negative entries (the latest stored), counts every
// eviction, and leaves every credential of a full cache in place and
// current.
func TestRefusalFloodStaysBounded(t *testing.T) {
	const capacity, deniedCapacity, writers = 100, 50, 4
	const flood = 100 * deniedCapacity
	c, err := NewCredentials(CredentialsConfig{Capacity: capacity, DeniedCapacity: deniedCapacity})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	creds := make([]*Entry, capacity)
	for i := range creds {
		creds[i] = credential(fmt.Sprintf("ok-%d", i), now)
		if err := c.Set(creds[i]); err != nil {
			t.Fatal(err)
		}
	}
	var heapBefore runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapBefore)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := w; i < flood; i += writers {
				reason := authz.ReasonVaultDenied
				if i%2 == 1 {
					reason = authz.ReasonNoCredential
				}
				if err := c.Set(refusal(fmt.Sprintf("refused-%d", i), reason, now)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if c.DeniedLen() != deniedCapacity {
		t.Fatalf("DeniedLen = %d after %d refusals, want %d", c.DeniedLen(), flood, deniedCapacity)
	}
	if got := c.DeniedEvictions(); got != flood-deniedCapacity {
		t.Fatalf("DeniedEvictions = %d, want %d", got, flood-deniedCapacity)
	}
	if c.Len() != capacity {
		t.Fatalf("Len = %d, want the %d credentials", c.Len(), capacity)
	}
	for _, e := range creds {
		got, ok := c.Get("", e.Identity.Key())
		if !ok || got != e || e.superseded.Load() {
			t.Fatalf("%s: credential lost or ended by the flood (found %v)", e.Identity.Key(), ok)
		}
	}
	// Stored one after the other, the refusals kept are the latest stored.
	for i := range 2 * deniedCapacity {
		if err := c.Set(refusal(fmt.Sprintf("late-%d", i), authz.ReasonVaultDenied, now)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 * deniedCapacity {
		e, ok := c.Get("", authz.NewIdentity("ns", fmt.Sprintf("late-%d", i)).Key())
		if want := i >= deniedCapacity; ok != want || ok && e.superseded.Load() {
			t.Fatalf("late-%d held %v, want %v", i, ok, want)
		}
	}
	// The cache is still full of credentials: a new one is refused, the
	// refusals took none of their places.
	if err := c.Set(credential("new", now)); !errors.Is(err, ErrFull) {
		t.Fatalf("a new credential in a full cache: %v, want ErrFull", err)
	}
	var heapAfter runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapAfter)
	// 50 refusals of about 300 bytes each; 5,000 held would be over 1 MB.
	if grown := int64(heapAfter.HeapAlloc) - int64(heapBefore.HeapAlloc); grown > 256<<10 {
		t.Fatalf("heap grew by %d bytes for %d refusals held", grown, deniedCapacity)
	}
}

// TestRefusalReplacesCredential: a refusal of an identity that had a
// credential ends the credential (the identity stops being served) and
// frees its place; a credential later ends the refusal; Delete ends
// either; and a credential refused by a full cache still ends the refusal
// it replaces (the next request asks the watcher rather than being refused
// from memory).
func TestRefusalReplacesCredential(t *testing.T) {
	c, err := NewCredentials(CredentialsConfig{Capacity: 1, DeniedCapacity: 4})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	v1 := credential("a", now)
	if err := c.Set(v1); err != nil {
		t.Fatal(err)
	}
	no := refusal("a", authz.ReasonVaultDenied, now)
	if err := c.Set(no); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Get("", v1.Identity.Key()); got != no || !v1.superseded.Load() || c.Len() != 0 || c.DeniedLen() != 1 {
		t.Fatalf("after the refusal: got %+v, credential superseded %v, Len %d, DeniedLen %d", got, v1.superseded.Load(), c.Len(), c.DeniedLen())
	}
	v2 := credential("a", now)
	if err := c.Set(v2); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Get("", v2.Identity.Key()); got != v2 || !no.superseded.Load() || c.Len() != 1 || c.DeniedLen() != 0 {
		t.Fatalf("after the credential: got %+v, refusal superseded %v, Len %d, DeniedLen %d", got, no.superseded.Load(), c.Len(), c.DeniedLen())
	}
	if c.DeniedEvictions() != 0 {
		t.Fatalf("a replaced refusal counted as evicted")
	}
	// Full (v2 holds the only place): b's refusal is kept, its credential
	// is not, and the refusal is gone all the same.
	nb := refusal("b", authz.ReasonNoCredential, now)
	if err := c.Set(nb); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(credential("b", now)); !errors.Is(err, ErrFull) {
		t.Fatalf("Set = %v, want ErrFull", err)
	}
	if _, ok := c.Get("", nb.Identity.Key()); ok || !nb.superseded.Load() {
		t.Fatalf("the refusal outlived the credential that replaced it")
	}
	nc := refusal("c", authz.ReasonNoCredential, now)
	if err := c.Set(nc); err != nil {
		t.Fatal(err)
	}
	c.Delete("", nc.Identity.Key())
	if _, ok := c.Get("", nc.Identity.Key()); ok || !nc.superseded.Load() || c.DeniedLen() != 0 {
		t.Fatalf("a deleted refusal is still held")
	}
	// Stored again after an eviction, a refusal is current again.
	if err := c.Set(nc); err != nil || nc.superseded.Load() {
		t.Fatalf("stored again: %v, superseded %v", err, nc.superseded.Load())
	}
}
