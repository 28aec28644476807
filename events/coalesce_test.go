package events

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/credinject/credinject/authz"
)

var (
	ct0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	// The identities and routes the coalescer tests imagine a watcher
	// holding.
	testIdentities = [][2]string{{"a", "x"}, {"a", "y"}, {"b", "x"}, {"b", "z"}}
	testRoutes     = []string{"r1", "r2"}
)

// covered lists the (identity, route) pairs a refresh of r re-reads.
func covered(r Rotation) []string {
	var out []string
	for _, id := range testIdentities {
		for _, route := range testRoutes {
			if r.Covers(authz.NewIdentity(id[0], id[1])) && r.CoversRoute(route) {
				out = append(out, id[0]+"/"+id[1]+"/"+route)
			}
		}
	}
	return out
}

// sim drives a coalescer as the Subscriber's worker does, with a Refresher
// that takes no time, and records when each (identity, route) was re-read
// and when an event last asked for it.
type sim struct {
	t      *testing.T
	c      *coalescer
	now    time.Time
	reads  map[string][]time.Time
	asked  map[string]time.Time // last event covering the pair
	starts []Rotation
}

func newSim(t *testing.T, interval time.Duration, max int) *sim {
	return &sim{t: t, c: newCoalescer(interval, max), now: ct0, reads: map[string][]time.Time{}, asked: map[string]time.Time{}}
}

func (s *sim) event(r Rotation) {
	s.t.Helper()
	if _, ok := s.c.add(r, Meta{ID: fmt.Sprint(s.now.UnixNano())}); !ok {
		s.t.Fatalf("add(%v) overflowed", r)
	}
	for _, p := range covered(r) {
		s.asked[p] = s.now
	}
	s.run()
}

// run starts every scope that may start now. A batch is one refresh that
// reads each pair its scopes cover once, as the watcher's RefreshBatch does.
func (s *sim) run() {
	for {
		batch, _, _ := s.c.next(s.now)
		if batch == nil {
			return
		}
		read := map[string]bool{}
		for _, w := range batch {
			s.starts = append(s.starts, w.r)
			for _, p := range covered(w.r) {
				if !read[p] {
					read[p] = true
					s.reads[p] = append(s.reads[p], s.now)
				}
			}
		}
	}
}

// advance moves time by d, in steps of 1 ms, running what becomes ready.
func (s *sim) advance(d time.Duration) {
	for end := s.now.Add(d); s.now.Before(end); {
		s.now = s.now.Add(time.Millisecond)
		s.run()
	}
}

// TestCoalescerFlood: 1,000 events a second for 10 s, a mix of everything,
// namespaces, named identities and routes, cost at most one re-read per
// identity and route per interval; and after the flood every pair an event
// asked for is re-read after that event, within a few intervals.
func TestCoalescerFlood(t *testing.T) {
	const interval = time.Second
	s := newSim(t, interval, 1024)
	scopes := []Rotation{
		{}, {Namespace: "a"}, {Namespace: "b", Route: "r2"}, {Namespace: "a", ServiceAccount: "x"},
		{Namespace: "b", ServiceAccount: "z", Route: "r1"}, {}, {}, {Namespace: "a"},
	}
	events := 0
	for i := range 10_000 {
		s.event(scopes[i%len(scopes)])
		events++
		s.advance(time.Millisecond)
	}
	lastEvent := s.now
	s.advance(10 * interval)

	total := 0
	for _, id := range testIdentities {
		for _, route := range testRoutes {
			p := id[0] + "/" + id[1] + "/" + route
			reads := s.reads[p]
			total += len(reads)
			for i := 1; i < len(reads); i++ {
				if gap := reads[i].Sub(reads[i-1]); gap < interval {
					t.Errorf("%s re-read %v after the previous read, want at least %v", p, gap, interval)
				}
			}
			if len(reads) == 0 || !reads[len(reads)-1].After(s.asked[p]) {
				t.Errorf("%s: last event at %v, no read after it (reads %v)", p, s.asked[p].Sub(ct0), len(reads))
				continue
			}
			// Overlapping scopes that may start start together: the
			// trailing read is within one interval of the last event.
			if d := reads[len(reads)-1].Sub(s.asked[p]); d > interval {
				t.Errorf("%s: re-read %v after its last event, want within %v", p, d, interval)
			}
			if max := int(reads[len(reads)-1].Sub(ct0)/interval) + 1; len(reads) > max {
				t.Errorf("%s: %d reads, want at most %d", p, len(reads), max)
			}
		}
	}
	t.Logf("%d events over %v: %d refresh calls, %d (identity, route) re-reads (without coalescing: %d)",
		events, lastEvent.Sub(ct0), len(s.starts), total, uncoalesced(scopes, events))
}

