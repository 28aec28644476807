// Package config reads and validates credinject's YAML configuration. It is
// strict: unknown keys and bad values are refused with a message that names
// the key. It owns no behaviour; internal/app turns a Config into the parts'
// settings.
//
// It holds every default: the parts take each value from here and refuse a
// zero one. A file becomes a Config in three steps, none of which guesses
// whether a key was written by comparing its value with the default:
//   - decode: the YAML over Default(), so an absent key keeps its default and
//     a written one, whatever its value, replaces it;
//   - complete: the defaults that depend on another key (vault.authMount on
//     vault.authMethod, inject on source, a route's name, path, inject and
//     clientAuth on its hosts, its source and the top level) fill the
//     fields still at their zero value, which no valid configuration has;
//     header names and hosts are lower-cased (ASCII only);
//   - check: every value, without changing any.
//
// The top-level source, vault.path, inject and OAuth2 keys are the default
// route's; AllRoutes lists it first, as a route like the others.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/internal/tlsconfig"
)

// Config is the whole configuration file.
type Config struct {
	Listen     Listen     `yaml:"listen"`
	Kubernetes Kubernetes `yaml:"kubernetes"`
	Vault      Vault      `yaml:"vault"`
	Inject     Inject     `yaml:"inject"`
	Events     Events     `yaml:"events"`
	Prefetch   Prefetch   `yaml:"prefetch"`
	Routes     []Route    `yaml:"routes"`
	// Source and OAuth2 are the default route's credential source (see
	// Route); its path is vault.path and its injection inject.
	Source string  `yaml:"source"`
	OAuth2 *OAuth2 `yaml:",inline"`
	// DefaultRoute: whether hosts that match no route use the top-level
	// vault.path and inject (default true). When false they get no_route.
	DefaultRoute *bool `yaml:"defaultRoute"`
	Cache        Cache `yaml:"cache"`
	Audit        Audit `yaml:"audit"`
	// Tracing exports OpenTelemetry spans (off by default).
	Tracing Tracing `yaml:"tracing"`
	// Debug serves /debug/pprof on its own listener (off by default).
	Debug Debug `yaml:"debug"`
	// Identity says where a request's identity comes from (identity.go).
	Identity Identity `yaml:"identity"`
	// Policies turns on CredentialPolicy resources (policies.go).
	Policies Policies `yaml:"policies"`
}

// Audit configures the credential audit trail (package audit).
type Audit struct {
	// Output is "stdout" (JSON lines beside nothing else: the logs go to
	// stderr), "off", or a file path (appended to, created 0600).
	Output string `yaml:"output"`
	// Interval is how often the aggregated usage records are written.
	Interval time.Duration `yaml:"interval"`
	// MaxKeys bounds the usage keys (allow and deny) held per interval;
	// decisions beyond it are counted as dropped.
	MaxKeys int `yaml:"maxKeys"`
}

// Tracing configures OpenTelemetry traces.
type Tracing struct {
	// OTLPEndpoint is the OTLP/gRPC receiver's URL: http://host:port
	// (plaintext) or https://host:port (TLS, system roots). Empty: tracing
	// off, and the request path pays nothing.
	OTLPEndpoint string `yaml:"otlpEndpoint"`
	// SamplingRatio, in [0, 1], is the share of requests traced that carry
	// no trace context, or one that leaves the decision to credinject; a
	// sampled traceparent or B3 context is always followed, an unsampled
	// one never.
	SamplingRatio float64 `yaml:"samplingRatio"`
}

// Debug configures the debugging listener.
type Debug struct {
	// Listen is a host:port serving net/http/pprof's /debug/pprof/ and
	// nothing else. Empty: off. It has no authentication: bind it to
	// loopback or a port no one else reaches.
	Listen string `yaml:"listen"`
}

// HasDefaultRoute reports whether unmatched hosts use the top-level settings.
func (c *Config) HasDefaultRoute() bool { return c.DefaultRoute == nil || *c.DefaultRoute }

