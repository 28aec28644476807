package watcher

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// buckets counts durations in [0, span) into n equal buckets; out of range
// ones fail the test.
func buckets(t *testing.T, ds []time.Duration, span time.Duration, n int) []int {
	t.Helper()
	b := make([]int, n)
	for _, d := range ds {
		if d < 0 || d >= span {
			t.Fatalf("%v outside [0, %v)", d, span)
		}
		b[int(d*time.Duration(n)/span)]++
	}
	return b
}

// flat fails the test unless every bucket holds within tol (a share) of
// the mean.
func flat(t *testing.T, what string, b []int, tol float64) {
	t.Helper()
	total := 0
	for _, c := range b {
		total += c
	}
	mean := float64(total) / float64(len(b))
	for i, c := range b {
		if float64(c) < mean*(1-tol) || float64(c) > mean*(1+tol) {
			t.Fatalf("%s: bucket %d holds %d, mean %.1f ± %.0f %%: %v", what, i, c, mean, tol*100, b)
		}
	}
}

func TestRenewAfter(t *testing.T) {
	cases := map[string]struct {
		ttl    time.Duration
		jitter float64
		want   time.Duration
	}{
		"two thirds":                          {time.Hour, 0, 40 * time.Minute},
		"plus ten percent":                    {time.Hour, 1, 44 * time.Minute},
		"minus ten percent":                   {time.Hour, -1, 36 * time.Minute},
		"jitter clamped":                      {time.Hour, 7, 44 * time.Minute},
		"jitter clamped below":                {time.Hour, -7, 36 * time.Minute},
		"30 s: later half kept 10 s from end": {30 * time.Second, 1, 20 * time.Second},
		"30 s: earlier half as is":            {30 * time.Second, -1, 18 * time.Second},
		"12 s: never later than two thirds":   {12 * time.Second, 1, 8 * time.Second},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := renewAfter(c.ttl, c.jitter); got != c.want {
				t.Fatalf("renewAfter(%v, %v) = %v, want %v", c.ttl, c.jitter, got, c.want)
			}
		})
	}
}

// TestRenewAfterBounds: whatever the jitter, a renewal is due within ±10 %
// of two thirds of the TTL and, above 30 s, at least 10 s before the token
// expires, so no token expires before it is renewed.
func TestRenewAfterBounds(t *testing.T) {
	for _, ttl := range []time.Duration{31 * time.Second, time.Minute, 5 * time.Minute, time.Hour, 768 * time.Hour} {
		for j := -1.0; j <= 1.0; j += 0.01 {
			d := renewAfter(ttl, j)
			base := float64(ttl) * 2 / 3
			if float64(d) < base*0.9-1 || float64(d) > base*1.1+1 {
				t.Fatalf("renewAfter(%v, %.2f) = %v, outside ±10 %% of %v", ttl, j, d, time.Duration(base))
			}
			if d > ttl-2*tokenMargin {
				t.Fatalf("renewAfter(%v, %.2f) = %v: less than %v before the token's end", ttl, j, d, 2*tokenMargin)
			}
		}
	}
}

// TestRenewAfterSpread: tokens issued together (a fixed seed standing in for
// the production source) are renewed over the whole ±10 % band, evenly, and
// on average at two thirds: no more renewals than without the spread.
func TestRenewAfterSpread(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 10000
	ds := make([]time.Duration, n)
	var sum time.Duration
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for i := range ds {
		d := renewAfter(time.Hour, rng.Float64()*2-1)
		ds[i], sum = d-36*time.Minute, sum+d
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 36*time.Minute || hi > 44*time.Minute || lo > 36*time.Minute+30*time.Second || hi < 44*time.Minute-30*time.Second {
		t.Fatalf("renewals from %v to %v; want the band [36m, 44m] covered", lo, hi)
	}
	if mean := sum / n; mean < 40*time.Minute-10*time.Second || mean > 40*time.Minute+10*time.Second {
		t.Fatalf("mean renewal after %v; want 40m (renewals no more frequent than at exactly two thirds)", mean)
	}
	flat(t, "renewals", buckets(t, ds, 8*time.Minute+time.Nanosecond, 8), 0.15)
}

func TestReloginAfter(t *testing.T) {
	cases := map[string]struct {
		early float64
		want  time.Duration
	}{
		"none":                   {0, time.Hour},
		"a quarter sooner":       {0.25, 45 * time.Minute},
		"half":                   {0.5, 30 * time.Minute},
		"negative: none":         {-0.5, time.Hour},
		"one or more: none":      {1, time.Hour},
		"beyond the range: none": {1.5, time.Hour},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := reloginAfter(time.Hour, c.early); got != c.want {
				t.Fatalf("reloginAfter(1h, %v) = %v, want %v", c.early, got, c.want)
			}
		})
	}
}