// uncoalesced is how many (identity, route) re-reads events cost when every
// event is one refresh.
func uncoalesced(scopes []Rotation, events int) int {
	n := 0
	for i := range events {
		n += len(covered(scopes[i%len(scopes)]))
	}
	return n
}

// TestCoalescerEdges: the first event of a quiet period starts at once;
// events within the interval wait and make one refresh, at the end of the
// interval, after the last of them.
func TestCoalescerEdges(t *testing.T) {
	s := newSim(t, time.Second, 16)
	all := Rotation{}
	s.event(all)
	if len(s.starts) != 1 {
		t.Fatalf("leading edge: %d starts, want 1", len(s.starts))
	}
	s.advance(100 * time.Millisecond)
	for range 200 {
		s.event(all)
	}
	s.advance(800 * time.Millisecond)
	s.event(all) // the last one, at 900 ms
	last := s.now
	s.advance(99 * time.Millisecond)
	if len(s.starts) != 1 {
		t.Fatalf("within the interval: %d starts, want still 1", len(s.starts))
	}
	s.advance(time.Millisecond)
	if len(s.starts) != 2 {
		t.Fatalf("at the end of the interval: %d starts, want 2", len(s.starts))
	}
	if at := s.reads["a/x/r1"][1]; !at.After(last) {
		t.Fatalf("trailing read at %v, not after the last event at %v", at.Sub(ct0), last.Sub(ct0))
	}
	s.advance(10 * time.Second)
	if len(s.starts) != 2 {
		t.Fatalf("quiet afterwards: %d starts, want 2", len(s.starts))
	}
}

// TestCoalescerScopes: a wildcard start settles the narrower wildcards
// waiting inside it, not an event naming an identity (that one also asks
// for new leases and tokens); scopes that share no identity do not wait for
// each other.
func TestCoalescerScopes(t *testing.T) {
	s := newSim(t, time.Second, 16)
	s.event(Rotation{Namespace: "a", ServiceAccount: "x"})
	s.event(Rotation{Namespace: "b", ServiceAccount: "z"}) // disjoint: at once
	if len(s.starts) != 2 {
		t.Fatalf("disjoint scopes: %d starts, want 2", len(s.starts))
	}
	s.event(Rotation{Namespace: "a", Route: "r1"})         // waits for a/x
	s.event(Rotation{Namespace: "a", ServiceAccount: "y"}) // overlaps no start (a/r1 only waits): at once
	s.event(Rotation{Namespace: "a", ServiceAccount: "x"}) // waits for a/x
	s.event(Rotation{})                                    // waits
	// At 1s the wider {} goes before a/r1 and settles it; a/x overlaps
	// {} and starts with it, in one batch.
	s.advance(time.Second)
	want := []Rotation{
		{Namespace: "a", ServiceAccount: "x"}, {Namespace: "b", ServiceAccount: "z"}, {Namespace: "a", ServiceAccount: "y"},
		{}, // settles a/r1 (a wildcard inside it), not the named a/x
		{Namespace: "a", ServiceAccount: "x"},
	}
	if !slices.Equal(s.starts, want) {
		t.Fatalf("starts %v,\nwant %v", s.starts, want)
	}
}

