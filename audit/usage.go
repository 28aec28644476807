package audit

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/authz"
)

// Use is one decision, as the checker saw it.
type Use struct {
	// At is when the decision was made.
	At time.Time
	// Reason is the deny reason; authz.ReasonNone for an allow.
	Reason authz.Reason
	// Identity is "namespace/serviceaccount"; empty when the token did not
	// name a valid one.
	Identity string
	// Route is the route's name ("" for the default route, and for a deny
	// before routing).
	Route string
	// Host is the request's host, as the gateway sent it (allows only; at
	// most maxHostLen bytes are kept).
	Host string
	// Version is the credential's KV version (allows only; 0 when the
	// source has none).
	Version int64
	// TokenTag is a prefix of the token's per-process HMAC: it tells tokens
	// apart without holding them (denies without an identity only; 0
	// without a token).
	TokenTag uint32
}

// maxHostLen bounds a host kept in a key (a DNS name is at most 253 bytes).
const maxHostLen = 256

// usageKey is what decisions are aggregated by: allows by (identity, route,
// version, host), denies by (reason, identity or token tag, route).
type usageKey struct {
	reason   authz.Reason
	identity string
	route    string
	host     string
	version  int64
	tag      uint32
}

type usageStat struct {
	count       int64
	first, last time.Time
}

// nShards spreads the keys over locks, so concurrent decisions of different
// identities rarely wait for each other.
const nShards = 32

type shard struct {
	mu sync.Mutex
	// idx finds a key's stat in stats: one map lookup per decision, and
	// both are reused (cleared) from one interval to the next, so a key seen
	// again costs no allocation.
	idx   map[usageKey]int32
	stats []usageStat
	_     [64]byte // keep shards off each other's cache lines
}

// usage aggregates decisions per interval, with at most max keys.
type usage struct {
	seed    maphash.Seed
	max     int64
	keys    atomic.Int64 // keys held, all shards
	dropped atomic.Int64 // decisions dropped this interval
	counter prometheus.Counter
	shards  [nShards]shard
}

func newUsage(maxKeys int, dropped prometheus.Counter) *usage {
	u := &usage{seed: maphash.MakeSeed(), max: int64(maxKeys), counter: dropped}
	for i := range u.shards {
		u.shards[i].idx = map[usageKey]int32{}
	}
	return u
}

func (u *usage) add(x Use) {
	k := usageKey{reason: x.Reason, identity: x.Identity, route: x.Route}
	if x.Reason == authz.ReasonNone {
		k.host, k.version = x.Host, x.Version
		if len(k.host) > maxHostLen {
			k.host = k.host[:maxHostLen]
		}
	} else if x.Identity == "" {
		k.tag = x.TokenTag
	}
	h := uint64(k.tag)
	if k.identity != "" {
		h = maphash.String(u.seed, k.identity)
	}
	s := &u.shards[h%nShards]
	s.mu.Lock()
	i, ok := s.idx[k]
	if !ok {
		if u.keys.Add(1) > u.max {
			u.keys.Add(-1)
			s.mu.Unlock()
			u.dropped.Add(1)
			u.counter.Inc()
			return
		}
		// A new key keeps copies of the request's strings: a slice of a
		// long host would hold the whole request header for the interval.
		k.host = strings.Clone(k.host)
		i = int32(len(s.stats))
		s.idx[k] = i
		s.stats = append(s.stats, usageStat{first: x.At, last: x.At})
	}
	st := &s.stats[i]
	st.count++
	if x.At.Before(st.first) {
		st.first = x.At
	}
	if x.At.After(st.last) {
		st.last = x.At
	}
	s.mu.Unlock()
}

// take ends the interval: it returns its records (sorted) and the number
// of decisions dropped, and starts the next with empty maps.
func (u *usage) take() (allows []usageRecord, denies []deniedRecord, dropped int64) {
	for i := range u.shards {
		s := &u.shards[i]
		// Held under the shard's lock: the interval's own memory, no I/O.
		s.mu.Lock()
		for k, j := range s.idx {
			st := s.stats[j]
			if k.reason == authz.ReasonNone {
				allows = append(allows, usageRecord{Identity: k.identity, Route: k.route, Version: k.version, Host: k.host,
					Count: st.count, First: st.first.UTC(), Last: st.last.UTC()})
				continue
			}
			d := deniedRecord{Reason: string(k.reason), Identity: k.identity, Route: k.route,
				Count: st.count, First: st.first.UTC(), Last: st.last.UTC()}
			if k.identity == "" && k.tag != 0 {
				d.TokenTag = tokenTag(k.tag)
			}
			denies = append(denies, d)
		}
		u.keys.Add(-int64(len(s.stats)))
		clear(s.idx)
		s.stats = s.stats[:0]
		s.mu.Unlock()
	}
	slices.SortFunc(allows, func(a, b usageRecord) int {
		return cmp.Or(cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.Route, b.Route), cmp.Compare(a.Host, b.Host), cmp.Compare(a.Version, b.Version))
	})
	slices.SortFunc(denies, func(a, b deniedRecord) int {
		return cmp.Or(cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.TokenTag, b.TokenTag), cmp.Compare(a.Route, b.Route))
	})
	return allows, denies, u.dropped.Swap(0)
}

// tokenTag prints a tag as the checker's logs do: 8 hex digits.
func tokenTag(tag uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], tag)
	return hex.EncodeToString(b[:])
}
