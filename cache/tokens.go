package cache

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// MAC is a keyed hash of a token (HMAC-SHA256 with a per-process key). The
// token-result cache is keyed by it and never sees a raw token.
type MAC [32]byte

// Token is one cached validation result. Get hands out the cached Token
// itself, shared by every request with the same token: its Value must be
// read, never changed.
//
// A Token also remembers the credential entry last served for it (Remember,
// Served), so a hit on a token that was just used skips the credential
// cache's map: its key, an identity's name, is another cold read per
// request at 100,000 identities.
type Token[V any] struct {
	// What every Get reads comes first, in the item's first cache line:
	// the MAC, the expiry (nanoseconds after the cache's base), the entry
	// last served and the stamp.
	mac     MAC
	expires time.Duration
	served  atomic.Pointer[Entry]
	stamp   atomic.Uint64
	Value   V
}

// Stamp records that the caller checked this result against something
// that changes rarely, as of its generation gen (for example: the
// ServiceAccount existed while the informer had seen gen removals).
func (t *Token[V]) Stamp(gen uint64) { t.stamp.Store(gen + 1) }

// Stamped reports whether Stamp recorded gen (never, for a new result).
func (t *Token[V]) Stamped(gen uint64) bool { return t.stamp.Load() == gen+1 }

// Remember records e as the entry served for this token. The caller must
// have found e in the credential cache under this token's own identity.
func (t *Token[V]) Remember(e *Entry) { t.served.Store(e) }

// Served returns the entry Remember last recorded, if it is route's and is
// still the one the credential cache holds (not replaced by a refresh, not
// deleted); otherwise nil, and the caller looks the entry up.
func (t *Token[V]) Served(route string) *Entry {
	e := t.served.Load()
	if e == nil || e.superseded.Load() || e.Route != route {
		return nil
	}
	return e
}

// Tokens caches token validation results of type V. Unlike Credentials it is
// a true cache: entries expire, and ristretto may evict under memory pressure,
// which only costs a re-validation.
type Tokens[V any] struct {
	c *ristretto.Cache[uint64, *Token[V]]
	// base is when the cache was made (with a monotonic clock reading):
	// expiries are kept as offsets from it, which time.Time's Sub measures
	// on the monotonic clock when the caller's times carry it, so a wall
	// clock stepped back does not stretch a result's lifetime.
	base time.Time
}

// TokensConfig sizes the token-result cache.
type TokensConfig struct {
	// MaxEntries bounds the number of cached results (cache.capacity);
	// required.
	MaxEntries int64
}

// NewTokens builds a token-result cache.
func NewTokens[V any](cfg TokensConfig) (*Tokens[V], error) {
	if cfg.MaxEntries <= 0 {
		return nil, fmt.Errorf("cache: token results: MaxEntries %d is not positive (cache.capacity)", cfg.MaxEntries)
	}
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *Token[V]]{
		NumCounters:        cfg.MaxEntries * 10,
		MaxCost:            cfg.MaxEntries,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: new token cache: %w", err)
	}
	return &Tokens[V]{c: rc, base: time.Now()}, nil
}

// Get returns the result cached for mac if it has not expired at now.
func (t *Tokens[V]) Get(mac *MAC, now time.Time) (*Token[V], bool) {
	it, ok := t.c.Get(binary.LittleEndian.Uint64(mac[:8]))
	if !ok || it.mac != *mac || now.Sub(t.base) >= it.expires {
		return nil, false
	}
	return it, true
}

// Set caches v for mac until expires. Ristretto applies Sets asynchronously;
// a result that is not yet visible only costs one more validation.
func (t *Tokens[V]) Set(mac *MAC, v V, now, expires time.Time) {
	t.set(mac, v, now, expires, 0)
}

// SetStamped is Set with the result already stamped at gen (Stamp), so no
// reader sees it unstamped: the caller checked it as of gen before caching.
func (t *Tokens[V]) SetStamped(mac *MAC, v V, now, expires time.Time, gen uint64) {
	t.set(mac, v, now, expires, gen+1)
}

// set caches v with stamp, the raw value Stamp stores (0: none).
func (t *Tokens[V]) set(mac *MAC, v V, now, expires time.Time, stamp uint64) {
	ttl := expires.Sub(now)
	if ttl <= 0 {
		return
	}
	it := &Token[V]{mac: *mac, Value: v, expires: expires.Sub(t.base)}
	it.stamp.Store(stamp)
	// The ristretto TTL only reclaims memory; expiry is decided by Get
	// against the caller's clock.
	t.c.SetWithTTL(binary.LittleEndian.Uint64(mac[:8]), it, 1, ttl+10*time.Minute)
}

// Delete forgets mac.
func (t *Tokens[V]) Delete(mac *MAC) { t.c.Del(binary.LittleEndian.Uint64(mac[:8])) }

// Wait blocks until earlier Sets are applied (for tests and benchmarks).
func (t *Tokens[V]) Wait() { t.c.Wait() }

// Close releases ristretto's goroutines.
func (t *Tokens[V]) Close() { t.c.Close() }
