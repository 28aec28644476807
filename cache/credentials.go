package cache

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/dgraph-io/ristretto/v2"

	"github.com/credinject/credinject/authz"
)

// Freshness says how the checker may use an entry at a given time.
type Freshness int

const (
	// Fresh entries are served as they are.
	Fresh Freshness = iota
	// Stale entries are past their refresh time (a refresh failed or is late)
	// but within the configured grace: served, counted and logged.
	Stale
	// Expired entries must not be served.
	Expired
)

// Entry is one identity's credential for one route. Entries are immutable once
// stored: a refresh stores a new Entry, so readers never see a torn update.
type Entry struct {
	Route    string         // route name ("" is the default route)
	Identity authz.Identity // whose credential this is

	// Header and Value are the rendered injection (header name lower-case).
	Header string
	Value  string
	// Version is the KV version the value was read from.
	Version int64

	// Denied, when set, makes this a negative entry: Vault refused the
	// identity or holds no usable credential; it is the deny reason.
	Denied authz.Reason

	ReadAt     time.Time // last successful read from the source
	FreshUntil time.Time // when a refresh is due
	ExpiresAt  time.Time // after this the entry must not be served

	memo atomic.Pointer[any]
}

// State tells whether e may be served at now.
func (e *Entry) State(now time.Time) Freshness {
	switch {
	case now.Before(e.FreshUntil):
		return Fresh
	case now.Before(e.ExpiresAt):
		return Stale
	default:
		return Expired
	}
}

// Memo returns a value derived from the entry (for example a prepared
// response), building it at most once per entry in the common case. build must
// be pure: concurrent first callers may each build, and one result wins.
func (e *Entry) Memo(build func(*Entry) any) any {
	if p := e.memo.Load(); p != nil {
		return *p
	}
	v := build(e)
	e.memo.CompareAndSwap(nil, &v)
	return *e.memo.Load()
}

// ErrFull is returned by Set when the cache is at capacity and ristretto
// would have to drop an entry the watcher holds.
var ErrFull = errors.New("cache: credential cache is full")

// Credentials is the credential cache. It never evicts on its own: capacity is
// a hard bound that makes Set fail loudly instead of dropping a credential.
type Credentials struct {
	c        *ristretto.Cache[uint64, *Entry]
	capacity int64
	size     atomic.Int64
	// locks serialise writers of one key so the size count stays exact.
	locks [64]sync.Mutex
}

// CredentialsConfig sizes the credential cache.
type CredentialsConfig struct {
	// Capacity is the maximum number of (route, identity) entries.
	Capacity int64
}

// NewCredentials builds the credential cache.
func NewCredentials(cfg CredentialsConfig) (*Credentials, error) {
	if cfg.Capacity <= 0 {
		cfg.Capacity = 1 << 20
	}
	c := &Credentials{capacity: cfg.Capacity}
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *Entry]{
		// Admission never decides here (see MaxCost), so few counters do.
		NumCounters: cfg.Capacity,
		// Ristretto's admission policy only rejects when the cache is over
		// MaxCost. Capacity is enforced here, below MaxCost, so admission never
		// drops an entry the watcher holds.
		MaxCost:            cfg.Capacity * 2,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: new credential cache: %w", err)
	}
	c.c = rc
	return c, nil
}

func credKey(route, identity string) uint64 {
	return xxhash.Sum64String(identity) ^ (xxhash.Sum64String(route) * 0x9E3779B97F4A7C15)
}

// Get returns the entry for (route, identity), identity being an
// authz.Identity's Key. It does no I/O and does not allocate.
func (c *Credentials) Get(route, identity string) (*Entry, bool) {
	e, ok := c.c.Get(credKey(route, identity))
	if !ok || e.Identity.Key != identity || e.Route != route {
		return nil, false
	}
	return e, true
}

// Set stores e, replacing any entry for the same (route, identity). When it
// returns nil the entry is visible to every later Get.
func (c *Credentials) Set(e *Entry) error {
	k := credKey(e.Route, e.Identity.Key)
	mu := &c.locks[k%uint64(len(c.locks))]
	mu.Lock()
	defer mu.Unlock()
	prev, existed := c.c.Get(k)
	existed = existed && prev.Identity.Key == e.Identity.Key && prev.Route == e.Route
	if !existed && c.size.Load() >= c.capacity {
		return ErrFull
	}
	// Ristretto drops a Set when its buffer is momentarily full; wait and try
	// again, then wait once more so the entry is visible on return.
	for i := 0; !c.c.Set(k, e, 1); i++ {
		c.c.Wait()
		if i > 100 {
			return fmt.Errorf("cache: set %s %q: dropped by ristretto", e.Identity.Key, e.Route)
		}
	}
	c.c.Wait()
	if _, ok := c.c.Get(k); !ok {
		return fmt.Errorf("cache: set %s %q: rejected by ristretto", e.Identity.Key, e.Route)
	}
	if !existed {
		c.size.Add(1)
	}
	return nil
}

// Delete removes (route, identity), if present.
func (c *Credentials) Delete(route, identity string) {
	k := credKey(route, identity)
	mu := &c.locks[k%uint64(len(c.locks))]
	mu.Lock()
	defer mu.Unlock()
	if e, ok := c.c.Get(k); ok && e.Identity.Key == identity && e.Route == route {
		c.c.Del(k)
		c.c.Wait()
		c.size.Add(-1)
	}
}

// Len is the number of entries.
func (c *Credentials) Len() int64 { return c.size.Load() }

// Close releases ristretto's goroutines.
func (c *Credentials) Close() { c.c.Close() }
