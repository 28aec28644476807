package auditbridge

import (
	"slices"
	"sync"

	"github.com/credinject/credinject/events"
)

// everything is the rotation that covers every identity and route.
var everything = events.Rotation{}

// queue is the bounded buffer between the inputs and the publisher. push
// never blocks (a socket reader that blocked would stall Vault's requests).
// An event equal to one still waiting is coalesced into it: the waiting one
// is sent after both writes, so it covers both. When the buffer is full it
// is replaced by a single event for every identity, so an overflow costs a
// full re-read instead of a lost rotation.
type queue struct {
	max int

	mu    sync.Mutex
	items []events.Rotation
	set   map[events.Rotation]struct{}

	ready chan struct{} // capacity 1: signalled when items become non-empty
	// gauge, if set, follows len(items); updated under mu so that it never
	// lags behind a concurrent change.
	gauge interface{ Set(float64) }
}

// pushResult says what push did.
type pushResult int

const (
	queued pushResult = iota
	coalesced
	overflowed
)

func newQueue(max int) *queue {
	return &queue{max: max, set: map[events.Rotation]struct{}{}, ready: make(chan struct{}, 1)}
}

func (q *queue) push(r events.Rotation) pushResult {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.set[r]; ok {
		return coalesced
	}
	if _, ok := q.set[everything]; ok {
		return coalesced
	}
	res := queued
	if len(q.items) >= q.max {
		q.collapse()
		res = overflowed
	} else {
		q.items = append(q.items, r)
		q.set[r] = struct{}{}
	}
	q.changed()
	q.signal()
	return res
}

// take removes and returns everything waiting, in arrival order.
func (q *queue) take() []events.Rotation {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	clear(q.set)
	q.changed()
	return items
}

// requeue puts events that could not be sent back in front of those that
// arrived meanwhile. It reports whether the buffer overflowed.
func (q *queue) requeue(rs []events.Rotation) bool {
	if len(rs) == 0 {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	merged := make([]events.Rotation, 0, len(rs)+len(q.items))
	seen := make(map[events.Rotation]struct{}, cap(merged))
	for _, r := range slices.Concat(rs, q.items) {
		if _, ok := seen[r]; !ok {
			seen[r] = struct{}{}
			merged = append(merged, r)
		}
	}
	q.items, q.set = merged, seen
	over := len(q.items) > q.max
	if over {
		q.collapse()
	}
	q.changed()
	q.signal()
	return over
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *queue) collapse() {
	q.items = []events.Rotation{everything}
	clear(q.set)
	q.set[everything] = struct{}{}
}

func (q *queue) changed() {
	if q.gauge != nil {
		q.gauge.Set(float64(len(q.items)))
	}
}

func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}
