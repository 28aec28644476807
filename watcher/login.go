package watcher

import (
	"context"
	"sync"
	"time"
)

// VaultOverride is a route's own Vault settings (a CredentialPolicy's
// spec.vault); an empty field keeps the watcher's (Config.Role,
// AuthMount, KVMount, and the client's namespace).
type VaultOverride struct {
	// Role and AuthMount are what the identity logs in with for the route.
	Role      string
	AuthMount string
	// KVMount is the KV v2 mount of kv and oauth2-client-credentials.
	KVMount string
	// Namespace is the Vault Enterprise / HCP namespace of every call for
	// the route (login, reads, renewals, revocations).
	Namespace string
}

// login is what a Vault token is obtained with: a route whose login
// differs from the watcher's gets a session (and so a Vault token) of its
// own for each identity. The zero login is the watcher's.
type login struct {
	role, authMount, namespace string
}

// loginOf is rt's login.
func loginOf(rt *Route) login {
	return login{role: rt.Vault.Role, authMount: rt.Vault.AuthMount, namespace: rt.Vault.Namespace}
}

// logins holds the Vault clients and providers of the logins routes use
// besides the watcher's, made on first use and kept (a few per policy set).
type logins struct {
	mu   sync.Mutex
	sets map[login]*loginSet
}

// loginSet is one login's Vault client and providers.
type loginSet struct {
	vault     vault
	providers map[Source]Provider
}

// set returns l's client and providers: the watcher's for the zero login.
func (w *Watcher) set(l login) *loginSet {
	if l == (login{}) || w.newVault == nil {
		return &loginSet{vault: w.vault, providers: w.providers}
	}
	w.logins.mu.Lock()
	defer w.logins.mu.Unlock()
	if s := w.logins.sets[l]; s != nil {
		return s
	}
	v := w.newVault(l)
	s := &loginSet{vault: v, providers: providers(w.cfg, v, w.metrics)}
	if w.logins.sets == nil {
		w.logins.sets = map[login]*loginSet{}
	}
	w.logins.sets[l] = s
	return s
}

// sessionFor is x's session for login l: its own for the zero login, else
// one made on first use that shares the identity's presented tokens and
// prefetch mode. Run-owned.
func (w *Watcher) sessionFor(x *identity, l login) *session {
	if l == (login{}) {
		return &x.session
	}
	for _, o := range x.others {
		if o.login == l {
			return o.s
		}
	}
	v := w.set(l).vault
	s := newSession(x.Identity, v, w.cfg.Minter, w.cfg.Clock, func(token string) {
		ctx, cancel := context.WithTimeout(w.base, 5*time.Second)
		defer cancel()
		_ = v.RevokeSelf(ctx, token)
	}, w.cfg.ReloginInterval, w.cfg.Jitter, w.cfg.ReloginPhase())
	s.mu = &x.mu
	x.mu.Lock()
	s.sa, s.prefetch = append([]saToken(nil), x.session.sa...), x.session.prefetch
	x.mu.Unlock()
	x.others = append(x.others, otherSession{login: l, s: s})
	return s
}

// otherSession is an identity's session for a route's own login.
type otherSession struct {
	login login
	s     *session
}

// eachSession calls f on every session of x: its own, then the others.
func (x *identity) eachSession(f func(*session)) {
	f(&x.session)
	for _, o := range x.others {
		f(o.s)
	}
}

// loginOfRoute is the login of the route rs was obtained with (the zero
// login when unknown).
func (w *Watcher) loginOfRoute(rs *routeState) login {
	if rs.def == nil {
		return login{}
	}
	return loginOf(rs.def)
}
