package checker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
	"github.com/credinject/credinject/internal/panics"
)

// CredentialSource fills the credential cache on a miss: it obtains the
// credential of (route, id), logging in to Vault as id with token (the
// presented token, already validated, valid until tokenExpires), stores it in
// the cache and returns it. Errors are *authz.Error (vault_denied,
// no_credential, vault_unavailable, ...). A returned entry may be negative
// (Denied set). *watcher.Watcher satisfies it.
type CredentialSource interface {
	Credential(ctx context.Context, route string, id authz.Identity, token string, tokenExpires time.Time) (*cache.Entry, error)
}

// TokenSink is optionally implemented by a CredentialSource
// (*watcher.Watcher does): OfferToken is told of every token the checker
// newly validated (on a token cache miss, never on a hit), with its
// identity and expiry, so the source can log in again later with the token
// a workload now presents. It must not block or do I/O.
type TokenSink interface {
	OfferToken(id authz.Identity, token string, expires time.Time)
}

// credentialCache is what the checker reads: *cache.Credentials.
type credentialCache interface {
	Get(route, identity string) (*cache.Entry, bool)
}

var _ credentialCache = (*cache.Credentials)(nil)

// Config wires a Checker. It is copied by New.
type Config struct {
	Validator Validator
	// ServiceAccounts, if set, refuses the tokens of deleted ServiceAccounts
	// (nil: no existence check). If it also implements
	// ServiceAccountRemovals, cached token results skip it while nothing
	// has been removed.
	ServiceAccounts ServiceAccounts
	// ServiceAccountLookup, if set with ServiceAccounts, is asked before a
	// valid token is refused because the informer does not know its
	// ServiceAccount (or knows another uid): one read per ServiceAccount at
	// a time, within LookupBudget, so an informer that lags behind a new
	// ServiceAccount is not a refusal.
	ServiceAccountLookup ServiceAccountLookup
	LookupBudget         LookupBudget
	// BoundObjects, if set, revokes tokens bound to a Pod, Secret or Node
	// when the object is gone or has another uid (jwks mode).
	BoundObjects BoundObjects
	Credentials  credentialCache
	Source       CredentialSource
	// Router is the first router; SetRouter replaces it.
	Router *Router
	// Audiences are folded into the token MAC key.
	Audiences  []string
	TokenCache TokenCacheConfig
	// TokenCacheSize bounds the token-result cache (entries, cache.capacity);
	// required.
	TokenCacheSize int64
	// SourceTimeout bounds a miss's call to the Source.
	SourceTimeout time.Duration
	// Tracing makes a span per traced Check (off by default).
	Tracing Tracing
	// Registerer receives the credinject_check_*, cache and stale-answer
	// metrics (nil: not registered).
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// Clock tells the time (default the real clock); tests move a fake one.
	Clock clock.WithTicker
	// Recorder, if set, is told of every decision (the audit trail).
	Recorder Recorder
	// Sources are where an identity is taken from, in order
	// (identity.sources): the first one the request carries decides. nil:
	// the token only.
	Sources []authz.IdentitySource
	// TrustDomain is the SPIFFE trust domain of peer identities
	// (identity.peer.trustDomain); required with SourcePeer.
	TrustDomain string
	// PeerLogins, required with SourcePeer, obtains a peer identity's
	// credential on a miss, as it presents no token to log in with.
	PeerLogins PeerLogins
}

// Checker makes decisions. It is safe for concurrent use.
type Checker struct {
	cfg     Config
	metrics *metrics
	tokens  *cachedValidator
	hash    *hasher
	tcache  *cache.Tokens[tokenResult]
	tracer  *tracer // nil: tracing off
	// peerHash MACs peer identities under a key of their own, so no
	// Authorization value can name a peer's cached result.
	peerHash *hasher
	peerOn   bool
	enroll   singleflight.Group
	router   atomic.Pointer[Router]
}

