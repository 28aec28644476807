package cache

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// MAC is a keyed hash of a token (HMAC-SHA256 with a per-process key). The
// token-result cache is keyed by it and never sees a raw token.
type MAC [32]byte

// tokenItem keeps what every Get reads, the MAC and the expiry, in the
// item's first cache line, before the value.
type tokenItem[V any] struct {
	mac     MAC
	expires time.Time
	value   V
}

// Tokens caches token validation results of type V. Unlike Credentials it is
// a true cache: entries expire, and ristretto may evict under memory pressure,
// which only costs a re-validation.
type Tokens[V any] struct {
	c *ristretto.Cache[uint64, *tokenItem[V]]
}

// TokensConfig sizes the token-result cache.
type TokensConfig struct {
	// MaxEntries bounds the number of cached results.
	MaxEntries int64
}

// NewTokens builds a token-result cache.
func NewTokens[V any](cfg TokensConfig) (*Tokens[V], error) {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 1 << 20
	}
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *tokenItem[V]]{
		NumCounters:        cfg.MaxEntries * 10,
		MaxCost:            cfg.MaxEntries,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: new token cache: %w", err)
	}
	return &Tokens[V]{c: rc}, nil
}

// Get returns the result cached for mac if it has not expired at now.
func (t *Tokens[V]) Get(mac *MAC, now time.Time) (V, bool) {
	it, ok := t.c.Get(binary.LittleEndian.Uint64(mac[:8]))
	if !ok || it.mac != *mac || !now.Before(it.expires) {
		var zero V
		return zero, false
	}
	return it.value, true
}

// Set caches v for mac until expires. Ristretto applies Sets asynchronously;
// a result that is not yet visible only costs one more validation.
func (t *Tokens[V]) Set(mac *MAC, v V, now, expires time.Time) {
	ttl := expires.Sub(now)
	if ttl <= 0 {
		return
	}
	// The ristretto TTL only reclaims memory; expiry is decided by Get
	// against the caller's clock.
	t.c.SetWithTTL(binary.LittleEndian.Uint64(mac[:8]), &tokenItem[V]{mac: *mac, value: v, expires: expires}, 1, ttl+10*time.Minute)
}

// Delete forgets mac.
func (t *Tokens[V]) Delete(mac *MAC) { t.c.Del(binary.LittleEndian.Uint64(mac[:8])) }

// Wait blocks until earlier Sets are applied (for tests and benchmarks).
func (t *Tokens[V]) Wait() { t.c.Wait() }

// Close releases ristretto's goroutines.
func (t *Tokens[V]) Close() { t.c.Close() }
