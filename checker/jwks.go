package checker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/sync/singleflight"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
)

// JWKSConfig configures offline validation of service-account tokens against
// the cluster's issuer keys.
type JWKSConfig struct {
	// Issuer is the expected "iss".
	Issuer string
	// Audiences: a token must carry at least one of them.
	Audiences []string
	// URL is the JWKS endpoint (the API server's /openid/v1/jwks); Client
	// carries the credentials to fetch it.
	URL    string
	Client *http.Client
	// Keys, if set, is a fixed key set used instead of URL.
	Keys *jose.JSONWebKeySet
	// Refresh is how often the key set is re-fetched (default 10m); an
	// unknown kid triggers a fetch at most once per MinRefetch (default
	// 10s) after the last fetch, whether that fetch succeeded or failed.
	Refresh    time.Duration
	MinRefetch time.Duration
	// Clock tells the time and ticks the refresh (default the real clock).
	Clock clock.WithTicker
	Log   *slog.Logger
}

// LoadJWKSFile reads a JSON Web Key Set (RFC 7517) from the file at path
// (kubernetes.jwksFile). Errors name the file.
func LoadJWKSFile(path string) (*jose.JSONWebKeySet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &set, nil
}

// FromAPIServer points c at the API server of rc: the key set at
// /openid/v1/jwks fetched with rc's credentials, and, when c.Issuer is empty,
// the issuer its /.well-known/openid-configuration names.
func (c *JWKSConfig) FromAPIServer(ctx context.Context, rc *rest.Config) error {
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return fmt.Errorf("jwks client: %w", err)
	}
	host := strings.TrimSuffix(rc.Host, "/")
	if c.Issuer == "" {
		if c.Issuer, err = discoverIssuer(ctx, hc, host); err != nil {
			return err
		}
	}
	c.URL, c.Client = host+"/openid/v1/jwks", hc
	return nil
}

// discoverIssuer reads "issuer" from the OIDC discovery document at host.
func discoverIssuer(ctx context.Context, hc *http.Client, host string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, host+"/.well-known/openid-configuration", nil)
	if err != nil {
		return "", fmt.Errorf("issuer discovery: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("issuer discovery: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("issuer discovery: status %d", resp.StatusCode)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return "", fmt.Errorf("issuer discovery: %w", err)
	}
	if doc.Issuer == "" {
		return "", errors.New("issuer discovery: no issuer in the document")
	}
	return doc.Issuer, nil
}

// JWKSValidator verifies tokens offline: signature, iss, aud, exp/nbf/iat and
// the kubernetes.io claims (checkClaims).
type JWKSValidator struct {
	cfg  JWKSConfig
	keys atomic.Pointer[jose.JSONWebKeySet]
	// last is the last fetch, successful or not (nil before the first).
	last   atomic.Pointer[fetchAttempt]
	flight singleflight.Group
}

// fetchAttempt is when a fetch of the key set began, and its error (nil: the
// keys were replaced).
type fetchAttempt struct {
	at  time.Time
	err error
}

var _ Validator = (*JWKSValidator)(nil)

var jwtAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256}

