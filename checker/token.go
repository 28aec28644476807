package checker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// TokenInfo is what a valid service-account token says: its workload
// identity and the facts the checker needs to keep trusting it.
type TokenInfo struct {
	Identity authz.Identity
	// UID is the ServiceAccount's uid, when the validator knows it.
	UID string
	// Expires is the token's expiry (zero if unknown).
	Expires time.Time
	// Bound are the objects the token is bound to (from its verified
	// claims): a cached result dies with any of them.
	Bound []BoundRef
}

// NewTokenInfo builds a TokenInfo for namespace/serviceAccount.
func NewTokenInfo(namespace, serviceAccount, uid string, expires time.Time) TokenInfo {
	return TokenInfo{Identity: authz.NewIdentity(namespace, serviceAccount), UID: uid, Expires: expires}
}

// Validator validates a service-account token. Errors carry an authz.Reason
// (authz.ReasonInvalidToken for a rejected token, authz.ReasonTokenReviewUnavailable when
// the answer could not be had).
type Validator interface {
	Validate(ctx context.Context, token string) (TokenInfo, error)
}

// ValidatorFunc adapts a function to Validator.
type ValidatorFunc func(ctx context.Context, token string) (TokenInfo, error)

// Validate calls f.
func (f ValidatorFunc) Validate(ctx context.Context, token string) (TokenInfo, error) {
	return f(ctx, token)
}

// ServiceAccounts tells whether a ServiceAccount still exists (with this uid,
// when uid is not empty). It is backed by an informer: no I/O.
type ServiceAccounts interface {
	Exists(key, uid string) bool
}

// ServiceAccountRemovals is optionally implemented by a ServiceAccounts
// (*kube.ServiceAccounts does): Removals counts the ServiceAccounts deleted
// or replaced, and moves only after Exists answers the change. A cached
// token result that Exists confirmed is then not asked again until the
// count moves: a hit skips the informer's lock and map.
type ServiceAccountRemovals interface {
	Removals() uint64
}

// maxTokenLen bounds what is hashed and sent anywhere; real SA tokens are ~1 KiB.
const maxTokenLen = 16 << 10

// jwsChar classifies the bytes of a compact JWS: 1 base64url, 2 the dot, 0
// anything else. A table keeps the scan of a ~1 KiB token branch-light.
var jwsChar = func() (t [256]byte) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = 1
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = 1
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = 1
	}
	t['-'], t['_'], t['.'] = 1, 1, 2
	return t
}()

// BearerToken extracts the token from an Authorization header value and
// checks that it has the shape of a compact JWS.
func BearerToken(header string) (string, authz.Reason) {
	tok, r := cutBearer(header)
	if r != authz.ReasonNone {
		return "", r
	}
	if r := checkShape(tok); r != authz.ReasonNone {
		return "", r
	}
	return tok, authz.ReasonNone
}

// cutBearer is the part of BearerToken the hot path does before the token
// cache: the scheme and the size. The shape is checked only on a cache miss,
// since a cached token was well-formed when it was first seen.
func cutBearer(header string) (string, authz.Reason) {
	if header == "" {
		return "", authz.ReasonMissingToken
	}
	if len(header) < 7 || !strings.EqualFold(header[:7], "bearer ") {
		return "", authz.ReasonMalformedToken
	}
	tok := strings.TrimLeft(header[7:], " ")
	if tok == "" {
		return "", authz.ReasonMissingToken
	}
	if len(tok) > maxTokenLen {
		return "", authz.ReasonMalformedToken
	}
	return tok, authz.ReasonNone
}

// checkShape: three base64url segments, nothing else.
func checkShape(tok string) authz.Reason {
	dots := 0
	for i := 0; i < len(tok); i++ {
		switch jwsChar[tok[i]] {
		case 0:
			return authz.ReasonMalformedToken
		case 2:
			dots++
		}
	}
	if dots != 2 || tok[0] == '.' || tok[len(tok)-1] == '.' || strings.Contains(tok, "..") {
		return authz.ReasonMalformedToken
	}
	return authz.ReasonNone
}