// Listen holds the listen addresses.
type Listen struct {
	GRPC string `yaml:"grpc"`
	// HTTP is the /check (HTTP forward-auth) listener; "" turns it off,
	// which the gRPC-only injection shapes (query, metadata, sign) need,
	// and then Health serves the probes.
	HTTP string `yaml:"http"`
	// Health, when set, is a plaintext HTTP address serving only /healthz,
	// /readyz and /metrics, for probes and scrapers that cannot present a
	// client certificate (mTLS on the other two).
	Health string    `yaml:"health"`
	TLS    ListenTLS `yaml:"tls"`
	// TrustedProxies are the callers of /check whose X-Forwarded-Host,
	// X-Original-Host and Forwarded (host=) headers choose the route: CIDRs
	// or single addresses ("10.0.3.0/24", "127.0.0.1"), matched against the
	// HTTP request's TCP peer address. A client whose certificate matches
	// tls.clientNames is trusted too. Anyone else's request is routed by its
	// own Host header. Empty (the default): nobody's forwarded headers count.
	TrustedProxies []string `yaml:"trustedProxies"`
}

// TrustedProxyPrefixes parses TrustedProxies (a single address is a prefix
// of its full length; host bits are masked off). Validate reports the same
// errors, naming listen.trustedProxies[i].
func (l Listen) TrustedProxyPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for i, v := range l.TrustedProxies {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil || a.Zone() != "" {
				errs = append(errs, fmt.Errorf("listen.trustedProxies[%d]: %q is not an IP address or CIDR", i, v))
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, errors.Join(errs...)
}

// ListenTLS turns TLS on for both listeners (gRPC and HTTP). The files are
// re-read when they change on disk.
type ListenTLS struct {
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// ClientCAFile requires a client certificate signed by one of its CAs.
	ClientCAFile string `yaml:"clientCAFile"`
	// ClientNames, with ClientCAFile, also require the client certificate to
	// carry one of these names: a URI SAN, exact
	// ("spiffe://cluster.local/ns/istio-system/sa/egress-gateway"), or a DNS
	// SAN, exact or "*." and a suffix (one more label). A certificate of the
	// CA naming none is refused: gRPC fails the handshake, /check answers
	// 403 client_not_allowed. Empty: any certificate of the CA.
	ClientNames []string `yaml:"clientNames"`
}

// Enabled reports whether the listeners serve TLS.
func (t ListenTLS) Enabled() bool { return t.CertFile != "" }

// Kubernetes configures token validation and the API server client.
type Kubernetes struct {
	Kubeconfig      string   `yaml:"kubeconfig"`
	Audiences       []string `yaml:"audiences"`
	TokenValidation string   `yaml:"tokenValidation"`
	// Issuer is the expected "iss" in jwks mode; empty: discovered from the
	// API server's /.well-known/openid-configuration.
	Issuer string `yaml:"issuer"`
	// JWKSFile, in jwks mode, reads the issuer keys from a file instead of the
	// API server (used by `credinject dev`).
	JWKSFile string  `yaml:"jwksFile"`
	QPS      float32 `yaml:"qps"`
	Burst    int     `yaml:"burst"`
	// TokenReviewBudget bounds, in tokenreview mode when the issuer's keys
	// cannot be fetched, the TokenReviews of tokens naming identities the
	// API server never confirmed (each confirmed identity gets its own).
	TokenReviewBudget Budget `yaml:"tokenReviewBudget"`
}

// Budget is a token bucket: Rate per second, Burst at once.
type Budget struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

// Vault configures where credentials live and how credinject logs in.
type Vault struct {
	Address    string `yaml:"address"`
	AuthMethod string `yaml:"authMethod"`
	AuthMount  string `yaml:"authMount"`
	Role       string `yaml:"role"`
	KVMount    string `yaml:"kvMount"`
	Path       string `yaml:"path"`
	// Concurrency bounds concurrent Vault calls of the watcher.
	Concurrency int `yaml:"concurrency"`
	// ReloginInterval is how long an identity's Vault token is renewed
	// before credinject logs in again (Vault checks the role's bindings only
	// at login); 0: the TTL Vault grants at login.
	ReloginInterval time.Duration `yaml:"reloginInterval"`
	// CAFile verifies Vault's certificate (PEM); empty: VAULT_CACERT or the
	// system roots.
	CAFile string `yaml:"caFile"`
	// ClientCertFile and ClientKeyFile are presented to Vault (TLS client
	// authentication); empty: VAULT_CLIENT_CERT / VAULT_CLIENT_KEY.
	ClientCertFile string `yaml:"clientCertFile"`
	ClientKeyFile  string `yaml:"clientKeyFile"`
	// TLSServerName is the name expected in Vault's certificate; empty:
	// VAULT_TLS_SERVER_NAME or the address's host.
	TLSServerName string `yaml:"tlsServerName"`
	// Namespace is the Vault Enterprise / HCP namespace; empty:
	// VAULT_NAMESPACE or none.
	Namespace string `yaml:"namespace"`
}

// Events configures the NATS subscriber. Secrets are named by file, never
// written here.
type Events struct {
	NatsURL string `yaml:"natsURL"`
	Subject string `yaml:"subject"`
	// At most one of CredsFile (a NATS user JWT and nkey seed), NKeyFile (an
	// nkey seed) and TokenFile (a token).
	CredsFile string `yaml:"credsFile"`
	NKeyFile  string `yaml:"nkeyFile"`
	TokenFile string `yaml:"tokenFile"`
	// CAFile verifies the server's certificate; CertFile and KeyFile are
	// the client certificate.
	CAFile   string `yaml:"caFile"`
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// MinInterval is the least time between two event-driven re-reads of
	// one identity's credential for one route (default 1s, must be
	// positive): events arriving meanwhile (a flood, wildcard events,
	// repeats) coalesce into one re-read at the end of the interval, which
	// starts after the last of them.
	MinInterval time.Duration `yaml:"minInterval"`
}

// Prefetch configures the watcher.
type Prefetch struct {
	Namespaces []string `yaml:"namespaces"`
	// Refresh is the re-read interval while rotation events are down or
	// disabled; RefreshWithEvents while they are connected.
	Refresh           time.Duration `yaml:"refresh"`
	RefreshWithEvents time.Duration `yaml:"refreshWithEvents"`
	StaleGrace        time.Duration `yaml:"staleGrace"`
	// Concurrency bounds the ServiceAccounts prefetched at once (each mints
	// a token, logs in to Vault and reads every route; the Vault calls are
	// also bounded by vault.concurrency).
	Concurrency int `yaml:"concurrency"`
}

// Route is a per-host credential: its source, its path and the injection.
// The default route (AllRoutes' first) has no name and no hosts.
type Route struct {
	Name  string   `yaml:"name"`
	Hosts []string `yaml:"hosts"`
	// Source is how the credential is obtained: kv (default; Path is a KV v2
	// path under vault.kvMount), vault-read (Path is any Vault path, its
	// lease kept), oauth2-client-credentials (Path is the KV v2 secret with
	// client_id and client_secret; OAuth2 says how to ask) or
	// vault-identity-token (Path is identity/oidc/token/<role>).
	Source string `yaml:"source"`
	Path   string `yaml:"path"`
	// OAuth2 holds the keys only oauth2-client-credentials takes, written
	// beside source; nil when none is written.
	OAuth2 *OAuth2 `yaml:",inline"`
	Inject Inject  `yaml:"inject"`
}

// OAuth2 is how an oauth2-client-credentials route asks its token
// endpoint (tokenURL, scopes, clientAuth beside the route's source).
type OAuth2 struct {
	// TokenURL is the token endpoint, an http(s) URL.
	TokenURL string `yaml:"tokenURL"`
	// Scopes are sent space-separated; empty: none.
	Scopes []string `yaml:"scopes"`
	// ClientAuth is basic (default: HTTP Basic) or post (in the form).
	ClientAuth string `yaml:"clientAuth"`
}

// isZero reports whether no OAuth2 key has a value (an empty list of
// scopes included).
func (o *OAuth2) isZero() bool {
	return o == nil || (o.TokenURL == "" && len(o.Scopes) == 0 && o.ClientAuth == "")
}

// The credential sources (routes[].source, source).
const (
	SourceKV            = "kv"
	SourceVaultRead     = "vault-read"
	SourceOAuth2        = "oauth2-client-credentials"
	SourceIdentityToken = "vault-identity-token"
)

// sourceSpec is what the configuration knows of a credential source.
type sourceSpec struct {
	name string
	// inject is the injection of a route of this source that names none.
	// A kv route takes the top-level inject instead, whose own default is
	// kv's; vault-read has none (its fields are the engine's).
	inject Inject
	// ownPath: a route needs its own path (a full Vault path), not vault.path.
	ownPath bool
	// oauth2: the source takes the OAuth2 keys.
	oauth2 bool
}

// sources is the one list of credential sources, in the order messages
// name them.
var sources = []sourceSpec{
	{name: SourceKV, inject: Inject{Header: "authorization", Value: "Bearer {api_key}"}},
	{name: SourceVaultRead, ownPath: true},
	{name: SourceOAuth2, oauth2: true, inject: Inject{Header: "authorization", Value: "Bearer {access_token}"}},
	{name: SourceIdentityToken, ownPath: true, inject: Inject{Header: "authorization", Value: "Bearer {token}"}},
}

// lookupSource returns the source named name.
func lookupSource(name string) (sourceSpec, bool) {
	for _, s := range sources {
		if s.name == name {
			return s, true
		}
	}
	return sourceSpec{}, false
}

// sourceNames lists the sources for a message: "kv, vault-read, ...".
func sourceNames() string {
	names := make([]string, len(sources))
	for i, s := range sources {
		names[i] = s.name
	}
	return strings.Join(names, ", ")
}

// Cache sizes the in-memory caches and the token result lifetimes.
type Cache struct {
	Capacity      int64         `yaml:"capacity"`
	TokenTTL      time.Duration `yaml:"tokenTTL"`
	TokenNegative time.Duration `yaml:"tokenNegativeTTL"`
	DeniedTTL     time.Duration `yaml:"deniedTTL"`

	// DeniedCapacity bounds the negative entries (refusals cached for
	// deniedTTL), kept apart from the Capacity credentials: beyond it the
	// oldest refusal is evicted, never a credential.
	DeniedCapacity int `yaml:"deniedCapacity"`
}

// Default returns the configuration used when a key is absent. The defaults
// that depend on another key (vault.authMount, inject, source, the routes'
// name, path, inject and clientAuth) are zero here and filled by Validate.
func Default() Config {
	return Config{
		Listen: Listen{GRPC: "127.0.0.1:9191", HTTP: "127.0.0.1:8181"},
		Kubernetes: Kubernetes{
			Audiences:         []string{"https://kubernetes.default.svc.cluster.local"},
			TokenValidation:   "tokenreview",
			QPS:               500,
			Burst:             1000,
			TokenReviewBudget: Budget{Rate: 20, Burst: 40},
		},
		Vault: Vault{
			Address:     "http://vault.vault.svc.cluster.local:8200",
			AuthMethod:  "kubernetes",
			Role:        "egress-workload",
			KVMount:     "secret",
			Path:        "egress/{namespace}/{serviceaccount}",
			Concurrency: 16,
		},
		Events:   Events{Subject: "credinject.rotated", MinInterval: time.Second},
		Prefetch: Prefetch{Refresh: 5 * time.Minute, RefreshWithEvents: time.Hour, StaleGrace: 15 * time.Minute, Concurrency: 16},
		Cache: Cache{
			Capacity:      1 << 18,
			TokenTTL:      30 * time.Second,
			TokenNegative: 5 * time.Second,
			DeniedTTL:     10 * time.Second,

			DeniedCapacity: 1 << 16,
		},
		Audit:    Audit{Output: "stdout", Interval: time.Minute, MaxKeys: 100_000},
		Tracing:  Tracing{SamplingRatio: 0.01},
		Identity: defaultIdentity(),
	}
}

// Load reads and validates the file at path.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	c, err := Parse(f)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML over the defaults, completes and checks the result
// (Validate).
func Parse(r io.Reader) (Config, error) {
	c, err := decode(r)
	if err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// decode reads YAML over Default(): an absent key keeps its default. Unknown
// keys are an error.
func decode(r io.Reader) (Config, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return Config{}, err
	}
	c := Default()
	if len(bytes.TrimSpace(raw)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			return Config{}, fmt.Errorf("parse: %w", err)
		}
	}
	return c, nil
}