// TestReloginAfterSpread: sessions that logged in together (a prefetch) log
// in again over the whole interval, evenly, and never later than it.
func TestReloginAfterSpread(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 10000
	ds := make([]time.Duration, n)
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for i := range ds {
		d := reloginAfter(time.Hour, rng.Float64())
		if d <= 0 || d > time.Hour {
			t.Fatalf("relogin after %v; want in (0, 1h]", d)
		}
		ds[i] = d - time.Nanosecond
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo > time.Minute || hi < 59*time.Minute {
		t.Fatalf("relogins from %v to %v; want the whole hour covered", lo, hi)
	}
	flat(t, "relogins", buckets(t, ds, time.Hour, 12), 0.15)
}

// TestTokenPlanFirstRelogin: a session's first relogin comes early's share
// of the interval sooner; the ones after it every full interval.
func TestTokenPlanFirstRelogin(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var l tokenLife
	l.loggedIn(t0, time.Hour, true, 0.5, 0)
	if act, next := l.plan(t0.Add(time.Minute), true, 0); act != keepToken || next != t0.Add(30*time.Minute) {
		t.Fatalf("after the first login: %v, next at %v; want the relogin at 30m", act, next.Sub(t0))
	}
	if act, _ := l.plan(t0.Add(30*time.Minute), true, 0); act != logInAgain {
		t.Fatalf("at 30m: %v, want logInAgain", act)
	}
	// A relogin interval of its own is brought forward by the same share.
	if act, next := l.plan(t0.Add(time.Minute), true, 20*time.Minute); act != keepToken || next != t0.Add(10*time.Minute) {
		t.Fatalf("relogin interval 20m: %v, next at %v; want 10m", act, next.Sub(t0))
	}
	l.loggedIn(t0.Add(30*time.Minute), time.Hour, true, 0, 0)
	if act, next := l.plan(t0.Add(31*time.Minute), true, 0); act != keepToken || next != t0.Add(70*time.Minute) {
		t.Fatalf("after the second login: %v, next at %v; want the renewal at 70m", act, next.Sub(t0))
	}
	l.renewed(t0.Add(70*time.Minute), time.Hour, 0)
	if act, next := l.plan(t0.Add(71*time.Minute), true, 0); act != keepToken || next != t0.Add(90*time.Minute) {
		t.Fatalf("after the renewal: %v, next at %v; want the relogin a full interval after the second login (90m)", act, next.Sub(t0))
	}
}

// TestFleetLoginsFlat runs the plan of 1,000 sessions that all logged in at
// t0 (a prefetch) for five hours, minute by minute, with the defaults (a 1h
// TTL, the relogin interval the TTL) and a fixed seed: from the first hour
// on, the fleet logs in and renews at a flat rate, each identity exactly
// once an hour, never later than the interval after its last login, and
// never with an expired token.
func TestFleetLoginsFlat(t *testing.T) {
	const n = 1000
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(5, 6))
	jitter := func() float64 { return rng.Float64()*2 - 1 }
	fleet := make([]tokenLife, n)
	for i := range fleet {
		fleet[i].loggedIn(t0, time.Hour, true, rng.Float64(), jitter())
	}
	var logins, renewals []time.Duration // since t0, after the first hour
	firstRelogins := make([]time.Duration, 0, n)
	for m := 1; m <= 5*60; m++ {
		now := t0.Add(time.Duration(m) * time.Minute)
		for i := range fleet {
			l := &fleet[i]
			act, _ := l.plan(now, true, 0)
			if act == keepToken {
				continue
			}
			if !now.Before(l.expires.Add(-tokenMargin)) {
				t.Fatalf("session %d at %v: its token expired at %v before it was renewed or replaced", i, now.Sub(t0), l.expires.Sub(t0))
			}
			switch act {
			case logInAgain:
				if since := now.Sub(l.login); since > time.Hour {
					t.Fatalf("session %d logs in again %v after its last login; want at most the interval (1h)", i, since)
				}
				if l.login.Equal(t0) {
					firstRelogins = append(firstRelogins, now.Sub(t0)-time.Nanosecond)
				}
				l.loggedIn(now, time.Hour, true, 0, jitter())
				if m > 60 {
					logins = append(logins, now.Sub(t0)-61*time.Minute)
				}
			case renewToken:
				l.renewed(now, time.Hour, jitter())
				if m > 60 {
					renewals = append(renewals, now.Sub(t0)-61*time.Minute)
				}
			}
		}
	}
	// The first relogins spread over the first hour; after it, each of the
	// four hours has one login and one renewal per identity.
	if len(firstRelogins) != n {
		t.Fatalf("%d first relogins in five hours, want %d", len(firstRelogins), n)
	}
	flat(t, "first relogins per 10 min", buckets(t, firstRelogins, time.Hour, 6), 0.2)
	// (A renewal falls outside the window now and then: it comes 36 to 44
	// min after a login, minute-rounded here.)
	if len(logins) != 4*n || len(renewals) > 4*n || len(renewals) < 4*n*99/100 {
		t.Fatalf("hours 2 to 5: %d logins, %d renewals; want %d logins and about as many renewals, no more (one each per identity per hour)",
			len(logins), len(renewals), 4*n)
	}
	flat(t, "logins per 10 min", buckets(t, logins, 4*time.Hour, 24), 0.3)
	flat(t, "renewals per 10 min", buckets(t, renewals, 4*time.Hour, 24), 0.3)
}