// Claims are the unverified claims credinject reads from a token's payload.
type Claims struct {
	Issuer    string          `json:"iss"`
	Subject   string          `json:"sub"`
	Audience  audience        `json:"aud"`
	Expiry    int64           `json:"exp"`
	NotBefore int64           `json:"nbf"`
	IssuedAt  int64           `json:"iat"`
	K8s       *KubernetesInfo `json:"kubernetes.io"`
}

type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}

// UnverifiedClaims decodes a JWT's payload without checking its signature.
// Use it only for what the signature check or TokenReview then confirms.
func UnverifiedClaims(token string) (Claims, error) {
	var c Claims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, errors.New("not a compact JWS")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return c, fmt.Errorf("payload: %w", err)
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, fmt.Errorf("payload: %w", err)
	}
	return c, nil
}

// hasher computes token MACs: HMAC-SHA256 under a random per-process key,
// over the audiences (length-prefixed, folded into the key at start) and the
// token.
type hasher struct {
	pool sync.Pool
}

func newHasher(audiences []string) *hasher {
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		panic(fmt.Sprintf("checker: no randomness for the token MAC key: %v", err))
	}
	auds := slices.Clone(audiences)
	slices.Sort(auds)
	m := hmac.New(sha256.New, secret[:])
	var n [8]byte
	for _, a := range auds {
		binary.BigEndian.PutUint64(n[:], uint64(len(a)))
		m.Write(n[:])
		m.Write([]byte(a))
	}
	key := m.Sum(nil)
	h := &hasher{}
	h.pool.New = func() any { return &macState{h: hmac.New(sha256.New, key)} }
	return h
}

// macState is a pooled HMAC with its own output buffer, so computing a MAC
// allocates nothing.
type macState struct {
	h   hash.Hash
	buf [sha256.Size]byte
}

func (h *hasher) mac(token string, out *cache.MAC) {
	s := h.pool.Get().(*macState)
	s.h.Reset()
	// A read-only view of the string: hash.Write never modifies its input.
	s.h.Write(unsafe.Slice(unsafe.StringData(token), len(token)))
	*out = cache.MAC(s.h.Sum(s.buf[:0]))
	h.pool.Put(s)
}

// TokenHash is a short, non-reversible tag of a token for logs.
func tokenTag(mac *cache.MAC) string { return hex.EncodeToString(mac[:4]) }

type tokenResult struct {
	id     TokenInfo
	reason authz.Reason
	// live says the ServiceAccount was confirmed by the API server
	// (ServiceAccountLookup) because the informer did not know it yet: a
	// later "no" from the informer may be the same lag, and is confirmed the
	// same way before the token is refused.
	live bool
}

// filled is a validation's result, and the removal count its ServiceAccount
// was checked at, plus one (0: not checked).
type filled struct {
	res   tokenResult
	stamp uint64
}

// TokenCacheConfig sets the token-result cache's lifetimes.
type TokenCacheConfig struct {
	// TTL bounds a positive result (never beyond the token's exp).
	TTL time.Duration
	// NegativeTTL bounds a rejected token's result.
	NegativeTTL time.Duration
	// Timeout bounds one validation call made for concurrent callers.
	Timeout time.Duration
}

// cachedValidator puts the token-result cache, single-flight and the
// ServiceAccount existence check in front of a Validator.
type cachedValidator struct {
	// trustDomain is the peer identities' (peer results are parsed, not
	// validated).
	trustDomain string
	v           Validator
	sas         ServiceAccounts
	removals    ServiceAccountRemovals // nil: sas does not count removals
	lookups     *saLookups             // nil: the informer's "no" is final
	sink        TokenSink              // nil: nobody is told of new tokens
	bound       BoundObjects
	cache       *cache.Tokens[tokenResult]
	cfg         TokenCacheConfig
	clock       clock.PassiveClock
	flight      singleflight.Group
	metrics     *metrics
	log         *slog.Logger
}

