// Package backoff is credinject's one retry schedule: exponential, capped,
// with jitter passed in so callers and their tests decide where randomness
// comes from. It is a pure function of its arguments and does no I/O.
package backoff

import "time"

// Delay is the wait before retry attempt n (1-based) after a failure:
// base·2^(n-1), capped at limit, spread by jitter in [-1, 1] (clamped) times
// ±20 %. n below 1 counts as 1.
func Delay(n int, base, limit time.Duration, jitter float64) time.Duration {
	if n < 1 {
		n = 1
	}
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	if d > limit {
		d = limit
	}
	jitter = min(max(jitter, -1), 1)
	return time.Duration(float64(d) * (1 + 0.2*jitter))
}