// New builds a Checker.
func New(cfg Config) (*Checker, error) {
	if cfg.Validator == nil || cfg.Credentials == nil || cfg.Source == nil || cfg.Router == nil {
		return nil, errors.New("checker: Validator, Credentials, Source and Router are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.TokenCache.TTL <= 0 || cfg.TokenCache.NegativeTTL <= 0 {
		return nil, fmt.Errorf("checker: TokenCache.TTL (%v) and NegativeTTL (%v) must be positive (cache.tokenTTL, cache.tokenNegativeTTL)", cfg.TokenCache.TTL, cfg.TokenCache.NegativeTTL)
	}
	if cfg.TokenCache.Timeout <= 0 {
		cfg.TokenCache.Timeout = 5 * time.Second
	}
	if cfg.SourceTimeout <= 0 {
		cfg.SourceTimeout = 10 * time.Second
	}
	if len(cfg.Sources) == 0 {
		cfg.Sources = []authz.IdentitySource{authz.SourceToken}
	}
	cfg.Sources = slices.Clone(cfg.Sources)
	peerOn := slices.Contains(cfg.Sources, authz.SourcePeer)
	if peerOn && (cfg.TrustDomain == "" || cfg.PeerLogins == nil) {
		return nil, errors.New("checker: the peer source needs TrustDomain and PeerLogins")
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	tc, err := cache.NewTokens[tokenResult](cache.TokensConfig{MaxEntries: cfg.TokenCacheSize})
	if err != nil {
		return nil, err
	}
	c := &Checker{cfg: cfg, metrics: m, hash: newHasher(cfg.Audiences), tcache: tc, tracer: newTracer(cfg.Tracing),
		peerHash: newHasher(nil), peerOn: peerOn}
	c.router.Store(cfg.Router)
	c.tokens = &cachedValidator{
		trustDomain: cfg.TrustDomain,
		v:           cfg.Validator, sas: cfg.ServiceAccounts, bound: cfg.BoundObjects, cache: tc, cfg: cfg.TokenCache,
		clock: cfg.Clock, metrics: m, log: cfg.Log,
	}
	c.tokens.removals, _ = cfg.ServiceAccounts.(ServiceAccountRemovals)
	if cfg.ServiceAccounts != nil && cfg.ServiceAccountLookup != nil {
		if c.tokens.lookups, err = newSALookups(cfg.ServiceAccountLookup, c.tokens.removals, cfg.LookupBudget, cfg.Clock, cfg.TokenCache.Timeout, cfg.Registerer); err != nil {
			tc.Close()
			return nil, err
		}
	}
	c.tokens.sink, _ = cfg.Source.(TokenSink)
	return c, nil
}

// SetRouter replaces the router: requests decided from now on use r. A
// request already past routing finishes with the router it found.
func (c *Checker) SetRouter(r *Router) {
	if r != nil {
		c.router.Store(r)
	}
}

// Close releases the token cache.
func (c *Checker) Close() { c.tcache.Close() }

// Decision is the outcome of one check.
type Decision struct {
	// Reason is empty for an allow.
	Reason authz.Reason
	// Entry is the credential served (allow only).
	Entry    *cache.Entry
	Identity authz.Identity
	// Source is where the identity came from (or was looked for).
	Source authz.IdentitySource
	// Stale is set when Entry is past its refresh time but within grace.
	Stale bool
	// Signed is the request's signature when Entry's injection signs
	// (Shapes.Sign); zero otherwise.
	Signed Signed

	// route is the route matched (routed set); miss says the credential
	// cache missed. Both go on the Check span.
	route  string
	routed bool
	miss   bool
}

// Decide validates the Authorization header value, picks the route for host
// and finds the credential: DecideRequest with only a token, on every path.
func (c *Checker) Decide(ctx context.Context, authorization, host string) Decision {
	return c.DecideRequest(ctx, Request{Authorization: authorization, Host: host, Path: "/"})
}

// DecideRequest takes the identity from the first of the configured
// sources the request carries (its token, or the peer a trusted caller
// vouched for), picks the route for req.Host and req.Path, checks the
// route serves the identity and finds the credential. It never panics and
// never returns an allow without a credential of the identity's own.
func (c *Checker) DecideRequest(ctx context.Context, req Request) (d Decision) {
	start := c.cfg.Clock.Now()
	var (
		mac   cache.MAC
		route string
	)
	src := c.source(&req)
	defer func() {
		if err := panics.Recovered(c.metrics.panics, "check", recover()); err != nil {
			c.cfg.Log.Error("panic in check; denying", "err", err)
			d = Decision{Reason: authz.ReasonInternal}
		}
		d.Source = src
		counter, known := c.metrics.checks[src][d.Reason]
		if !known {
			// A reason outside the closed set (a corrupt negative entry)
			// is an internal error, never a panic in the deferred path.
			d = Decision{Reason: authz.ReasonInternal, Source: src}
			counter = c.metrics.checks[src][authz.ReasonInternal]
		}
		counter.Inc()
		c.metrics.duration.Observe(c.cfg.Clock.Now().Sub(start).Seconds())
		if c.cfg.Recorder != nil {
			c.record(start, d, route, req.Host, &mac)
		}
	}()
	var (
		ti    TokenInfo
		hit   *cache.Token[tokenResult]
		token string
		r     authz.Reason
	)
	if src == authz.SourcePeer {
		if r = peerShape(&req); r != authz.ReasonNone {
			c.cfg.Log.Debug("deny", "reason", string(r), "identity_source", "peer")
			return Decision{Reason: r}
		}
		c.peerHash.mac(req.Peer, &mac)
		ti, hit, r = c.tokens.validate(ctx, req.Peer, true, &mac, start)
		if r != authz.ReasonNone {
			c.cfg.Log.Debug("deny", "reason", string(r), "identity_source", "peer", "peer", req.Peer)
			return Decision{Reason: r}
		}
	} else {
		token, r = cutBearer(req.Authorization)
		if r != authz.ReasonNone {
			c.cfg.Log.Debug("deny", "reason", string(r))
			return Decision{Reason: r}
		}
		c.hash.mac(token, &mac)
		ti, hit, r = c.tokens.validate(ctx, token, false, &mac, start)
		if r != authz.ReasonNone {
			c.cfg.Log.Debug("deny", "reason", string(r), "token", tokenTag(&mac))
			return Decision{Reason: r}
		}
	}
	id := ti.Identity
	t := c.router.Load().Route(req.Host, req.Path)
	if t == nil {
		c.cfg.Log.Debug("deny", "reason", string(authz.ReasonNoRoute), "identity", id.Key(), "identity_source", src.String(), "host", req.Host)
		return Decision{Reason: authz.ReasonNoRoute, Identity: id}
	}
	route = t.Name
	if !t.Allows(id) {
		c.cfg.Log.Debug("deny", "reason", string(authz.ReasonSubjectNotAllowed), "identity", id.Key(), "route", route)
		return Decision{Reason: authz.ReasonSubjectNotAllowed, Identity: id, route: route, routed: true}
	}
	d = c.credential(ctx, route, ti, hit, token, src, start)
	if d.Reason == authz.ReasonNone && d.Entry.Shapes != nil {
		d = c.shaped(ctx, &req, d, start)
	}
	d.route, d.routed = route, true
	if c.cfg.Log.Enabled(ctx, slog.LevelDebug) {
		c.cfg.Log.Debug("decision", "reason", string(d.Reason), "identity", id.Key(), "identity_source", src.String(), "route", route, "token", tokenTag(&mac), "stale", d.Stale)
	}
	return d
}

// shaped finishes an allow whose injection has shapes beyond headers: it
// signs the request (Shapes.Sign), or denies unsignable_request. Query
// parameters and metadata need the gRPC answer (configuration refuses
// them with listen.http on); asked over HTTP they deny internal.
func (c *Checker) shaped(ctx context.Context, req *Request, d Decision, now time.Time) Decision {
	sh := d.Entry.Shapes
	if req.attrs == nil && (sh.Query != nil || sh.Metadata != nil) {
		c.cfg.Log.Error("deny: the route's injection sets query parameters or metadata, which HTTP forward-auth cannot carry",
			"reason", string(authz.ReasonInternal), "route", d.Entry.Route)
		return Decision{Reason: authz.ReasonInternal, Identity: d.Identity}
	}
	if sh.Sign == nil {
		return d
	}
	var signer *v4.Signer
	if req.attrs != nil {
		signer = d.Entry.Memo(prepare).(*prepared).signer
	}
	s, r := sign(ctx, signer, req.attrs, req.Host, sh.Sign, now)
	if r != authz.ReasonNone {
		c.cfg.Log.Debug("deny", "reason", string(r), "identity", d.Identity.Key(), "route", d.Entry.Route)
		return Decision{Reason: r, Identity: d.Identity}
	}
	d.Signed = s
	return d
}

// source is the first configured source req carries; the first configured
// one when it carries none (which then answers missing_token).
func (c *Checker) source(req *Request) authz.IdentitySource {
	for _, s := range c.cfg.Sources {
		switch s {
		case authz.SourceToken:
			if req.Authorization != "" {
				return s
			}
		case authz.SourcePeer:
			if req.Peer != "" || req.PeerUnreadable {
				return s
			}
		}
	}
	return c.cfg.Sources[0]
}

// peerShape is what the peer path checks before the cache: presence and
// size (the full form is checked on a miss, as a token's shape is).
func peerShape(req *Request) authz.Reason {
	switch {
	case req.PeerUnreadable:
		return authz.ReasonInvalidPeer
	case req.Peer == "":
		return authz.ReasonMissingToken
	case len(req.Peer) > maxPeerLen:
		return authz.ReasonInvalidPeer
	}
	return authz.ReasonNone
}

// credential finds the credential of (route, ti's identity) at now. hit,
// the token's cached result (nil if the token was just validated), gives the
// entry last served for the token while the cache still holds it; otherwise
// the entry is looked up and remembered there.
func (c *Checker) credential(ctx context.Context, route string, ti TokenInfo, hit *cache.Token[tokenResult], token string, src authz.IdentitySource, now time.Time) Decision {
	id := ti.Identity
	var e *cache.Entry
	if hit != nil {
		e = hit.Served(route)
	}
	ok := e != nil
	if !ok {
		if e, ok = c.cfg.Credentials.Get(route, id.Key()); ok && hit != nil {
			hit.Remember(e)
		}
	}
	if ok {
		switch e.State(now) {
		case cache.Fresh:
			c.metrics.credHit.Inc()
			return entryDecision(e, id, false)
		case cache.Stale:
			c.metrics.credHit.Inc()
			if e.Denied == authz.ReasonNone {
				c.metrics.stale.Inc()
				c.cfg.Log.Info("serving a stale credential", "identity", id.Key(), "route", route, "readAt", e.ReadAt)
			}
			return entryDecision(e, id, true)
		}
	}
	c.metrics.credMiss.Inc()
	if c.tracer != nil {
		missSpan(ctx, route)
	}
	d := c.miss(ctx, route, ti, token, src, now)
	d.miss = true
	return d
}

// miss asks the Source for the credential of (route, identity). A peer
// identity, which brings no token to log in with, is first handed to
// PeerLogins (once at a time per identity), which logs in as it with a token
// it requests and reads its routes.
func (c *Checker) miss(ctx context.Context, route string, ti TokenInfo, token string, src authz.IdentitySource, now time.Time) Decision {
	id := ti.Identity
	sctx, cancel := context.WithTimeout(ctx, c.cfg.SourceTimeout)
	defer cancel()
	if src == authz.SourcePeer {
		if err := c.enrollPeer(sctx, id); err != nil {
			return Decision{Reason: authz.ReasonOf(err), Identity: id}
		}
	}
	e, err := c.cfg.Source.Credential(sctx, route, id, token, ti.Expires)
	if err != nil {
		return Decision{Reason: authz.ReasonOf(err), Identity: id}
	}
	if e == nil || e.Identity.Key() != id.Key() || e.Route != route {
		// Never serve an entry that is not this identity's own.
		c.cfg.Log.Error("credential source returned a foreign entry; denying", "identity", id.Key(), "route", route)
		return Decision{Reason: authz.ReasonInternal, Identity: id}
	}
	if e.State(now) == cache.Expired && e.Denied == authz.ReasonNone {
		return Decision{Reason: authz.ReasonVaultUnavailable, Identity: id}
	}
	return entryDecision(e, id, false)
}

// enrollPeer runs PeerLogins.Prefetch for id, one call at a time per
// identity, on a context detached from any one caller's (bounded by
// SourceTimeout); each caller waits on its own ctx.
func (c *Checker) enrollPeer(ctx context.Context, id authz.Identity) error {
	ch := c.enroll.DoChan(id.Key(), func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.SourceTimeout)
		defer cancel()
		return nil, c.cfg.PeerLogins.Prefetch(fctx, id)
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return authz.Deny(authz.ReasonVaultUnavailable, ctx.Err())
	}
}

func entryDecision(e *cache.Entry, id authz.Identity, stale bool) Decision {
	if e.Denied != authz.ReasonNone {
		return Decision{Reason: e.Denied, Identity: id}
	}
	return Decision{Entry: e, Identity: id, Stale: stale}
}
