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

// tokenAction is what a session does with its Vault token before using it.
type tokenAction int

const (
	keepToken  tokenAction = iota // use it as it is
	renewToken                    // auth/token/renew-self, then use it
	logInAgain                    // log in again (or first)
)

// tokenLife is what a session knows of its Vault token's life. The zero
// value is no token.
type tokenLife struct {
	// issued is the last login or renewal, expires the token's end then.
	issued, expires time.Time
	// login is the last login; granted the TTL Vault granted at it.
	login   time.Time
	granted time.Duration
	// early brings the relogin after this login forward by a share of the
	// relogin interval, in [0, 1) (reloginAfter): a session's first login
	// only, 0 at every later one.
	early float64
	// renewAt is when to renew: about two thirds of the life since issued
	// (renewAfter), or later after a renewal Vault could not be asked for.
	renewAt   time.Time
	renewable bool
	// capped: a renewal no longer extends the token (its max TTL).
	capped bool
}

// tokenMargin is how long before its expiry a Vault token is no longer
// used (clock skew, the call in flight).
const tokenMargin = 5 * time.Second

// loggedIn records a login at now that granted ttl; early is its relogin's
// phase (reloginAfter), jitter in [-1, 1] its renewal's (renewAfter).
func (l *tokenLife) loggedIn(now time.Time, ttl time.Duration, renewable bool, early, jitter float64) {
	*l = tokenLife{login: now, granted: ttl, renewable: renewable, early: early}
	l.renewed(now, ttl, jitter)
}

// renewed records a renewal (or login) at now that extended the token by
// ttl; jitter in [-1, 1] places the next renewal (renewAfter).
func (l *tokenLife) renewed(now time.Time, ttl time.Duration, jitter float64) {
	l.issued, l.expires = now, now.Add(ttl)
	l.renewAt = now.Add(renewAfter(ttl, jitter))
}

// renewAfter is how long after a login or renewal that granted ttl the
// token is renewed: two thirds of ttl, spread ±10 % by jitter in [-1, 1]
// (clamped), so that tokens issued together are not renewed together. The
// spread is symmetric, so renewals are no more frequent on average than at
// exactly two thirds. Above two thirds it never comes closer than twice
// tokenMargin to the token's end: for a ttl above 30 s every renewal is due
// at least 10 s before the token expires.
func renewAfter(ttl time.Duration, jitter float64) time.Duration {
	jitter = max(-1, min(1, jitter))
	base := ttl * 2 / 3
	d := time.Duration(float64(base) * (1 + 0.1*jitter))
	if d > base && d > ttl-2*tokenMargin {
		d = max(base, ttl-2*tokenMargin)
	}
	return d
}

// reloginAfter is how long after a login its token is replaced by a new
// login: the relogin interval, brought forward by early, a share of it in
// [0, 1) (outside it: none). A session draws early once, uniformly, for its
// first login and logs in at full intervals from then on, so identities
// that logged in together (a prefetch, a replica's restart) log in again
// spread evenly over one interval, and after that at a flat rate: never
// later than the interval after the last login, and no more logins in the
// long run than without the spread (the first relogin is moved, not added).
func reloginAfter(interval time.Duration, early float64) time.Duration {
	if early <= 0 || early >= 1 {
		return interval
	}
	return interval - time.Duration(float64(interval)*early)
}

// postpone moves the next renewal a third of the remaining life (at least a
// second) past now: Vault could not be asked.
func (l *tokenLife) postpone(now time.Time) {
	l.renewAt = now.Add(max(l.expires.Sub(now)/3, time.Second))
}

// plan says what to do with the token at now, and, when nothing is to be
// done yet, when something will be. canLogin says whether a login is
// possible (a service-account token is held or can be minted); relogin is
// the relogin interval (0: the TTL granted at login), after which (after
// reloginAfter, brought forward by the login's early) the token is replaced,
// not renewed, so that a role that no longer binds the identity refuses it
// within that interval: Vault checks bindings only at login.
//
// A token that outlives its relogin time by a sixth of its life is kept
// until then, neither renewed nor replaced sooner. Otherwise it is renewed at about two thirds
// of its life (renewAt); replaced then instead when it is not renewable or renewal no longer extends it;
// used to its expiry when neither is possible (and then a login fails with
// nothing to log in with). Past the relogin time it is never renewed nor
// used, even without a way to log in: the login then fails with nothing to
// log in with and the identity is let go until a request brings a token,
// rather than served on bindings Vault has not checked for longer than the
// interval.
func (l *tokenLife) plan(now time.Time, canLogin bool, relogin time.Duration) (tokenAction, time.Time) {
	end := l.expires.Add(-tokenMargin)
	if l.expires.IsZero() || !now.Before(end) {
		return logInAgain, now
	}
	if relogin <= 0 {
		relogin = l.granted
	}
	reloginAt := l.login.Add(reloginAfter(relogin, l.early))
	if !now.Before(reloginAt) {
		return logInAgain, now
	}
	if !reloginAt.After(l.expires.Add(-l.expires.Sub(l.issued) / 6)) {
		// The token outlives its relogin by a sixth of its life or more
		// (slack for a relogin that waits for a worker): replaced then,
		// it needs no renewal (nor an early replacement) before. A first
		// relogin brought forward, or a relogin interval of at most 5/6
		// of the TTL, so costs no renewal.
		return keepToken, reloginAt
	}
	canRenew := l.renewable && !l.capped
	if !now.Before(l.renewAt) {
		switch {
		case canRenew:
			return renewToken, now
		case canLogin:
			return logInAgain, now
		}
		if reloginAt.Before(end) {
			return keepToken, reloginAt
		}
		return keepToken, end
	}
	next := l.renewAt
	if !canRenew && !canLogin {
		next = end
	}
	if reloginAt.Before(next) {
		next = reloginAt
	}
	return keepToken, next
}

// FullRefreshAt is when an identity read at now is next re-read in full:
// the read schedule of NextRefresh over interval (prefetch.refresh, or
// prefetch.refreshWithEvents while rotation events arrive), or when its
// Vault token is due for a renewal or a login (tokenDue; zero: none) if that
// comes first or within the read's jitter window, so that the two share one
// wake-up instead of two.
func FullRefreshAt(now time.Time, interval time.Duration, tokenDue time.Time, jitter float64) time.Time {
	at := NextRefresh(now, interval, time.Time{}, jitter)
	if !tokenDue.IsZero() && !tokenDue.After(NextRefresh(now, interval, time.Time{}, 1)) {
		at = tokenDue
	}
	return at
}