// AllRoutes lists the routes in the order they are served: the default route
// first (no name, no hosts: the top-level source, vault.path, inject and
// OAuth2 keys) when HasDefaultRoute, then routes. Call it on a validated
// Config.
func (c *Config) AllRoutes() []Route {
	rs := make([]Route, 0, len(c.Routes)+1)
	if c.HasDefaultRoute() {
		rs = append(rs, c.defaultRoute())
	}
	return append(rs, c.Routes...)
}

// defaultRoute is the top level's route.
func (c *Config) defaultRoute() Route {
	return Route{Source: c.Source, Path: c.Vault.Path, OAuth2: c.OAuth2, Inject: c.Inject}
}

// setDefaultRoute writes r back to the top-level keys.
func (c *Config) setDefaultRoute(r Route) {
	c.Source, c.Vault.Path, c.OAuth2, c.Inject = r.Source, r.Path, r.OAuth2, r.Inject
}

// Validate completes the defaults that depend on other keys (complete) and
// checks every value (check). Completing a complete Config changes nothing,
// so validating twice is validating once.
func (c *Config) Validate() error {
	c.complete()
	return c.check()
}

// complete fills each field a key's default depends on another key for,
// when it is still zero (absent: no valid configuration has it zero), and
// lower-cases header names and hosts (ASCII only, so a non-ASCII host is
// still refused by check).
func (c *Config) complete() {
	if c.Vault.AuthMount == "" {
		// The mount is named after the method unless written.
		c.Vault.AuthMount = c.Vault.AuthMethod
	}
	if c.Source == "" {
		c.Source = SourceKV
	}
	c.Identity.Peer.Header = asciiLower(c.Identity.Peer.Header)
	// The top-level inject: each field not written takes the source's, or
	// kv's when the source has none.
	// With another shape written (headers, basic, query, metadata, sign),
	// header and value are only what is written.
	def, _ := lookupSource(c.Source)
	if def.inject.isZero() {
		def = sources[0]
	}
	if !c.Inject.HasShapes() {
		if c.Inject.Header == "" {
			c.Inject.Header = def.inject.Header
		}
		if c.Inject.Value == "" {
			c.Inject.Value = def.inject.Value
		}
	}
	top := c.defaultRoute()
	completeRoute(&top, c.Inject, "")
	c.setDefaultRoute(top)
	// A kv route without inject takes the top-level one when that is a kv
	// injection too; under another top-level source, kv's own.
	kvInject := sources[0].inject
	if c.Source == SourceKV {
		kvInject = c.Inject
	}
	for i := range c.Routes {
		completeRoute(&c.Routes[i], kvInject, c.Vault.Path)
	}
}