// validate returns the identity for token (peer: a peer identity, parsed
// rather than validated, whose MAC is under the peer key) at now, or a deny
// reason. On a token cache hit it also returns the cached result, which
// remembers the credential entry last served for the token (nil on a miss).
func (c *cachedValidator) validate(ctx context.Context, token string, peer bool, mac *cache.MAC, now time.Time) (TokenInfo, *cache.Token[tokenResult], authz.Reason) {
	var (
		res   tokenResult
		stamp uint64
	)
	hit, ok := c.cache.Get(mac, now)
	if ok {
		c.metrics.tokenHit.Inc()
		res = hit.Value
	} else {
		if !peer {
			if r := checkShape(token); r != authz.ReasonNone {
				return TokenInfo{}, nil, r
			}
		}
		c.metrics.tokenMiss.Inc()
		f, err := c.fill(ctx, token, peer, mac)
		if err != nil {
			return TokenInfo{}, nil, authz.ReasonOf(err)
		}
		res, stamp = f.res, f.stamp
	}
	if res.reason != authz.ReasonNone {
		return TokenInfo{}, nil, res.reason
	}
	if !res.id.Expires.IsZero() && !now.Before(res.id.Expires) {
		return TokenInfo{}, nil, authz.ReasonInvalidToken
	}
	// Revocation: a deleted (or deleted and re-created) ServiceAccount's
	// tokens stop working as soon as the informer sees it.
	if c.sas != nil {
		if r := c.serviceAccount(ctx, mac, hit, stamp, &res); r != authz.ReasonNone {
			return TokenInfo{}, nil, r
		}
	}
	// Likewise a token bound to a Pod, Secret or Node dies with it, as the
	// API server's own authenticator refuses it.
	if c.bound != nil && !c.boundExist(&res.id) {
		return TokenInfo{}, nil, authz.ReasonInvalidToken
	}
	return res.id, hit, authz.ReasonNone
}

// boundExist reports whether every object id is bound to still exists.
func (c *cachedValidator) boundExist(id *TokenInfo) bool {
	for i := range id.Bound {
		b := &id.Bound[i]
		if !c.bound.Exists(b.Kind, b.Key, b.UID) {
			return false
		}
	}
	return true
}

// serviceAccount asks the informer whether res's ServiceAccount still
// exists, unless the result was confirmed at the current count of removals:
// hit, the token's cached result, stamped at it, or stamp, what a fill just
// checked. The count is read before asking, so a removal the answer missed
// moves it past the stamp. A result the API server confirmed while the
// informer lagged (res.live) is confirmed again the same way before the
// informer's "no" refuses it; a refusal found so replaces the cached result.
func (c *cachedValidator) serviceAccount(ctx context.Context, mac *cache.MAC, hit *cache.Token[tokenResult], stamp uint64, res *tokenResult) authz.Reason {
	id := &res.id
	var gen uint64
	if c.removals != nil {
		gen = c.removals.Removals()
		if stamp == gen+1 || (hit != nil && hit.Stamped(gen)) {
			return authz.ReasonNone
		}
	}
	if c.sas.Exists(id.Identity.Key(), id.UID) {
		if hit != nil && c.removals != nil {
			hit.Stamp(gen)
		}
		return authz.ReasonNone
	}
	if !res.live || c.lookups == nil {
		return authz.ReasonUnknownServiceAccount
	}
	gen, r, err := c.lookups.confirm(ctx, id.Identity, id.UID)
	switch r {
	case authz.ReasonNone:
		if hit != nil && c.removals != nil {
			hit.Stamp(gen)
		}
	case authz.ReasonUnknownServiceAccount:
		c.log.Debug("token refused", "token", tokenTag(mac), "reason", string(r), "error", err)
		now := c.clock.Now()
		c.cache.Set(mac, tokenResult{reason: r}, now, now.Add(c.cfg.NegativeTTL))
	default:
		c.log.Warn("service account lookup failed", "token", tokenTag(mac), "identity", id.Identity.Key(), "reason", string(r), "error", err)
	}
	return r
}

