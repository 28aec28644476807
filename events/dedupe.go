package events

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	utilcache "k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/utils/clock"
)

// recentIDs remembers the events seen lately, by CloudEvents source and id
// (the pair CloudEvents makes unique), so a redelivered or replayed copy is
// dropped: at most size of them, each for window after it was first seen.
// An id pushed out early (more than size distinct events within window) only
// costs a coalesced re-read if it comes back. Keys are a SHA-256 of the pair,
// so memory does not grow with the attributes' length. It is used from the
// subscription's delivery goroutine only.
type recentIDs struct {
	c      *utilcache.LRUExpireCache
	window time.Duration
}

func newRecentIDs(size int, window time.Duration, c clock.PassiveClock) *recentIDs {
	return &recentIDs{c: utilcache.NewLRUExpireCacheWithClock(size, c), window: window}
}

// seen reports whether m's (source, id) was seen within the window, and
// remembers it if not.
func (r *recentIDs) seen(m Meta) bool {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(m.Source)))
	h.Write(n[:])
	h.Write([]byte(m.Source))
	h.Write([]byte(m.ID))
	var key [sha256.Size]byte
	h.Sum(key[:0])
	if _, ok := r.c.Get(key); ok {
		return true
	}
	r.c.Add(key, struct{}{}, r.window)
	return false
}
