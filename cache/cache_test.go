package cache_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

func entry(route, id, value string, now time.Time) *cache.Entry {
	ns, sa, _ := strings.Cut(id, "/")
	return &cache.Entry{Route: route, Identity: authz.NewIdentity(ns, sa), Header: "authorization", Value: value, ReadAt: now, FreshUntil: now.Add(time.Minute), ExpiresAt: now.Add(10 * time.Minute)}
}

// TestCredentialsNeverLose100k: every credential the watcher stores stays
// retrievable, whatever the load, even with
// concurrent writers and readers.
func TestCredentialsNeverLose100k(t *testing.T) {
	const n = 100_000
	c, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: n, DeniedCapacity: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now()
	var wg sync.WaitGroup
	const writers = 8
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += writers {
				id := fmt.Sprintf("ns-%d/sa", i)
				if err := c.Set(entry("", id, "v-"+id, now)); err != nil {
					t.Error(err)
					return
				}
				// Read others' entries meanwhile (ristretto counts gets).
				c.Get("", fmt.Sprintf("ns-%d/sa", (i*31)%n))
			}
		}()
	}
	wg.Wait()
	if c.Len() != n {
		t.Fatalf("Len = %d, want %d", c.Len(), n)
	}
	for i := range n {
		id := fmt.Sprintf("ns-%d/sa", i)
		e, ok := c.Get("", id)
		if !ok {
			t.Fatalf("%s lost", id)
		}
		if e.Identity.Key() != id || e.Value != "v-"+id {
			t.Fatalf("%s got another identity's entry: %s %s", id, e.Identity, e.Value)
		}
	}
	// Full: a new identity is refused loudly, an update is not.
	if err := c.Set(entry("", "extra/sa", "x", now)); err == nil {
		t.Fatal("Set beyond capacity succeeded")
	}
	if err := c.Set(entry("", "ns-1/sa", "updated", now)); err != nil {
		t.Fatalf("update at capacity: %v", err)
	}
	if e, _ := c.Get("", "ns-1/sa"); e.Value != "updated" {
		t.Fatalf("update not visible: %q", e.Value)
	}
}

func TestCredentialsRoutesAndDelete(t *testing.T) {
	c, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: 10, DeniedCapacity: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now()
	for _, e := range []*cache.Entry{entry("", "a/x", "default", now), entry("openai", "a/x", "openai", now), entry("", "b/x", "b", now)} {
		if err := c.Set(e); err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string]struct{ route, id, want string }{
		"default route":     {"", "a/x", "default"},
		"named route":       {"openai", "a/x", "openai"},
		"other identity":    {"", "b/x", "b"},
		"route not stored":  {"openai", "b/x", ""},
		"unknown identity":  {"", "c/x", ""},
		"prefix is not key": {"", "a/", ""},
	}
	for name, cs := range cases {
		t.Run(name, func(t *testing.T) {
			e, ok := c.Get(cs.route, cs.id)
			if cs.want == "" {
				if ok {
					t.Fatalf("unexpected entry %q", e.Value)
				}
				return
			}
			if !ok || e.Value != cs.want {
				t.Fatalf("got %v %v", e, ok)
			}
		})
	}
	c.Delete("", "a/x")
	if _, ok := c.Get("", "a/x"); ok {
		t.Fatal("deleted entry still there")
	}
	if _, ok := c.Get("openai", "a/x"); !ok {
		t.Fatal("delete of one route removed another")
	}
	if c.Len() != 2 {
		t.Fatalf("Len = %d", c.Len())
	}
}