// completeRoute fills a route's name (its first host, without "*."), source
// (kv), path (vault.path, unless the source needs its own), inject (the
// source's; kv: kvInject) and clientAuth (basic, for oauth2).
func completeRoute(r *Route, kvInject Inject, vaultPath string) {
	for j, h := range r.Hosts {
		r.Hosts[j] = asciiLower(h)
	}
	if r.Name == "" && len(r.Hosts) > 0 {
		r.Name = strings.TrimPrefix(r.Hosts[0], "*.")
	}
	if r.Source == "" {
		r.Source = SourceKV
	}
	src, known := lookupSource(r.Source)
	if r.Path == "" && known && !src.ownPath {
		r.Path = vaultPath
	}
	if r.Inject.isZero() {
		r.Inject = src.inject
		if r.Source == SourceKV {
			r.Inject = kvInject
		}
	}
	r.Inject = r.Inject.lowered()
	switch {
	case src.oauth2:
		if r.OAuth2 == nil {
			r.OAuth2 = &OAuth2{}
		}
		if r.OAuth2.ClientAuth == "" {
			r.OAuth2.ClientAuth = "basic"
		}
	case r.OAuth2.isZero():
		// "scopes: []" on another source says nothing.
		r.OAuth2 = nil
	}
}

// asciiLower lower-cases A-Z only: strings.ToLower folds some non-ASCII
// letters (U+212A KELVIN SIGN) into ASCII ones.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