// settle waits until every watched identity's turn is done and it waits on
// the schedule again, after now: what was due at now has happened.
func (r *rig) settle() {
	r.t.Helper()
	r.eventually("every identity back on the schedule", func() bool {
		now := r.clock.Now()
		r.w.mu.Lock()
		ids := make([]*identity, 0, len(r.w.ids))
		for _, x := range r.w.ids {
			ids = append(ids, x)
		}
		r.w.mu.Unlock()
		r.w.sched.mu.Lock()
		defer r.w.sched.mu.Unlock()
		for _, x := range ids {
			if x.sched.index < 0 || !x.sched.at.After(now) {
				return false
			}
		}
		return true
	})
}

// TestPrefetchedIdentitiesReloginSpread: identities prefetched at the same
// instant (one login each at t0) do not all log in again at the same
// instant an interval later: with a seeded phase their first relogins
// spread over the whole first hour, each no later than the hour (the
// relogin interval, the token's TTL); from then on each logs in once an
// hour, so two hours cost exactly the logins they cost without the spread.
// Events are connected (the read schedule's 1h), as in the steady-state
// benchmark.
func TestPrefetchedIdentitiesReloginSpread(t *testing.T) {
	const n = 48
	rng := rand.New(rand.NewPCG(7, 8))
	r := newRigWith(t, func(c *Config) {
		c.RefreshWithEvents = time.Hour
		c.EventsConnected = func() bool { return true }
		c.ReloginPhase = rng.Float64 // called under the watcher's lock, one identity at a time
	})
	ids := make([]string, n)
	for i := range n {
		ids[i] = r.prefetched("ns", fmt.Sprintf("sa-%d", i)).Key()
	}
	for m := 1; m <= 120; m++ {
		r.step(time.Minute)
		r.settle()
	}
	byID := map[string][]time.Time{}
	for _, l := range r.vault.granted() {
		byID[l.identity] = append(byID[l.identity], l.at)
	}
	var first []time.Duration
	for _, id := range ids {
		at := byID[id]
		// t0, the first relogin within the hour, the next an hour later;
		// the one after that is due after 2h.
		if len(at) != 3 {
			t.Fatalf("%s logged in at %v; want 3 times in two hours", id, at)
		}
		if !at[0].Equal(t0) {
			t.Fatalf("%s: prefetched at %v, want t0", id, at[0].Sub(t0))
		}
		if d := at[1].Sub(at[0]); d <= 0 || d > time.Hour {
			t.Fatalf("%s: first relogin %v after its login; want within the relogin interval (1h)", id, d)
		}
		if d := at[2].Sub(at[1]); d != time.Hour {
			t.Fatalf("%s: second relogin %v after the first; want the full interval (1h)", id, d)
		}
		first = append(first, at[1].Sub(t0)-time.Nanosecond)
	}
	b := buckets(t, first, time.Hour, 6)
	for i, c := range b {
		if c == 0 || c > n/3 {
			t.Fatalf("first relogins per 10 min %v: bucket %d holds %d; want every bucket used, none with more than a third", b, i, c)
		}
	}
	// Renewals: at most one per identity per hour (a token relogged in a
	// sixth or more before its end is not renewed first).
	if got := r.vault.count("renew"); got > 2*n {
		t.Fatalf("%d renewals in two hours for %d identities; want at most %d", got, n, 2*n)
	}
	t.Logf("first relogins per 10 min: %v; logins %d, renewals %d, reads %d in two hours for %d identities",
		b, r.vault.count("login"), r.vault.count("renew"), r.vault.count("read"), n)
}