func TestEntryState(t *testing.T) {
	t0 := time.Now()
	e := entry("", "a/b", "v", t0)
	cases := map[string]struct {
		at   time.Time
		want cache.Freshness
	}{
		"fresh":      {t0, cache.Fresh},
		"at refresh": {t0.Add(time.Minute), cache.Stale},
		"stale":      {t0.Add(5 * time.Minute), cache.Stale},
		"at expiry":  {t0.Add(10 * time.Minute), cache.Expired},
		"long past":  {t0.Add(time.Hour), cache.Expired},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := e.State(c.at); got != c.want {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
}

func TestTokens(t *testing.T) {
	tc, err := cache.NewTokens[string](cache.TokensConfig{MaxEntries: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	now := time.Now()
	var a, b cache.MAC
	a[0], b[0] = 1, 1
	b[31] = 2 // same first 8 bytes: same ristretto key, different MAC
	tc.Set(&a, "alice", now, now.Add(time.Minute))
	tc.Wait()
	if v, ok := tc.Get(&a, now); !ok || v.Value != "alice" {
		t.Fatalf("get a: %v %v", v, ok)
	}
	if v, ok := tc.Get(&b, now); ok {
		t.Fatalf("a colliding MAC got %q", v.Value)
	}
	if _, ok := tc.Get(&a, now.Add(time.Minute)); ok {
		t.Fatal("expired result served")
	}
	tc.Set(&b, "bob", now, now.Add(-time.Second))
	tc.Wait()
	if _, ok := tc.Get(&b, now); ok {
		t.Fatal("a result set already expired was stored")
	}
}

// TestTokensSetStamped: a result cached with SetStamped is stamped at that
// generation from the first Get, and only at it; Set leaves it unstamped.
func TestTokensSetStamped(t *testing.T) {
	tc, err := cache.NewTokens[string](cache.TokensConfig{MaxEntries: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	now := time.Now()
	var a, b cache.MAC
	a[0], b[0] = 1, 2
	tc.SetStamped(&a, "alice", now, now.Add(time.Minute), 7)
	tc.Set(&b, "bob", now, now.Add(time.Minute))
	tc.Wait()
	ta, ok := tc.Get(&a, now)
	if !ok {
		t.Fatal("stamped result not stored")
	}
	if !ta.Stamped(7) || ta.Stamped(0) || ta.Stamped(8) {
		t.Fatalf("stamped at 7: Stamped(7)=%v Stamped(0)=%v Stamped(8)=%v", ta.Stamped(7), ta.Stamped(0), ta.Stamped(8))
	}
	tb, ok := tc.Get(&b, now)
	if !ok || tb.Stamped(0) {
		t.Fatalf("Set result: stored %v, stamped at 0 %v", ok, ok && tb.Stamped(0))
	}
	tc.SetStamped(&b, "bob", now, now.Add(-time.Second), 1)
	tc.Wait()
	if got, _ := tc.Get(&b, now); got == nil || got.Stamped(1) {
		t.Fatal("an already expired SetStamped replaced the stored result")
	}
}

// TestTokensExpireOnTheMonotonicClock: a result's lifetime is measured as
// time.Time measures it: on the monotonic clock when both times carry a
// reading of it (the real clock's do), so a wall clock stepped back (NTP, a
// resumed VM) does not keep a token result past cache.tokenTTL; times
// without one (a fake clock's) are compared on the wall clock.
func TestTokensExpireOnTheMonotonicClock(t *testing.T) {
	tc, err := cache.NewTokens[string](cache.TokensConfig{MaxEntries: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	now := time.Now()
	var a cache.MAC
	a[0] = 3
	tc.Set(&a, "alice", now, now.Add(30*time.Second))
	tc.Wait()
	// 31 s later by the monotonic clock, while the wall clock, stepped back,
	// still reads now.
	later := monotonicAhead(now, 31*time.Second)
	if later.Sub(now) != 31*time.Second || !later.Round(0).Equal(now.Round(0)) {
		t.Fatalf("could not make a time 31 s ahead on the monotonic clock only: %v", later.Sub(now))
	}
	if _, ok := tc.Get(&a, later); ok {
		t.Fatal("a wall clock stepped back kept a token result past its lifetime")
	}
	if _, ok := tc.Get(&a, now.Add(29*time.Second)); !ok {
		t.Fatal("a live result was not served")
	}
	// Without monotonic readings the wall clock decides.
	wall := now.Round(0)
	tc.Set(&a, "bob", wall, wall.Add(30*time.Second))
	tc.Wait()
	if v, ok := tc.Get(&a, wall.Add(29*time.Second)); !ok || v.Value != "bob" {
		t.Fatal("a live result (wall clock) was not served")
	}
	if _, ok := tc.Get(&a, wall.Add(30*time.Second)); ok {
		t.Fatal("an expired result (wall clock) was served")
	}
}

// monotonicAhead returns t0 with its monotonic clock reading moved d ahead
// and its wall clock reading unchanged: what time.Now returns after d when
// the wall clock was stepped back by d. t0 must carry a monotonic reading.
func monotonicAhead(t0 time.Time, d time.Duration) time.Time {
	t := t0
	// time.Time's layout: the wall clock, the monotonic reading, the zone.
	p := (*struct {
		wall uint64
		ext  int64
		loc  *time.Location
	})(unsafe.Pointer(&t))
	p.ext += int64(d)
	return t
}

// TestTokenServed: a token's remembered entry is handed back only for its
// route and only while the credential cache holds that very entry: a
// refresh's Set of a new entry or a Delete ends it, and storing it again
// makes it current again.
func TestTokenServed(t *testing.T) {
	creds, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: 10, DeniedCapacity: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := cache.NewTokens[string](cache.TokensConfig{MaxEntries: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	now := time.Now()
	var mac cache.MAC
	mac[0] = 7
	tc.Set(&mac, "ns-a/sa", now, now.Add(time.Minute))
	tc.Wait()
	tok, ok := tc.Get(&mac, now)
	if !ok {
		t.Fatal("token result not cached")
	}
	if e := tok.Served("openai"); e != nil {
		t.Fatalf("nothing remembered yet, got %+v", e)
	}
	id := authz.NewIdentity("ns-a", "sa")
	v1 := &cache.Entry{Route: "openai", Identity: id, Value: "v1"}
	if err := creds.Set(v1); err != nil {
		t.Fatal(err)
	}
	tok.Remember(v1)
	if e := tok.Served("openai"); e != v1 {
		t.Fatalf("Served = %+v, want v1", e)
	}
	if e := tok.Served(""); e != nil {
		t.Fatalf("another route got %+v", e)
	}
	// A token looked up again is the same shared result.
	if again, _ := tc.Get(&mac, now); again.Served("openai") != v1 {
		t.Fatal("the cached result does not keep what was remembered")
	}

	v2 := &cache.Entry{Route: "openai", Identity: id, Value: "v2"}
	if err := creds.Set(v2); err != nil {
		t.Fatal(err)
	}
	if e := tok.Served("openai"); e != nil {
		t.Fatalf("a replaced entry was served: %q", e.Value)
	}
	tok.Remember(v2)
	creds.Delete("openai", id.Key())
	if e := tok.Served("openai"); e != nil {
		t.Fatalf("a deleted entry was served: %q", e.Value)
	}
	if err := creds.Set(v2); err != nil {
		t.Fatal(err)
	}
	if e := tok.Served("openai"); e != v2 {
		t.Fatalf("an entry stored again is current again, got %+v", e)
	}
	// Storing the same entry again does not end it.
	if err := creds.Set(v2); err != nil {
		t.Fatal(err)
	}
	if e := tok.Served("openai"); e != v2 {
		t.Fatalf("re-storing the current entry ended it, got %+v", e)
	}
}

func BenchmarkCredentialsGet(b *testing.B) {
	c, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: 100_000, DeniedCapacity: 1 << 10})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ids := make([]string, 100_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("ns-%d/sa", i)
		if err := c.Set(entry("", ids[i], "v", time.Now())); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := c.Get("", ids[i%len(ids)]); !ok {
				b.Fatal("miss")
			}
			i += 7919
		}
	})
}

func BenchmarkCredentialsSetUnderContention(b *testing.B) {
	c, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: 1 << 16, DeniedCapacity: 1 << 10})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_ = c.Set(entry("", fmt.Sprintf("ns-%d/sa", i%1000), "v", now))
			i++
		}
	})
}

// TestCredentialsCapacityUnderConcurrentSets: Sets of new identities racing
// on every shard fill the cache to exactly its capacity, never past it, and
// every Set beyond it is refused with ErrFull.
func TestCredentialsCapacityUnderConcurrentSets(t *testing.T) {
	const capacity, writers, each = 100, 8, 200
	c, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: capacity, DeniedCapacity: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		stored   int
		refusals int
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				err := c.Set(entry("", fmt.Sprintf("ns-%d-%d/sa", w, i), "v", now))
				mu.Lock()
				switch {
				case err == nil:
					stored++
				case errors.Is(err, cache.ErrFull):
					refusals++
				default:
					t.Errorf("Set: %v", err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if stored != capacity || c.Len() != capacity || refusals != writers*each-capacity {
		t.Fatalf("stored %d, Len %d, refused %d; want %d, %d, %d", stored, c.Len(), refusals, capacity, capacity, writers*each-capacity)
	}
}

// TestSizesAreRequired: the caches take their sizes from the configuration
// (cache.capacity, cache.deniedCapacity) and refuse a zero one instead of choosing their own.
func TestSizesAreRequired(t *testing.T) {
	if _, err := cache.NewCredentials(cache.CredentialsConfig{DeniedCapacity: 1}); err == nil {
		t.Error("NewCredentials with no Capacity: no error")
	}
	if _, err := cache.NewCredentials(cache.CredentialsConfig{Capacity: 1}); err == nil {
		t.Error("NewCredentials with no DeniedCapacity: no error")
	}
	if _, err := cache.NewTokens[string](cache.TokensConfig{}); err == nil {
		t.Error("NewTokens with no MaxEntries: no error")
	}
}
