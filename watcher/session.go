package watcher

import (
	"context"
	"errors"
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
	// reuse the current token while it is valid (renewing it past half
	// life); log in only without one. Reads use it.
	reuse tokenMode = iota
	// relogin when a service-account token is at hand: Vault re-checks the
	// role's bindings only at login (renewal does not), so a scheduled
	// refresh logs in again to make revocation take effect within one
	// refresh interval. Without a service-account token, reuse.
	relogin
	// force a login: Vault refused a call with the current token.
	force
)

// session owns one identity's Vault token: it logs in with the identity's
// service-account token (the one presented on a request, or one minted by
// TokenRequest for a prefetched identity), renews the Vault token past half
// its life, logs in again when told to, and revokes the token it replaces, so
// Vault holds one live token per identity. A replaced token is revoked once
// the refresh that replaced it is done (retire), not at once: the leases read
// with it stay valid until their successors are in the cache.
type session struct {
	id     authz.Identity
	vault  vault
	minter TokenMinter // nil: only presented tokens
	clock  clock.PassiveClock
	// revoke revokes a superseded Vault token in the background.
	revoke func(token string)

	// login serialises Token calls: it is held across Vault and
	// TokenRequest I/O on purpose, so that concurrent callers of one
	// identity share one login instead of each minting a Vault token.
	login sync.Mutex

	mu       sync.Mutex // guards what follows; never held across I/O
	saToken  string
	saExp    time.Time
	prefetch bool
	token    string
	issued   time.Time
	expires  time.Time
	renew    bool // the token is renewable
	retired  []string
}

func newSession(id authz.Identity, v vault, minter TokenMinter, c clock.PassiveClock, revoke func(string)) *session {
	return &session{id: id, vault: v, minter: minter, clock: c, revoke: revoke}
}

// offer keeps the newest valid service-account token of the identity, to
// log in again when its Vault token runs out.
func (s *session) offer(token string, exp time.Time) {
	if token == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saToken == "" || exp.IsZero() || exp.After(s.saExp) {
		s.saToken, s.saExp = token, exp
	}
}

// setPrefetch lets the session mint service-account tokens with TokenRequest.
func (s *session) setPrefetch() {
	s.mu.Lock()
	s.prefetch = true
	s.mu.Unlock()
}

// Expires is when the current Vault token expires (zero without one).
func (s *session) Expires() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expires
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
	s.login.Lock()
	defer s.login.Unlock()
	now := s.clock.Now()
	s.mu.Lock()
	token, issued, expires, renewable := s.token, s.issued, s.expires, s.renew
	if mode == relogin && s.canLoginLocked(now) {
		mode = force
	}
	s.mu.Unlock()
	valid := token != "" && now.Before(expires.Add(-5*time.Second))
	if mode == force || !valid {
		return s.logIn(ctx, now)
	}
	if renewable && now.After(issued.Add(expires.Sub(issued)/2)) {
		ttl, err := s.vault.RenewSelf(ctx, token)
		switch {
		case err == nil && now.Add(ttl).After(expires):
			s.mu.Lock()
			s.issued, s.expires = now, now.Add(ttl)
			s.mu.Unlock()
		case err == nil || errors.Is(err, authz.ErrVaultUnavailable):
			// At its max TTL, or Vault is away: keep it while it lasts.
		default:
			return s.logIn(ctx, now)
		}
	}
	return token, nil
}

// canLoginLocked: a service-account token is held or can be minted.
func (s *session) canLoginLocked(now time.Time) bool {
	if s.saToken != "" && (s.saExp.IsZero() || now.Before(s.saExp.Add(-10*time.Second))) {
		return true
	}
	return s.prefetch && s.minter != nil
}

// logIn logs in with the held service-account token, or a minted one, and
// revokes the Vault token it replaces. Called with s.login held.
func (s *session) logIn(ctx context.Context, now time.Time) (string, error) {
	s.mu.Lock()
	jwt, saExp, prefetch := s.saToken, s.saExp, s.prefetch
	s.mu.Unlock()
	if jwt != "" && !saExp.IsZero() && !now.Before(saExp.Add(-10*time.Second)) {
		jwt = ""
	}
	if jwt == "" && prefetch && s.minter != nil {
		t, exp, err := s.minter.Token(ctx, s.id)
		if err != nil {
			return "", authz.Denyf(authz.ReasonVaultUnavailable, "token request: %w", err)
		}
		s.mu.Lock()
		s.saToken, s.saExp = t, exp
		s.mu.Unlock()
		jwt = t
	}
	if jwt == "" {
		return "", authz.Deny(authz.ReasonVaultUnavailable, errNoToken)
	}
	l, err := s.vault.Login(ctx, jwt)
	if err != nil {
		if !errors.Is(err, authz.ErrVaultUnavailable) {
			s.mu.Lock()
			s.token, s.issued, s.expires, s.renew = "", time.Time{}, time.Time{}, false
			s.mu.Unlock()
		}
		return "", err
	}
	s.mu.Lock()
	old := s.token
	s.token, s.issued, s.expires, s.renew = l.Token, now, now.Add(l.TTL), l.Renewable
	s.mu.Unlock()
	if old != "" {
		s.mu.Lock()
		s.retired = append(s.retired, old)
		s.mu.Unlock()
	}
	return l.Token, nil
}

// retire revokes the tokens replaced since the last call: one live Vault
// token per identity, so Vault's storage stays flat, and the leases read
// with a replaced token end with it.
func (s *session) retire() {
	s.mu.Lock()
	old := s.retired
	s.retired = nil
	s.mu.Unlock()
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
	s.mu.Lock()
	if s.token != "" {
		s.retired = append(s.retired, s.token)
	}
	s.token, s.issued, s.expires, s.renew = "", time.Time{}, time.Time{}, false
	s.mu.Unlock()
	s.retire()
}