// NewJWKSValidator builds the validator and loads the key set once.
func NewJWKSValidator(ctx context.Context, cfg JWKSConfig) (*JWKSValidator, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("jwks: issuer is required")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 10 * time.Minute
	}
	if cfg.MinRefetch <= 0 {
		cfg.MinRefetch = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	cfg.Audiences = slices.Clone(cfg.Audiences)
	v := &JWKSValidator{cfg: cfg}
	if cfg.Keys != nil {
		v.keys.Store(cfg.Keys)
		return v, nil
	}
	if err := v.fetch(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

// Run re-fetches the key set periodically until ctx ends.
func (v *JWKSValidator) Run(ctx context.Context) {
	if v.cfg.Keys != nil {
		return
	}
	t := v.cfg.Clock.NewTicker(v.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			if err := v.fetch(ctx); err != nil {
				v.cfg.Log.Warn("jwks refresh failed; keeping the previous keys", "error", err)
			}
		}
	}
}

// fetch gets the key set now (concurrent callers share one request) and
// records the attempt.
func (v *JWKSValidator) fetch(ctx context.Context) error {
	_, err, _ := v.flight.Do("fetch", func() (any, error) {
		at := v.cfg.Clock.Now()
		err := v.get(ctx)
		v.last.Store(&fetchAttempt{at: at, err: err})
		return nil, err
	})
	return err
}

// get fetches and decodes the key set and stores it.
func (v *JWKSValidator) get(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.URL, nil)
	if err != nil {
		return err
	}
	resp, err := v.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("jwks: fetch: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("jwks: fetch: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("jwks: fetch %s: status %d", v.cfg.URL, resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return fmt.Errorf("jwks: decode: %w", err)
	}
	v.keys.Store(&set)
	return nil
}

// refetch fetches the key set unless the last fetch began less than
// MinRefetch ago; then it returns that fetch's error (nil if it succeeded).
// The check runs inside a flight of its own, so callers that arrive as a
// fetch ends see it, not their own.
func (v *JWKSValidator) refetch(ctx context.Context) error {
	_, err, _ := v.flight.Do("refetch", func() (any, error) {
		if last := v.last.Load(); last != nil && v.cfg.Clock.Since(last.at) < v.cfg.MinRefetch {
			return nil, last.err
		}
		return nil, v.fetch(ctx)
	})
	return err
}

func (v *JWKSValidator) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	if k := findKey(v.keys.Load(), kid); k != nil {
		return k, nil
	}
	if v.cfg.Keys != nil {
		return nil, authz.Deny(authz.ReasonInvalidToken, errors.New("jwks: unknown key id"))
	}
	// An unknown kid may be a rotated signing key: re-fetch, but at most
	// once per MinRefetch, whether the last fetch succeeded or not, so
	// garbage tokens cannot hammer the API server, nor retry a failing one.
	// While the last fetch has failed, an unknown kid cannot be judged.
	if err := v.refetch(ctx); err != nil {
		return nil, authz.Deny(authz.ReasonTokenReviewUnavailable, err)
	}
	if k := findKey(v.keys.Load(), kid); k != nil {
		return k, nil
	}
	return nil, authz.Deny(authz.ReasonInvalidToken, errors.New("jwks: unknown key id"))
}

func findKey(set *jose.JSONWebKeySet, kid string) *jose.JSONWebKey {
	if set == nil {
		return nil
	}
	for i := range set.Keys {
		if set.Keys[i].KeyID == kid || (kid == "" && len(set.Keys) == 1) {
			return &set.Keys[i]
		}
	}
	return nil
}

// Validate verifies token offline: the signature against the issuer's keys,
// then the claims (checkClaims).
func (v *JWKSValidator) Validate(ctx context.Context, token string) (TokenInfo, error) {
	c, err := v.verify(ctx, token)
	if err != nil {
		return TokenInfo{}, err
	}
	return checkClaims(c, expected{Issuer: v.cfg.Issuer, Audiences: v.cfg.Audiences}, v.cfg.Clock.Now())
}

// verify checks token's signature and returns its claims, unchecked.
func (v *JWKSValidator) verify(ctx context.Context, token string) (*saClaims, error) {
	tok, err := jwt.ParseSigned(token, jwtAlgs)
	if err != nil {
		return nil, authz.Deny(authz.ReasonMalformedToken, fmt.Errorf("jwks: %w", err))
	}
	if len(tok.Headers) != 1 {
		return nil, authz.Deny(authz.ReasonInvalidToken, errors.New("jwks: want exactly one signature"))
	}
	k, err := v.key(ctx, tok.Headers[0].KeyID)
	if err != nil {
		return nil, err
	}
	var c saClaims
	if err := tok.Claims(k.Key, &c); err != nil {
		return nil, authz.Deny(authz.ReasonInvalidToken, fmt.Errorf("jwks: signature: %w", err))
	}
	return &c, nil
}
