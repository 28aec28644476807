package events

import (
	"slices"
	"sync"
	"time"
)

// coalescer holds the rotations waiting for the Subscriber's worker and
// decides which one it may run next, so that a flood of events turns into a
// bounded number of re-reads:
//
//   - A rotation already waiting absorbs a new event for the same scope.
//   - A scope may start only MinInterval after the last start of any scope
//     that overlaps it (shares an identity and route with it), so each
//     (identity, route) is re-read at most once per interval whatever mix
//     of wildcard and named events arrives.
//   - A start also settles the waiting scopes it covers (see subsumes): it
//     reads after their events arrived. A wider scope that may start goes
//     before the narrower ones it covers.
//   - Scopes that may start and overlap start together, as one batch: the
//     Refresher reads each (identity, route) of the batch once, with the
//     strongest of their asks (an event naming an identity beats a
//     wildcard, see BatchRefresher). Neither subsumes the other, so one
//     started alone would make the other wait a second interval.
//
// Nothing is lost: an event either waits (and its scope starts later) or
// is covered by a start that comes after it, so after the last event of a
// burst there is always a re-read that starts after it (the trailing edge),
// at most MinInterval after the previous one, and so within MinInterval of
// the last event. The first event of a quiet period starts at once (the
// leading edge).
//
// Memory is bounded: at most max scopes wait (add reports the overflow, and
// the Subscriber resyncs instead), and starts are remembered for one
// interval only.
type coalescer struct {
	interval time.Duration
	max      int

	mu      sync.Mutex
	waiting []*waitingScope        // in order of their first event
	started map[Rotation]time.Time // last start of each scope, within interval
}

// waitingScope is a scope with events not yet covered by a start.
type waitingScope struct {
	r     Rotation
	first Meta // first and last event absorbed, for the logs
	last  Meta
	n     int // events absorbed
}

func newCoalescer(interval time.Duration, max int) *coalescer {
	return &coalescer{interval: interval, max: max, started: map[Rotation]time.Time{}}
}

// add records an event for r. absorbed: r was waiting already (the event
// costs nothing more); ok false: too many scopes are waiting, the event was
// not recorded.
func (c *coalescer) add(r Rotation, m Meta) (absorbed, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.waiting {
		if w.r == r {
			w.last = m
			w.n++
			return true, true
		}
	}
	if len(c.waiting) >= c.max {
		return false, false
	}
	c.waiting = append(c.waiting, &waitingScope{r: r, first: m, last: m, n: 1})
	return false, true
}

// next takes the oldest waiting scope that may start at now, with every
// other waiting scope that may start and overlaps it (batch, the first
// being the widest), and records their start, settling the waiting scopes
// they cover (returned in settled, for the logs). Without one, wait is how
// long until the first may start (0: none is waiting).
func (c *coalescer) next(now time.Time) (batch, settled []*waitingScope, wait time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for r, at := range c.started {
		if now.Sub(at) >= c.interval {
			delete(c.started, r)
		}
	}
	for _, x := range c.waiting {
		at := c.readyAt(x.r)
		if at.After(now) {
			if d := at.Sub(now); wait == 0 || d < wait {
				wait = d
			}
			continue
		}
		batch = []*waitingScope{c.widest(x, now)}
		for grown := true; grown; {
			grown = false
			for _, y := range c.waiting {
				if !slices.Contains(batch, y) && !c.readyAt(y.r).After(now) &&
					slices.ContainsFunc(batch, func(b *waitingScope) bool { return overlaps(b.r, y.r) }) &&
					!slices.ContainsFunc(batch, func(b *waitingScope) bool { return subsumes(b.r, y.r) }) {
					batch, grown = append(batch, y), true
				}
			}
		}
		c.waiting = slices.DeleteFunc(c.waiting, func(y *waitingScope) bool {
			if slices.Contains(batch, y) {
				return true
			}
			if slices.ContainsFunc(batch, func(b *waitingScope) bool { return subsumes(b.r, y.r) }) {
				settled = append(settled, y)
				return true
			}
			return false
		})
		for _, b := range batch {
			c.started[b.r] = now
		}
		return batch, settled, 0
	}
	return nil, nil, wait
}

// widest is the waiting scope, ready at now, that subsumes x and is
// subsumed by no other such scope (x itself if none): starting it settles x
// too, instead of making the wider scope wait an interval behind x.
func (c *coalescer) widest(x *waitingScope, now time.Time) *waitingScope {
	for {
		wider := false
		for _, y := range c.waiting {
			if y != x && subsumes(y.r, x.r) && !c.readyAt(y.r).After(now) {
				x, wider = y, true
				break
			}
		}
		if !wider {
			return x
		}
	}
}

// readyAt is when r may start: one interval after the last start of a scope
// overlapping it (zero: now).
func (c *coalescer) readyAt(r Rotation) time.Time {
	var at time.Time
	for s, t := range c.started {
		if overlaps(s, r) && t.Add(c.interval).After(at) {
			at = t.Add(c.interval)
		}
	}
	return at
}

// overlaps: some (identity, route) is in both a and b.
func overlaps(a, b Rotation) bool {
	match := func(x, y string) bool { return x == "" || y == "" || x == y }
	return match(a.Namespace, b.Namespace) && match(a.ServiceAccount, b.ServiceAccount) && match(a.Route, b.Route)
}

// subsumes: a refresh of a does everything an event for b asks for. A
// wildcard (no service account) covers the narrower wildcards and routes
// inside it, but not an event naming an identity: that one also asks for a
// new lease or token (see the Refresher), which a wildcard never does.
func subsumes(a, b Rotation) bool {
	within := func(x, y string) bool { return x == "" || x == y }
	if b.ServiceAccount != "" && a.ServiceAccount == "" {
		return false
	}
	return within(a.Namespace, b.Namespace) && within(a.ServiceAccount, b.ServiceAccount) && within(a.Route, b.Route)
}
