package watcher

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
)

// errNoToken: no valid service-account token to log in with (the identity
// was seen on a request whose token has since expired, and is not
// prefetched). The identity is forgotten until its next request.
var errNoToken = errors.New("no valid service-account token to log in with")

// tokenMode says how much a caller trusts the Vault token a session holds.
type tokenMode int

const (
	// reuse the current token while it is valid: renew it at two thirds of
	// its life, log in again when it cannot be renewed or when the relogin
	// interval has passed since the last login (Vault re-checks the role's
	// bindings only at login, not at renewal); log in without one.
	reuse tokenMode = iota
	// force a login: Vault refused a call with the current token.
	force
)

// session owns one identity's Vault token: it logs in with the identity's
// service-account token (the newest presented on its requests, falling back
// to an older one when Vault refuses it, or one minted by TokenRequest for
// a prefetched identity, used for that login and dropped),
// renews the Vault token at about two thirds of its life (±10 %), logs in
// again when the token cannot be renewed, when the relogin interval has
// passed (the first time, a share of it sooner drawn once: reloginAfter),
// or when told to, and revokes the token it replaces, so Vault holds one live token
// per identity. A replaced token is revoked at the end of the run that
// replaced it (the executor calls retire once per run), not at once: the
// leases read with it stay valid until their successors are in the cache.
type session struct {
	id     authz.Identity
	vault  vault
	minter TokenMinter // nil: only presented tokens
	clock  clock.PassiveClock
	// revoke revokes a superseded Vault token in the background.
	revoke func(token string)
	// every is the relogin interval; 0: the TTL the token was granted at
	// login.
	every time.Duration
	// jitter, in [-1, 1], spreads each renewal (renewAfter).
	jitter func() float64

	// mu guards sa and prefetch, which a request's OfferToken changes
	// from outside the executor; it is the identity's one lock (newIdentity
	// points it there), never held across I/O. The Vault token and its life
	// (token, tokenLife, early, retired) are changed only by the
	// identity's run, which the executor never runs twice at once, so they
	// need no lock.
	mu *sync.Mutex
	// sa are the presented service-account tokens kept to log in with,
	// newest first, at most maxSATokens (nil for a prefetched identity: a
	// minted token is not kept).
	sa       []saToken
	prefetch bool

	token string
	// early, in [0, 1), brings the first relogin forward (reloginAfter):
	// drawn once when the session is made, used by its first login.
	early float64
	tokenLife
	retired []string
}

// maxSATokens bounds the presented service-account tokens a session keeps
// (about 1 KB each): the newest, and two older ones to fall back on when
// Vault refuses it (its pod is gone, so Vault's TokenReview says it is
// invalid, while the workload's other pods present live ones).
const maxSATokens = 3

// saToken is a presented service-account token and its expiry (zero: none
// known).
type saToken struct {
	jwt string
	exp time.Time
}

// newer orders tokens newest first: a later expiry first, one without an
// expiry before any with one.
func (t saToken) newer(u saToken) bool {
	return t.exp.IsZero() && !u.exp.IsZero() || !u.exp.IsZero() && t.exp.After(u.exp)
}

// usable: t can still be logged in with at now (10 s of margin for the
// login's round trip).
func (t saToken) usable(now time.Time) bool {
	return t.exp.IsZero() || now.Before(t.exp.Add(-10*time.Second))
}

// newSession makes the session of id. every is the relogin interval (0: the
// TTL granted at login); jitter, in [-1, 1] (nil: none), spreads its
// renewals; early, in [0, 1), brings its first relogin forward by that
// share of the interval (reloginAfter).
func newSession(id authz.Identity, v vault, minter TokenMinter, c clock.PassiveClock, revoke func(string),
	every time.Duration, jitter func() float64, early float64) *session {
	if jitter == nil {
		jitter = func() float64 { return 0 }
	}
	return &session{id: id, vault: v, minter: minter, clock: c, revoke: revoke, every: every, jitter: jitter, early: early, mu: new(sync.Mutex)}
}

// offer keeps a valid service-account token of the identity among the
// newest maxSATokens, to log in again when its Vault token runs out.
func (s *session) offer(token string, exp time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offerLocked(token, exp)
}

// offerNewer is offer for a token seen on a request's token-cache miss: a
// prefetched session mints its own tokens and keeps none (about 1 KB per
// identity), so it ignores the offer.
func (s *session) offerNewer(token string, exp time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.prefetch {
		s.offerLocked(token, exp)
	}
}

// offerLocked inserts token in s.sa, newest first (before those of the
// same expiry: the latest offered), and drops the oldest beyond
// maxSATokens. A token already held is not added twice.
func (s *session) offerLocked(token string, exp time.Time) {
	if token == "" {
		return
	}
	t := saToken{jwt: token, exp: exp}
	i := len(s.sa)
	for j, u := range s.sa {
		if u.jwt == token {
			return
		}
		if i == len(s.sa) && !u.newer(t) {
			i = j
		}
	}
	if i >= maxSATokens {
		return
	}
	s.sa = slices.Insert(s.sa, i, t)
	if len(s.sa) > maxSATokens {
		s.sa[maxSATokens] = saToken{}
		s.sa = s.sa[:maxSATokens]
	}
}

// usableLocked is a copy of the held tokens still usable at now, newest
// first.
func (s *session) usableLocked(now time.Time) []string {
	var jwts []string
	for _, t := range s.sa {
		if t.usable(now) {
			jwts = append(jwts, t.jwt)
		}
	}
	return jwts
}

