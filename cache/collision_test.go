package cache

import (
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
)

// TestCredentialsCollisions: keys whose hashes collide are kept side by
// side; each Get answers its own entry, Delete removes only its own.
func TestCredentialsCollisions(t *testing.T) {
	keyOf = func(string, string) uint64 { return 42 }
	defer func() { keyOf = credKey }()
	c, err := NewCredentials(CredentialsConfig{Capacity: 3})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ids := []authz.Identity{authz.NewIdentity("a", "x"), authz.NewIdentity("b", "y"), authz.NewIdentity("c", "z")}
	for _, id := range ids {
		if err := c.Set(&Entry{Identity: id, Value: id.Key, FreshUntil: now.Add(time.Hour), ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Set(&Entry{Identity: authz.NewIdentity("d", "w")}); err != ErrFull {
		t.Fatalf("a fourth entry: %v, want ErrFull", err)
	}
	check := func(present ...authz.Identity) {
		t.Helper()
		if c.Len() != int64(len(present)) {
			t.Fatalf("Len %d, want %d", c.Len(), len(present))
		}
		for _, id := range present {
			if e, ok := c.Get("", id.Key); !ok || e.Value != id.Key {
				t.Fatalf("Get(%s) = %+v, %v", id.Key, e, ok)
			}
		}
	}
	check(ids...)
	if _, ok := c.Get("", "d/w"); ok {
		t.Fatal("an absent key with a colliding hash was found")
	}
	c.Delete("", ids[0].Key) // the one in the main map: another takes its place
	check(ids[1:]...)
	if _, ok := c.Get("", ids[0].Key); ok {
		t.Fatal("deleted entry still served")
	}
	c.Delete("", ids[2].Key)
	check(ids[1])
}
