package watcher

import (
	"time"
)

// NextRefresh is when a credential read at readAt should be read again: about
// two thirds of the relevant lifetime (the shorter of the refresh interval and
// the Vault token's remaining life), with jitter in [-1, 1] spreading it by
// ±10 %, so replicas and identities do not refresh in lock step.
func NextRefresh(readAt time.Time, refresh time.Duration, tokenExpires time.Time, jitter float64) time.Time {
	life := refresh
	if !tokenExpires.IsZero() {
		if rem := tokenExpires.Sub(readAt); rem < life {
			life = rem
		}
	}
	if life <= 0 {
		return readAt
	}
	if jitter > 1 {
		jitter = 1
	} else if jitter < -1 {
		jitter = -1
	}
	d := time.Duration(float64(life) * 2 / 3 * (1 + 0.1*jitter))
	return readAt.Add(d)
}

// Lifetimes of a credential read at readAt: fresh until the refresh interval
// has passed, served (stale) until staleGrace after the read, whichever is
// later.
func lifetimes(readAt time.Time, refresh, staleGrace time.Duration) (freshUntil, expiresAt time.Time) {
	freshUntil = readAt.Add(refresh)
	expiresAt = readAt.Add(staleGrace)
	if expiresAt.Before(freshUntil) {
		expiresAt = freshUntil
	}
	return freshUntil, expiresAt
}

// credentialLifetimes are lifetimes capped by the credential's own expiry
// (a lease, an access token): never served past it, less a margin of a sixth
// of what is left, at most 10 s, for clock skew and the request in flight.
func credentialLifetimes(readAt time.Time, refresh, staleGrace time.Duration, expires time.Time) (freshUntil, expiresAt time.Time) {
	freshUntil, expiresAt = lifetimes(readAt, refresh, staleGrace)
	if expires.IsZero() {
		return freshUntil, expiresAt
	}
	usable := expires.Add(-min(10*time.Second, expires.Sub(readAt)/6))
	if usable.Before(expiresAt) {
		expiresAt = usable
	}
	if usable.Before(freshUntil) {
		freshUntil = usable
	}
	return freshUntil, expiresAt
}