// dropLocked forgets the held tokens Vault refused, and those expired by
// now.
func (s *session) dropLocked(refused []string, now time.Time) {
	s.sa = slices.DeleteFunc(s.sa, func(t saToken) bool { return !t.usable(now) || slices.Contains(refused, t.jwt) })
	if len(s.sa) == 0 {
		s.sa = nil
	}
}

// setPrefetch lets the session mint service-account tokens with TokenRequest.
func (s *session) setPrefetch() {
	s.mu.Lock()
	s.prefetch = true
	s.mu.Unlock()
}

// prefetched reports whether the session mints its own tokens.
func (s *session) prefetched() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prefetch
}

// Due is when the session next has to act on its Vault token (renew it or
// log in again), as of now: now when it is due already, zero without a
// token. The refresher wakes for it.
func (s *session) Due(now time.Time) time.Time {
	if s.token == "" {
		return time.Time{}
	}
	act, at := s.plan(now, s.canLogin(now), s.every)
	if act != keepToken {
		return now
	}
	return at
}

// VaultToken returns a usable Vault token; fresh forces a new login (Vault
// refused a call with the current one). Providers call it.
func (s *session) VaultToken(ctx context.Context, fresh bool) (string, error) {
	if fresh {
		return s.Token(ctx, force)
	}
	return s.Token(ctx, reuse)
}

// Token returns a usable Vault token under mode. Errors: authz.ErrVaultDenied
// (login refused), authz.ErrVaultUnavailable (Vault or TokenRequest could not
// be asked; errNoToken in its chain when there was nothing to log in with).
func (s *session) Token(ctx context.Context, mode tokenMode) (string, error) {
	now := s.clock.Now()
	token, expires := s.token, s.expires
	act, _ := s.plan(now, s.canLogin(now), s.every)
	if mode == force || act == logInAgain {
		return s.logIn(ctx, now)
	}
	if act != renewToken {
		return token, nil
	}
	ttl, err := s.vault.RenewSelf(ctx, token)
	switch {
	case err == nil && now.Add(ttl).After(expires):
		s.renewed(now, ttl, s.jitter())
		return token, nil
	case err == nil:
		// At its max TTL: renewal no longer extends it.
		s.capped = true
		if s.canLogin(now) {
			return s.logIn(ctx, now)
		}
		return token, nil
	case errors.Is(err, authz.ErrVaultUnavailable):
		// Vault is away: keep the token while it lasts, try again later.
		s.postpone(now)
		return token, nil
	default:
		// Refused: revoked, or unknown to Vault (a restart).
		return s.logIn(ctx, now)
	}
}

// canLogin: a service-account token is held or can be minted.
func (s *session) canLogin(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.sa {
		if t.usable(now) {
			return true
		}
	}
	return s.prefetch && s.minter != nil
}

// logIn logs in with the newest held service-account token, or a freshly
// minted one (not kept: about 1 KB per identity, and minting again for the
// next login costs one TokenRequest an interval), and revokes the Vault
// token it replaces. When Vault refuses a held token (its pod is gone), it
// tries the next older one, then, for a prefetched identity, a minted one:
// at most maxSATokens+1 logins, each refused token dropped. Only when
// every one is refused is the identity refused.
func (s *session) logIn(ctx context.Context, now time.Time) (string, error) {
	s.mu.Lock()
	jwts, prefetch := s.usableLocked(now), s.prefetch
	s.mu.Unlock()
	canMint := prefetch && s.minter != nil
	if len(jwts) == 0 && !canMint {
		return "", authz.Deny(authz.ReasonVaultUnavailable, errNoToken)
	}
	var (
		refused []string
		l       vaultLogin
		err     error
		ok      bool
	)
	for _, jwt := range jwts {
		if l, err = s.vault.Login(ctx, jwt); err == nil {
			ok = true
			break
		}
		if errors.Is(err, authz.ErrVaultUnavailable) {
			return "", err
		}
		refused = append(refused, jwt)
	}
	if !ok && canMint {
		t, _, merr := s.minter.Token(ctx, s.id)
		if merr != nil {
			s.dropRefused(refused, now)
			return "", authz.Denyf(authz.ReasonVaultUnavailable, "token request: %w", merr)
		}
		if l, err = s.vault.Login(ctx, t); err == nil {
			ok = true
		} else if errors.Is(err, authz.ErrVaultUnavailable) {
			s.dropRefused(refused, now)
			return "", err
		}
	}
	s.dropRefused(refused, now)
	if !ok {
		// Refused: the identity is no longer Vault's to serve. The token
		// held until now is revoked with the rest (retire), and Vault ends
		// the leases read with it.
		if s.token != "" {
			s.retired = append(s.retired, s.token)
		}
		s.token, s.tokenLife = "", tokenLife{}
		return "", err
	}
	old := s.token
	s.token = l.Token
	s.loggedIn(now, l.TTL, l.Renewable, s.early, s.jitter())
	s.early = 0 // later relogins: every full interval
	if old != "" {
		s.retired = append(s.retired, old)
	}
	return l.Token, nil
}

// dropRefused is dropLocked under s.mu.
func (s *session) dropRefused(refused []string, now time.Time) {
	s.mu.Lock()
	s.dropLocked(refused, now)
	s.mu.Unlock()
}

// retire revokes the tokens replaced since the last call: one live Vault
// token per identity, so Vault's storage stays flat, and the leases read
// with a replaced token end with it.
func (s *session) retire() {
	old := s.retired
	s.retired = nil
	if s.revoke == nil {
		return
	}
	for _, t := range old {
		s.revoke(t)
	}
}

// close revokes the session's tokens (the identity is forgotten); Vault
// revokes the leases read with them.
func (s *session) close() {
	if s.token != "" {
		s.retired = append(s.retired, s.token)
	}
	s.token, s.tokenLife = "", tokenLife{}
	s.retire()
}
