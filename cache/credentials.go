package cache

import (
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

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
// The fields every hit reads (its lifetimes, its refusal, whether it is
// still current and its prepared answer) come first, in the entry's first
// cache line.
type Entry struct {
	FreshUntil time.Time // when a refresh is due
	ExpiresAt  time.Time // after this the entry must not be served

	// Denied, when set, makes this a negative entry: Vault refused the
	// identity or holds no usable credential; it is the deny reason.
	Denied authz.Reason

	// superseded is set when the cache stops holding the entry (a Set of
	// another entry for its key, or a Delete): a Token's Served then no
	// longer returns it.
	superseded atomic.Bool

	// memo is Memo's value: the answer's interface words in the entry
	// itself, so reading it is no extra pointer to chase.
	memo atomic.Value

	Route    string         // route name ("" is the default route)
	Identity authz.Identity // whose credential this is

	// Header and Value are the rendered injection's first header (name
	// lower-case); both empty when it sets none (metadata or signing only).
	Header string
	Value  string
	// Shapes is the rest of the rendered injection; nil when it is the
	// one header.
	Shapes *Shapes
	// Version is the KV version the value was read from.
	Version int64

	ReadAt time.Time // last successful read from the source
}

// Shapes are the forms of an injection beyond its first header, rendered
// when the credential was read, shared read-only by every request.
type Shapes struct {
	// Headers are set after Header, overwriting (names lower-case).
	Headers []Field
	// Query parameters are set on the upstream request (gRPC only), their
	// values URL-encoded (url.QueryEscape).
	Query []Field
	// Metadata goes into the CheckResponse's dynamic metadata (gRPC only).
	Metadata []Field
	// Sign, when set, signs each request with AWS Signature Version 4.
	Sign *SigV4
}

// Field is one rendered name and value.
type Field struct {
	Name, Value string
}

// SigV4 is what signing a request needs: the identity's AWS credentials
// (access_key, secret_key, security_token of its secret) and the route's
// service and region.
type SigV4 struct {
	AccessKey, SecretKey string
	// SessionToken is the temporary credentials' token; empty for
	// long-term keys.
	SessionToken    string
	Service, Region string
	// UnsignedPayload signs "UNSIGNED-PAYLOAD" instead of the body's hash.
	UnsignedPayload bool
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
// be pure and must return a non-nil value of the same concrete type for every
// caller: concurrent first callers may each build, and one result wins.
func (e *Entry) Memo(build func(*Entry) any) any {
	if v := e.memo.Load(); v != nil {
		return v
	}
	e.memo.CompareAndSwap(nil, build(e))
	return e.memo.Load()
}

// ErrFull is returned by Set when the cache holds Capacity credentials and
// the entry is a new one.
var ErrFull = errors.New("cache: credential cache is full")

// Credentials is the credential cache. It never evicts a credential:
// capacity is a hard bound that makes Set fail loudly instead of dropping
// one. Since it never evicts, it needs no admission policy: it is a map
// keyed exactly by (route, identity), sharded by the identity so concurrent
// readers of different identities rarely share a lock's cache line. Keys
// are exact: there is no hash to collide.
//
// Negative entries (a refusal: Denied set) are kept apart, in one LRU of
// at most DeniedCapacity entries ordered by when they were stored, and do
// not count against Capacity: a flood of identities Vault refuses evicts
// the refusals stored longest ago (with one TTL for every refusal, the
// first to expire), never a credential, and cannot fill the cache. An
// evicted refusal only costs its identity's next request a miss.
type Credentials struct {
	capacity int64
	size     atomic.Int64
	seed     maphash.Seed
	shards   *[credShards]credShard

	// denied holds the negative entries, guarded by deniedMu (taken after a
	// shard's lock, never before). Get only peeks (a read lock): the order
	// is that of Sets, not of Gets.
	deniedMu sync.RWMutex
	denied   *simplelru.LRU[credKey, *Entry]
	// evicted counts the negative entries denied dropped to stay within
	// its bound.
	evicted atomic.Int64
}

const credShards = 64

// credShard is one shard, padded to its own cache lines so readers of two
// shards do not contend on one line.
type credShard struct {
	mu sync.RWMutex
	m  map[credKey]*Entry
	_  [64 - 32]byte
}

// credKey is an entry's exact key: its route's name and its identity's Key.
type credKey struct{ route, identity string }

// CredentialsConfig sizes the credential cache.
type CredentialsConfig struct {
	// Capacity is the maximum number of (route, identity) credentials
	// (cache.capacity); required.
	Capacity int64
	// DeniedCapacity is the maximum number of (route, identity) negative
	// entries, beyond Capacity (cache.deniedCapacity); required.
	DeniedCapacity int
}

// NewCredentials builds the credential cache.
func NewCredentials(cfg CredentialsConfig) (*Credentials, error) {
	if cfg.Capacity <= 0 {
		return nil, fmt.Errorf("cache: capacity %d is not positive (cache.capacity)", cfg.Capacity)
	}
	if cfg.DeniedCapacity <= 0 {
		return nil, fmt.Errorf("cache: denied capacity %d is not positive (cache.deniedCapacity)", cfg.DeniedCapacity)
	}
	c := &Credentials{capacity: cfg.Capacity, seed: maphash.MakeSeed(), shards: new([credShards]credShard)}
	for i := range c.shards {
		c.shards[i].m = map[credKey]*Entry{}
	}
	var err error
	// Called under deniedMu for an entry removed or evicted: a Token's
	// Served no longer returns it.
	c.denied, err = simplelru.NewLRU(cfg.DeniedCapacity, func(_ credKey, e *Entry) { e.superseded.Store(true) })
	if err != nil {
		return nil, fmt.Errorf("cache: negative entries: %w", err)
	}
	return c, nil
}

func (c *Credentials) shard(identity string) *credShard {
	return &c.shards[maphash.String(c.seed, identity)%credShards]
}

// Get returns the entry for (route, identity), identity being an
// authz.Identity's Key: a credential, or a negative entry. It does no I/O
// and does not allocate.
func (c *Credentials) Get(route, identity string) (*Entry, bool) {
	k := credKey{route, identity}
	s := c.shard(identity)
	s.mu.RLock()
	e, ok := s.m[k]
	if !ok {
		c.deniedMu.RLock()
		e, ok = c.denied.Peek(k)
		c.deniedMu.RUnlock()
	}
	s.mu.RUnlock()
	return e, ok
}

// Set stores e, replacing any entry for the same (route, identity). When it
// returns nil the entry is visible to every later Get. A credential is
// refused with ErrFull when Capacity credentials are held (the negative
// entry it replaces is removed all the same); a negative entry is always
// kept, evicting the one stored longest ago when DeniedCapacity are held.
func (c *Credentials) Set(e *Entry) error {
	k := credKey{e.Route, e.Identity.Key()}
	s := c.shard(k.identity)
	s.mu.Lock()
	defer s.mu.Unlock()
	old, taken := s.m[k]
	if e.Denied != authz.ReasonNone {
		if taken {
			delete(s.m, k)
			c.size.Add(-1)
			old.superseded.Store(true)
		}
		c.setDenied(k, e)
		return nil
	}
	c.deleteDenied(k, e)
	if !taken && !c.reserve() {
		return ErrFull
	}
	s.m[k] = e
	// e may be stored again after a Delete: it is current again.
	e.superseded.Store(false)
	if taken && old != e {
		old.superseded.Store(true)
	}
	return nil
}

// setDenied stores the negative entry e under k. Called with k's shard
// locked.
func (c *Credentials) setDenied(k credKey, e *Entry) {
	c.deniedMu.Lock()
	old, taken := c.denied.Peek(k)
	if c.denied.Add(k, e) {
		c.evicted.Add(1)
	}
	c.deniedMu.Unlock()
	e.superseded.Store(false)
	if taken && old != e {
		old.superseded.Store(true)
	}
}

// deleteDenied removes k's negative entry, unless it is keep. Called with
// k's shard locked.
func (c *Credentials) deleteDenied(k credKey, keep *Entry) {
	c.deniedMu.Lock()
	if old, ok := c.denied.Peek(k); ok && old != keep {
		c.denied.Remove(k)
	}
	c.deniedMu.Unlock()
}

// reserve takes one place for a new entry, unless the cache is full. Sets
// of two shards may run at once: the count is claimed with a compare and
// swap, so together they never pass capacity.
func (c *Credentials) reserve() bool {
	for {
		n := c.size.Load()
		if n >= c.capacity {
			return false
		}
		if c.size.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Delete removes (route, identity), if present.
func (c *Credentials) Delete(route, identity string) {
	k := credKey{route, identity}
	s := c.shard(identity)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.m[k]; ok {
		delete(s.m, k)
		c.size.Add(-1)
		old.superseded.Store(true)
	}
	c.deleteDenied(k, nil)
}

// Len is the number of credentials (at most Capacity; negative entries
// apart).
func (c *Credentials) Len() int64 { return c.size.Load() }

// DeniedLen is the number of negative entries (at most DeniedCapacity).
func (c *Credentials) DeniedLen() int {
	c.deniedMu.RLock()
	defer c.deniedMu.RUnlock()
	return c.denied.Len()
}

// DeniedEvictions is how many negative entries were evicted to stay within
// DeniedCapacity since the cache was built.
func (c *Credentials) DeniedEvictions() int64 { return c.evicted.Load() }

// Close releases the cache (nothing to release; kept for symmetry with
// Tokens).
func (c *Credentials) Close() {}