var (
	headerName  = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	placeholder = regexp.MustCompile(`\{([^{}]*)\}`)
	fieldName   = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	hostPattern = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$`)
)

// check reports every value that is wrong, naming its key; it changes
// nothing.
func (c *Config) check() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	checkAddr := func(key, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			bad(key, "%q is not host:port", v)
		}
	}
	checkAddr("listen.grpc", c.Listen.GRPC)
	switch {
	case c.Listen.HTTP != "":
		checkAddr("listen.http", c.Listen.HTTP)
	case c.Listen.Health == "":
		bad("listen.health", "is required when listen.http is off (\"\"): it serves the probes and /metrics")
	}
	if c.Listen.Health != "" {
		checkAddr("listen.health", c.Listen.Health)
	}
	if t := c.Listen.TLS; t.CertFile != "" || t.KeyFile != "" || t.ClientCAFile != "" {
		if t.CertFile == "" || t.KeyFile == "" {
			bad("listen.tls", "certFile and keyFile are both required (certFile %q, keyFile %q)", t.CertFile, t.KeyFile)
		}
	}
	if t := c.Listen.TLS; len(t.ClientNames) > 0 {
		if t.ClientCAFile == "" {
			bad("listen.tls.clientNames", "needs listen.tls.clientCAFile (names are checked on client certificates that CA verified)")
		}
		if _, err := tlsconfig.ParseClientNames("listen.tls.clientNames", t.ClientNames); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := c.Listen.TrustedProxyPrefixes(); err != nil {
		errs = append(errs, err)
	}
	switch c.Kubernetes.TokenValidation {
	case "tokenreview", "jwks":
	default:
		bad("kubernetes.tokenValidation", "%q is not one of tokenreview, jwks", c.Kubernetes.TokenValidation)
	}
	if len(c.Kubernetes.Audiences) == 0 {
		bad("kubernetes.audiences", "at least one audience is required")
	}
	for i, a := range c.Kubernetes.Audiences {
		if strings.TrimSpace(a) == "" {
			bad(fmt.Sprintf("kubernetes.audiences[%d]", i), "empty audience")
		}
	}
	if c.Kubernetes.QPS <= 0 || c.Kubernetes.Burst <= 0 {
		bad("kubernetes.qps/burst", "must be positive (qps %v, burst %d)", c.Kubernetes.QPS, c.Kubernetes.Burst)
	}
	if b := c.Kubernetes.TokenReviewBudget; b.Rate <= 0 || b.Burst <= 0 {
		bad("kubernetes.tokenReviewBudget", "rate and burst must be positive (rate %v, burst %d)", b.Rate, b.Burst)
	}
	if !strings.HasPrefix(c.Vault.Address, "http://") && !strings.HasPrefix(c.Vault.Address, "https://") {
		bad("vault.address", "%q is not an http(s) URL", c.Vault.Address)
	}
	switch c.Vault.AuthMethod {
	case "jwt", "kubernetes":
	default:
		bad("vault.authMethod", "%q is not one of kubernetes, jwt", c.Vault.AuthMethod)
	}
	for key, v := range map[string]string{"vault.authMount": c.Vault.AuthMount, "vault.role": c.Vault.Role, "vault.kvMount": c.Vault.KVMount} {
		if v == "" || strings.ContainsAny(v, " \t\r\n?#") {
			bad(key, "%q is empty or has illegal characters", v)
		}
	}
	if (c.Vault.ClientCertFile == "") != (c.Vault.ClientKeyFile == "") {
		bad("vault.clientCertFile/clientKeyFile", "both or neither (clientCertFile %q, clientKeyFile %q)", c.Vault.ClientCertFile, c.Vault.ClientKeyFile)
	}
	if strings.HasPrefix(c.Vault.Address, "http://") {
		for key, v := range map[string]string{"vault.caFile": c.Vault.CAFile, "vault.clientCertFile": c.Vault.ClientCertFile, "vault.tlsServerName": c.Vault.TLSServerName} {
			if v != "" {
				bad(key, "is set, but vault.address %q is not https://", c.Vault.Address)
			}
		}
	}
	if ns := c.Vault.Namespace; ns != strings.TrimSpace(ns) || strings.ContainsAny(ns, "\r\n\x00") {
		bad("vault.namespace", "%q has surrounding spaces or control characters", ns)
	}
	if c.Vault.Concurrency <= 0 {
		bad("vault.concurrency", "must be positive, got %d", c.Vault.Concurrency)
	}
	if c.Events.Subject == "" || strings.ContainsAny(c.Events.Subject, " \t\r\n") {
		bad("events.subject", "%q is not a NATS subject", c.Events.Subject)
	}
	if c.Events.NatsURL != "" && !strings.Contains(c.Events.NatsURL, "://") {
		bad("events.natsURL", "%q is not a URL (nats://host:port)", c.Events.NatsURL)
	}
	auth := 0
	for _, f := range []string{c.Events.CredsFile, c.Events.NKeyFile, c.Events.TokenFile} {
		if f != "" {
			auth++
		}
	}
	if auth > 1 {
		bad("events.credsFile/nkeyFile/tokenFile", "at most one may be set")
	}
	if (c.Events.CertFile == "") != (c.Events.KeyFile == "") {
		bad("events.certFile/keyFile", "both or neither (certFile %q, keyFile %q)", c.Events.CertFile, c.Events.KeyFile)
	}
	if c.Events.MinInterval <= 0 {
		bad("events.minInterval", "must be positive, got %v", c.Events.MinInterval)
	}
	if c.Prefetch.Refresh <= 0 {
		bad("prefetch.refresh", "must be positive, got %v", c.Prefetch.Refresh)
	}
	if c.Prefetch.RefreshWithEvents <= 0 {
		bad("prefetch.refreshWithEvents", "must be positive, got %v", c.Prefetch.RefreshWithEvents)
	}
	if c.Vault.ReloginInterval < 0 {
		bad("vault.reloginInterval", "must not be negative, got %v", c.Vault.ReloginInterval)
	}
	if c.Prefetch.Concurrency <= 0 {
		bad("prefetch.concurrency", "must be positive, got %d", c.Prefetch.Concurrency)
	}
	if c.Prefetch.StaleGrace < 0 {
		bad("prefetch.staleGrace", "must not be negative, got %v", c.Prefetch.StaleGrace)
	}
	for i, ns := range c.Prefetch.Namespaces {
		if ns == "" {
			bad(fmt.Sprintf("prefetch.namespaces[%d]", i), "empty namespace")
		}
	}
	if c.Cache.Capacity <= 0 || c.Cache.TokenTTL <= 0 || c.Cache.TokenNegative <= 0 || c.Cache.DeniedTTL <= 0 {
		bad("cache", "capacity and TTLs must be positive")
	}
	if c.Cache.DeniedCapacity <= 0 {
		bad("cache.deniedCapacity", "must be positive, got %d", c.Cache.DeniedCapacity)
	}
	if strings.TrimSpace(c.Audit.Output) == "" || strings.ContainsAny(c.Audit.Output, "\r\n\x00") {
		bad("audit.output", "%q is not stdout, off or a file path", c.Audit.Output)
	}
	if c.Audit.Interval <= 0 {
		bad("audit.interval", "must be positive, got %v", c.Audit.Interval)
	}
	if c.Audit.MaxKeys <= 0 {
		bad("audit.maxKeys", "must be positive, got %d", c.Audit.MaxKeys)
	}
	if e := c.Tracing.OTLPEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("tracing.otlpEndpoint", "%q is not an http(s)://host:port URL", e)
		}
	}
	if r := c.Tracing.SamplingRatio; !(r >= 0 && r <= 1) {
		bad("tracing.samplingRatio", "must be within [0, 1], got %v", r)
	}
	if c.Debug.Listen != "" {
		checkAddr("debug.listen", c.Debug.Listen)
	}
	c.checkRoutes(bad)
	c.checkIdentity(bad)
	c.checkPolicies(bad)
	return errors.Join(errs...)
}

// isASCII reports whether s has no byte outside 7-bit ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// routeKeys names a route's keys in messages: the default route's are the
// top-level ones (source, vault.path, inject, tokenURL...), route i's
// routes[i].<key>.
func routeKeys(i int) func(key string) string {
	if i < 0 {
		return func(key string) string {
			if key == "path" {
				return "vault.path"
			}
			return key
		}
	}
	return func(key string) string { return fmt.Sprintf("routes[%d].%s", i, key) }
}

// checkRoutes checks the default route (its keys are checked whether or not
// defaultRoute is on) and every route: names, hosts, source, path and
// injection.
func (c *Config) checkRoutes(bad func(key, format string, a ...any)) {
	httpOn := c.Listen.HTTP != ""
	checkRoute(c.defaultRoute(), routeKeys(-1), httpOn, bad)
	names := map[string]bool{}
	hosts := map[string]bool{}
	for i, r := range c.Routes {
		key := routeKeys(i)
		if len(r.Hosts) == 0 {
			bad(key("hosts"), "at least one host is required")
		}
		for j, h := range r.Hosts {
			hkey := key(fmt.Sprintf("hosts[%d]", j))
			checkHost(hkey, h, bad)
			// Hosts are routed without their port: a.example:443 and
			// a.example:8443 are one host.
			name, _, _ := strings.Cut(h, ":")
			if hosts[name] {
				bad(hkey, "%q appears in two routes (hosts are matched without their port)", h)
			}
			hosts[name] = true
		}
		if !authz.IsRouteName(r.Name) || r.Name == "default" {
			bad(key("name"), "%q is not a valid route name", r.Name)
		}
		if names[r.Name] {
			bad(key("name"), "%q is used twice", r.Name)
		}
		names[r.Name] = true
		checkRoute(r, key, httpOn, bad)
	}
}

// checkRoute checks a route's source, the keys only oauth2-client-credentials
// takes, its path and its injection (httpOn: listen.http is on).
func checkRoute(r Route, key func(string) string, httpOn bool, bad func(key, format string, a ...any)) {
	src, known := lookupSource(r.Source)
	switch {
	case !known:
		bad(key("source"), "%q is not one of %s", r.Source, sourceNames())
	case !src.oauth2 && r.OAuth2 != nil:
		for k, set := range map[string]bool{"tokenURL": r.OAuth2.TokenURL != "", "scopes": len(r.OAuth2.Scopes) > 0, "clientAuth": r.OAuth2.ClientAuth != ""} {
			if set {
				bad(key(k), "only for source %s, not %s", SourceOAuth2, r.Source)
			}
		}
	case src.oauth2:
		o := r.OAuth2
		if o == nil {
			o = &OAuth2{}
		}
		if u, err := url.Parse(o.TokenURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad(key("tokenURL"), "%q is not an http(s) URL", o.TokenURL)
		}
		for i, sc := range o.Scopes {
			if sc == "" || strings.ContainsAny(sc, " \t\r\n\"\\") {
				bad(key(fmt.Sprintf("scopes[%d]", i)), "%q is not a scope token", sc)
			}
		}
		switch o.ClientAuth {
		case "basic", "post":
		default:
			bad(key("clientAuth"), "%q is not one of basic, post", o.ClientAuth)
		}
	}
	switch {
	case r.Path == "" && src.ownPath:
		bad(key("path"), "source %s needs its own path (a full Vault path)", r.Source)
	case r.Path != "" || known:
		if err := CheckPath(r.Path); err != nil {
			bad(key("path"), "%v", err)
		}
	}
	if r.Inject.isZero() {
		bad(key("inject"), "source %s has no default injection: write inject.header and inject.value, or another shape", r.Source)
		return
	}
	r.Inject.check(func(k string) string { return key("inject." + k) }, httpOn, bad)
}

// CheckPath validates a Vault path template: relative, no '..', and the
// placeholder rule of authz.CheckPathTemplate (each placeholder bounded by
// '/', an end, or a character no Kubernetes name contains), so two
// identities never expand to the same path.
func CheckPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "..") {
		return fmt.Errorf("%q must be a relative path without '..'", p)
	}
	return authz.CheckPathTemplate(p)
}

// checkHost checks one host of a route (hkey names it): ASCII, and a host
// name or "*." and a suffix, lower case (complete lowered it), with an
// optional port. It reports whether the host passed.
func checkHost(hkey, h string, bad func(key, format string, a ...any)) bool {
	if !isASCII(h) {
		bad(hkey, "%q is not ASCII (write an internationalised name in punycode, xn--…)", h)
		return false
	}
	if !hostPattern.MatchString(h) {
		bad(hkey, "%q is not a host name or *.suffix", h)
		return false
	}
	return true
}
