package cache

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

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

// ErrFull is returned by Set when the cache holds Capacity entries and the
// entry is a new one.
var ErrFull = errors.New("cache: credential cache is full")

// Credentials is the credential cache. It never evicts on its own: capacity
// is a hard bound that makes Set fail loudly instead of dropping a
// credential. Since it never evicts, it needs no admission policy: it is a
// map sharded by a 64-bit hash of (route, identity), read under a per-shard
// read lock and verified against the entry's own route and identity, with
// an overflow map for the (rare) keys whose hash collides, so a collision
// costs a second lookup, never another identity's answer or a lost entry.
type Credentials struct {
	capacity int64
	size     atomic.Int64
	shards   *[credShards]credShard
}

const credShards = 64

// credShard is one shard, padded to its own cache lines so readers of two
// shards do not contend on one line.
type credShard struct {
	mu   sync.RWMutex
	m    map[uint64]*Entry
	coll map[credID]*Entry // entries whose hash is taken by another key
	_    [64 - 40]byte
}

// credID is an entry's exact key.
type credID struct{ route, identity string }

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
	c := &Credentials{capacity: cfg.Capacity, shards: new([credShards]credShard)}
	for i := range c.shards {
		c.shards[i].m = map[uint64]*Entry{}
	}
	return c, nil
}

// keyOf is credKey; tests replace it to force collisions.
var keyOf = credKey

func credKey(route, identity string) uint64 {
	return xxhash.Sum64String(identity) ^ (xxhash.Sum64String(route) * 0x9E3779B97F4A7C15)
}

func (c *Credentials) shard(k uint64) *credShard { return &c.shards[k>>58] }

func (e *Entry) is(route, identity string) bool {
	return e.Route == route && e.Identity.Key == identity
}

// Get returns the entry for (route, identity), identity being an
// authz.Identity's Key. It does no I/O and does not allocate.
func (c *Credentials) Get(route, identity string) (*Entry, bool) {
	k := keyOf(route, identity)
	s := c.shard(k)
	s.mu.RLock()
	e, ok := s.m[k]
	if ok && !e.is(route, identity) {
		e, ok = s.coll[credID{route, identity}]
	}
	s.mu.RUnlock()
	return e, ok
}

// Set stores e, replacing any entry for the same (route, identity). When it
// returns nil the entry is visible to every later Get.
func (c *Credentials) Set(e *Entry) error {
	k := keyOf(e.Route, e.Identity.Key)
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, taken := s.m[k]
	switch {
	case !taken || prev.is(e.Route, e.Identity.Key):
		if !taken && c.size.Load() >= c.capacity {
			return ErrFull
		}
		s.m[k] = e
		if !taken {
			c.size.Add(1)
		}
	default:
		id := credID{e.Route, e.Identity.Key}
		_, existed := s.coll[id]
		if !existed && c.size.Load() >= c.capacity {
			return ErrFull
		}
		if s.coll == nil {
			s.coll = map[credID]*Entry{}
		}
		s.coll[id] = e
		if !existed {
			c.size.Add(1)
		}
	}
	return nil
}

// Delete removes (route, identity), if present.
func (c *Credentials) Delete(route, identity string) {
	k := keyOf(route, identity)
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok && e.is(route, identity) {
		delete(s.m, k)
		c.size.Add(-1)
		// Promote a colliding entry to the main map, if any.
		for id, o := range s.coll {
			if keyOf(id.route, id.identity) == k {
				s.m[k] = o
				delete(s.coll, id)
				break
			}
		}
		return
	}
	id := credID{route, identity}
	if _, ok := s.coll[id]; ok {
		delete(s.coll, id)
		c.size.Add(-1)
	}
}

// Len is the number of entries.
func (c *Credentials) Len() int64 { return c.size.Load() }

// Close releases the cache (nothing to release; kept for symmetry with
// Tokens).
func (c *Credentials) Close() {}
