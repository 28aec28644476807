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
	// IdentitySource is where the identity came from, or was looked for:
	// "token" or "peer" ("" written as nothing).
	IdentitySource string
	// Route is the route's name ("" for the default route, and for a deny
	// before routing).
	Route string
	// Host is the request's host, as the gateway sent it (allows only; at
	// most maxHostLen bytes are kept).
	Host string
	// Version is the credential's KV version (allows only; 0 when the
	// source has none).
	Version int64
	// TokenTag is a prefix of the token's per-process HMAC: it names a
	// token without holding it (denies without an identity only; 0 without
	// a token). Such denies are aggregated per reason, not per token: the
	// record carries the tag of the last one as a sample.
	TokenTag uint32
}

// maxHostLen bounds a host kept in a key (a DNS name is at most 253 bytes).
const maxHostLen = 256

// usageKey is what decisions are aggregated by: allows by (identity, route,
// version, host), denies by (reason, identity, route); a deny without an
// identity (no valid token) by its reason alone, so forged tokens add no key.
type usageKey struct {
	reason   authz.Reason
	identity string
	source   string
	route    string
	host     string
	version  int64
}

type usageStat struct {
	count       int64
	first, last time.Time
	// tag is the token tag of the last deny without an identity (a sample).
	tag uint32
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

// usage aggregates decisions per interval, with at most max allow keys and,
// apart, at most max deny keys: denies never take an allow's place.
type usage struct {
	seed    maphash.Seed
	max     int64
	allows  atomic.Int64 // allow keys held, all shards
	denies  atomic.Int64 // deny keys held, all shards
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
	k := usageKey{reason: x.Reason, identity: x.Identity, source: x.IdentitySource, route: x.Route}
	if x.Reason == authz.ReasonNone {
		k.host, k.version = x.Host, x.Version
		if len(k.host) > maxHostLen {
			k.host = k.host[:maxHostLen]
		}
	}
	// Without an identity, the token's tag spreads the reason's key over
	// the shards (merged by take), so a flood does not queue on one lock.
	h := uint64(x.TokenTag)
	if k.identity != "" {
		h = maphash.String(u.seed, k.identity)
	}
	keys := &u.allows
	if x.Reason != authz.ReasonNone {
		keys = &u.denies
	}
	s := &u.shards[h%nShards]
	s.mu.Lock()
	i, ok := s.idx[k]
	if !ok {
		if keys.Add(1) > u.max {
			keys.Add(-1)
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
	if !x.At.Before(st.last) {
		st.last = x.At
		st.tag = x.TokenTag
	}
	s.mu.Unlock()
}

// take ends the interval: it returns its records (sorted) and the number
// of decisions dropped, and starts the next with empty maps.
func (u *usage) take() (allows []usageRecord, denies []deniedRecord, dropped int64) {
	// A tokenless deny's key may be in every shard: merged here.
	anon := map[usageKey]usageStat{}
	for i := range u.shards {
		s := &u.shards[i]
		// Held under the shard's lock: the interval's own memory, no I/O.
		s.mu.Lock()
		var nAllows int64
		for k, j := range s.idx {
			st := s.stats[j]
			switch {
			case k.reason == authz.ReasonNone:
				nAllows++
				allows = append(allows, usageRecord{Identity: k.identity, IdentitySource: k.source, Route: k.route, Version: k.version, Host: k.host,
					Count: st.count, First: st.first.UTC(), Last: st.last.UTC()})
			case k.identity == "":
				anon[k] = merge(anon[k], st)
			default:
				denies = append(denies, deniedRecord{Reason: string(k.reason), Identity: k.identity, IdentitySource: k.source, Route: k.route,
					Count: st.count, First: st.first.UTC(), Last: st.last.UTC()})
			}
		}
		u.allows.Add(-nAllows)
		u.denies.Add(nAllows - int64(len(s.stats)))
		clear(s.idx)
		s.stats = s.stats[:0]
		s.mu.Unlock()
	}
	for k, st := range anon {
		d := deniedRecord{Reason: string(k.reason), IdentitySource: k.source, Route: k.route, Count: st.count, First: st.first.UTC(), Last: st.last.UTC()}
		if st.tag != 0 {
			d.TokenTag = tokenTag(st.tag)
		}
		denies = append(denies, d)
	}
	slices.SortFunc(allows, func(a, b usageRecord) int {
		return cmp.Or(cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.IdentitySource, b.IdentitySource), cmp.Compare(a.Route, b.Route), cmp.Compare(a.Host, b.Host), cmp.Compare(a.Version, b.Version))
	})
	slices.SortFunc(denies, func(a, b deniedRecord) int {
		return cmp.Or(cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.IdentitySource, b.IdentitySource), cmp.Compare(a.TokenTag, b.TokenTag), cmp.Compare(a.Route, b.Route))
	})
	return allows, denies, u.dropped.Swap(0)
}

// merge adds b's decisions to a's (a zero a: none yet); the sample tag is
// the later one's.
func merge(a, b usageStat) usageStat {
	if a.count == 0 {
		return b
	}
	a.count += b.count
	if b.first.Before(a.first) {
		a.first = b.first
	}
	if !b.last.Before(a.last) {
		a.last, a.tag = b.last, b.tag
	}
	return a
}

// tokenTag prints a tag as the checker's logs do: 8 hex digits.
func tokenTag(tag uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], tag)
	return hex.EncodeToString(b[:])
}