// TestCoalescerBounded: at most max distinct scopes wait; events for a
// waiting scope are absorbed whatever their number.
func TestCoalescerBounded(t *testing.T) {
	c := newCoalescer(time.Second, 2)
	if absorbed, ok := c.add(Rotation{Namespace: "a"}, Meta{}); absorbed || !ok {
		t.Fatalf("first: absorbed %v, ok %v", absorbed, ok)
	}
	c.next(ct0) // starts a
	for _, ns := range []string{"a", "b"} {
		if _, ok := c.add(Rotation{Namespace: ns}, Meta{}); !ok {
			t.Fatalf("%s refused", ns)
		}
	}
	for range 100 {
		if absorbed, ok := c.add(Rotation{Namespace: "a"}, Meta{}); !absorbed || !ok {
			t.Fatalf("repeat: absorbed %v, ok %v; want absorbed", absorbed, ok)
		}
	}
	if _, ok := c.add(Rotation{Namespace: "c"}, Meta{}); ok {
		t.Fatal("a third scope was taken with max 2")
	}
	b, _, _ := c.next(ct0)
	if len(b) != 1 || b[0].r.Namespace != "b" {
		t.Fatalf("next = %+v, want b (a waits for its interval)", b)
	}
	if b, _, wait := c.next(ct0); b != nil || wait != time.Second {
		t.Fatalf("next = %+v, wait %v; want a in 1s", b, wait)
	}
	if b, _, _ := c.next(ct0.Add(time.Second)); len(b) != 1 || b[0].r.Namespace != "a" || b[0].n != 101 {
		t.Fatalf("next = %+v, want a with its 101 events", b)
	}
	if len(c.started) != 1 {
		t.Fatalf("%d starts remembered, want 1 (a, b's is an interval old)", len(c.started))
	}
	c.next(ct0.Add(3 * time.Second))
	if len(c.started) != 0 {
		t.Fatalf("%d starts remembered an interval later, want 0", len(c.started))
	}
}

// TestCoalescerMixedScopes: a named identity's events and wildcard events
// for an overlapping scope, arriving together in a flood, are bounded both
// ways: each (identity, route) is re-read at most once per interval, and
// within one interval of the last event that asked for it. (Neither scope
// subsumes the other; started one at a time they took turns, and the
// trailing read came up to two intervals after the last event.)
func TestCoalescerMixedScopes(t *testing.T) {
	const interval = time.Second
	named, wildcard := Rotation{Namespace: "a", ServiceAccount: "x"}, Rotation{Namespace: "a"}
	for name, offset := range map[string]time.Duration{"named first": 0, "wildcard first": 1} {
		t.Run(name, func(t *testing.T) {
			s := newSim(t, interval, 16)
			first, second := named, wildcard
			if offset > 0 {
				first, second = wildcard, named
			}
			for range 50 {
				s.event(first)
				s.advance(37 * time.Millisecond)
				s.event(second)
				s.advance(61 * time.Millisecond)
			}
			s.advance(5 * interval)
			for _, p := range []string{"a/x/r1", "a/x/r2", "a/y/r1"} {
				reads := s.reads[p]
				for i := 1; i < len(reads); i++ {
					if gap := reads[i].Sub(reads[i-1]); gap < interval {
						t.Errorf("%s re-read %v after the previous read, want at least %v", p, gap, interval)
					}
				}
				if len(reads) == 0 || !reads[len(reads)-1].After(s.asked[p]) {
					t.Fatalf("%s: no read after its last event", p)
				}
				if d := reads[len(reads)-1].Sub(s.asked[p]); d > interval {
					t.Errorf("%s: re-read %v after its last event, want within %v", p, d, interval)
				}
			}
		})
	}
}