// fill validates token once for all concurrent callers and caches the
// result: a valid token's until its expiry or the TTL, a rejected one's for
// NegativeTTL. A token that is valid but refused by what the checker adds
// (expired by its clock, a bound object or the ServiceAccount gone) is a
// rejected one: repeated, it costs no more validations than a forgery.
func (c *cachedValidator) fill(ctx context.Context, token string, peer bool, macp *cache.MAC) (filled, error) {
	// A copy for the flight, so the caller's MAC stays on its stack.
	mac := new(cache.MAC)
	*mac = *macp
	ch := c.flight.DoChan(string(mac[:]), func() (any, error) {
		// The flight outlives any one caller: it runs detached, with its own
		// timeout, and re-checks the cache first.
		now := c.clock.Now()
		if hit, ok := c.cache.Get(mac, now); ok {
			return filled{res: hit.Value}, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
		defer cancel()
		var (
			id  TokenInfo
			err error
		)
		if peer {
			id.Identity, err = ParsePeer(c.trustDomain, token)
			if err != nil {
				err = authz.Deny(authz.ReasonInvalidPeer, err)
			}
		} else {
			id, err = c.v.Validate(fctx, token)
		}
		var stamp uint64
		live := false
		if err == nil {
			stamp, live, err = c.admit(fctx, &id)
		}
		now = c.clock.Now()
		switch r := authz.ReasonOf(err); r {
		case authz.ReasonNone:
			exp := now.Add(c.cfg.TTL)
			if !id.Expires.IsZero() && id.Expires.Before(exp) {
				exp = id.Expires
			}
			res := tokenResult{id: id, live: live}
			if stamp != 0 {
				c.cache.SetStamped(mac, res, now, exp, stamp-1)
			} else {
				c.cache.Set(mac, res, now, exp)
			}
			if c.sink != nil && !peer {
				c.sink.OfferToken(id.Identity, token, id.Expires)
			}
			return filled{res: res, stamp: stamp}, nil
		case authz.ReasonInvalidToken, authz.ReasonMalformedToken, authz.ReasonUnknownServiceAccount, authz.ReasonInvalidPeer:
			c.log.Debug("token rejected", "token", tokenTag(mac), "reason", string(r), "error", err)
			res := tokenResult{reason: r}
			c.cache.Set(mac, res, now, now.Add(c.cfg.NegativeTTL))
			// Callers arriving after this flight ends find the result in
			// the cache, not a new validation (Sets apply asynchronously).
			c.cache.Wait()
			return filled{res: res}, nil
		default:
			// Transport errors are not cached.
			c.log.Warn("token validation failed", "token", tokenTag(mac), "reason", string(r), "error", err)
			return nil, err
		}
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return filled{}, r.Err
		}
		return r.Val.(filled), nil
	case <-ctx.Done():
		return filled{}, authz.Deny(authz.ReasonTokenReviewUnavailable, ctx.Err())
	}
}

// admit checks a token the Validator accepted against what the checker adds
// at now: its expiry on the checker's clock (a validator allows ClockSkew),
// the objects it is bound to, and its ServiceAccount. When the informer does
// not know the ServiceAccount, the API server is asked (ServiceAccountLookup):
// a valid token proves the ServiceAccount existed when it was issued, and
// the informer may not have seen it yet. It returns the removal count the
// ServiceAccount was confirmed at plus one (0: not confirmed), and whether
// the API server confirmed it; a refusal is an error with its reason.
func (c *cachedValidator) admit(ctx context.Context, id *TokenInfo) (stamp uint64, live bool, err error) {
	if !id.Expires.IsZero() && !c.clock.Now().Before(id.Expires) {
		return 0, false, authz.Denyf(authz.ReasonInvalidToken, "token expired at %s (within the clock-skew allowance)", id.Expires.UTC().Format(time.RFC3339))
	}
	if c.bound != nil && !c.boundExist(id) {
		return 0, false, authz.Denyf(authz.ReasonInvalidToken, "an object the token is bound to is gone")
	}
	if c.sas == nil {
		return 0, false, nil
	}
	var gen uint64
	if c.removals != nil {
		gen = c.removals.Removals()
	}
	if c.sas.Exists(id.Identity.Key(), id.UID) {
		if c.removals == nil {
			return 0, false, nil
		}
		return gen + 1, false, nil
	}
	if c.lookups == nil {
		// The informer's answer is final; validate gives it.
		return 0, false, nil
	}
	gen, r, err := c.lookups.confirm(ctx, id.Identity, id.UID)
	if r != authz.ReasonNone {
		return 0, false, authz.Deny(r, err)
	}
	if c.removals == nil {
		return 0, true, nil
	}
	return gen + 1, true, nil
}
