// Package config reads and validates credinject's YAML configuration. It is
// strict: unknown keys and bad values are refused with a message that names
// the key. It owns no behaviour; cmd turns a Config into the parts' settings.
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
	// Source, TokenURL, Scopes and ClientAuth are the default route's
	// credential source (see Route).
	Source     string   `yaml:"source"`
	TokenURL   string   `yaml:"tokenURL"`
	Scopes     []string `yaml:"scopes"`
	ClientAuth string   `yaml:"clientAuth"`
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

// Inject says which header to set and how to render it from the secret.
type Inject struct {
	Header string `yaml:"header"`
	Value  string `yaml:"value"`
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
type Route struct {
	Name  string   `yaml:"name"`
	Hosts []string `yaml:"hosts"`
	// Source is how the credential is obtained: kv (default; Path is a KV v2
	// path under vault.kvMount), vault-read (Path is any Vault path, its
	// lease kept), oauth2-client-credentials (Path is the KV v2 secret with
	// client_id and client_secret; TokenURL, Scopes, ClientAuth say how to
	// ask) or vault-identity-token (Path is identity/oidc/token/<role>).
	Source     string   `yaml:"source"`
	Path       string   `yaml:"path"`
	TokenURL   string   `yaml:"tokenURL"`
	Scopes     []string `yaml:"scopes"`
	ClientAuth string   `yaml:"clientAuth"`
	Inject     Inject   `yaml:"inject"`
}

// The credential sources (routes[].source, source).
const (
	SourceKV            = "kv"
	SourceVaultRead     = "vault-read"
	SourceOAuth2        = "oauth2-client-credentials"
	SourceIdentityToken = "vault-identity-token"
)

// sourceInject is the injection of a route that names none, per source:
// kv takes the top-level inject; vault-read has no default (its fields are
// the engine's).
var sourceInject = map[string]Inject{
	SourceOAuth2:        {Header: "authorization", Value: "Bearer {access_token}"},
	SourceIdentityToken: {Header: "authorization", Value: "Bearer {token}"},
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

// Default returns the configuration used when a key is absent.
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
			AuthMount:   "kubernetes",
			Role:        "egress-workload",
			KVMount:     "secret",
			Path:        "egress/{namespace}/{serviceaccount}",
			Concurrency: 16,
		},
		Inject:   Inject{Header: "authorization", Value: "Bearer {api_key}"},
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

// Parse decodes YAML over the defaults and validates the result.
func Parse(r io.Reader) (Config, error) {
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
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

var (
	headerName  = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	placeholder = regexp.MustCompile(`\{([^{}]*)\}`)
	fieldName   = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	hostPattern = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$`)
)

// Validate checks every value and normalises header names to lower case.
func (c *Config) Validate() error {
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
	checkAddr("listen.http", c.Listen.HTTP)
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
	case "jwt":
		// authMount follows the method unless it was set otherwise.
		if c.Vault.AuthMount == Default().Vault.AuthMount {
			c.Vault.AuthMount = "jwt"
		}
	case "kubernetes":
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
	if err := CheckPath(c.Vault.Path); err != nil {
		bad("vault.path", "%v", err)
	}
	if c.Source == "" {
		c.Source = SourceKV
	}
	// Header names compare in lower case, so that validating a validated
	// configuration again changes nothing.
	c.Inject.Header = strings.ToLower(c.Inject.Header)
	if in, ok := sourceInject[c.Source]; ok && c.Inject == Default().Inject {
		// The KV default ({api_key}) means nothing to a minted source.
		c.Inject = in
	}
	for _, e := range checkSource("", c.Source, c.TokenURL, c.Scopes, &c.ClientAuth) {
		bad(e[0], "%s", e[1])
	}
	if err := c.Inject.check(); err != nil {
		bad("inject", "%v", err)
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

// checkRoutes validates and completes the routes: names, hosts, source,
// path and injection (defaults from the top level or the source).
func (c *Config) checkRoutes(bad func(key, format string, a ...any)) {
	names := map[string]bool{}
	hosts := map[string]bool{}
	for i := range c.Routes {
		r := &c.Routes[i]
		key := fmt.Sprintf("routes[%d]", i)
		if len(r.Hosts) == 0 {
			bad(key+".hosts", "at least one host is required")
		}
		for j, h := range r.Hosts {
			// Checked before lower-casing: strings.ToLower folds some
			// non-ASCII letters (U+212A KELVIN SIGN) into ASCII ones.
			if !isASCII(h) {
				bad(fmt.Sprintf("%s.hosts[%d]", key, j), "%q is not ASCII (write an internationalised name in punycode, xn--…)", h)
			}
			h = strings.ToLower(h)
			r.Hosts[j] = h
			if !hostPattern.MatchString(h) {
				bad(fmt.Sprintf("%s.hosts[%d]", key, j), "%q is not a host name or *.suffix", h)
			}
			// Hosts are routed without their port: a.example:443 and
			// a.example:8443 are one host.
			name, _, _ := strings.Cut(h, ":")
			if hosts[name] {
				bad(fmt.Sprintf("%s.hosts[%d]", key, j), "%q appears in two routes (hosts are matched without their port)", h)
			}
			hosts[name] = true
		}
		if r.Name == "" && len(r.Hosts) > 0 {
			r.Name = strings.TrimPrefix(r.Hosts[0], "*.")
		}
		if !authz.IsRouteName(r.Name) || r.Name == "default" {
			bad(key+".name", "%q is not a valid route name", r.Name)
		}
		if names[r.Name] {
			bad(key+".name", "%q is used twice", r.Name)
		}
		names[r.Name] = true
		if r.Source == "" {
			r.Source = SourceKV
		}
		for _, e := range checkSource(key+".", r.Source, r.TokenURL, r.Scopes, &r.ClientAuth) {
			bad(e[0], "%s", e[1])
		}
		if r.Path == "" && (r.Source == SourceVaultRead || r.Source == SourceIdentityToken) {
			bad(key+".path", "source %s needs its own path (a full Vault path)", r.Source)
		}
		if r.Path == "" {
			r.Path = c.Vault.Path
		}
		if err := CheckPath(r.Path); err != nil {
			bad(key+".path", "%v", err)
		}
		if r.Inject == (Inject{}) {
			r.Inject = sourceInject[r.Source]
			if r.Source == SourceKV {
				r.Inject = c.Inject
			}
		}
		if err := r.Inject.check(); err != nil {
			bad(key+".inject", "%v", err)
		}
	}
}

// checkSource validates a source and the keys only oauth2-client-credentials
// takes; it defaults clientAuth to basic there. It returns (key, message)
// pairs, keys prefixed with prefix.
func checkSource(prefix, source, tokenURL string, scopes []string, clientAuth *string) [][2]string {
	var errs [][2]string
	switch source {
	case SourceKV, SourceVaultRead, SourceIdentityToken:
		for key, set := range map[string]bool{"tokenURL": tokenURL != "", "scopes": len(scopes) > 0, "clientAuth": *clientAuth != ""} {
			if set {
				errs = append(errs, [2]string{prefix + key, fmt.Sprintf("only for source %s, not %s", SourceOAuth2, source)})
			}
		}
	case SourceOAuth2:
		if u, err := url.Parse(tokenURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, [2]string{prefix + "tokenURL", fmt.Sprintf("%q is not an http(s) URL", tokenURL)})
		}
		for i, sc := range scopes {
			if sc == "" || strings.ContainsAny(sc, " \t\r\n\"\\") {
				errs = append(errs, [2]string{fmt.Sprintf("%sscopes[%d]", prefix, i), fmt.Sprintf("%q is not a scope token", sc)})
			}
		}
		switch *clientAuth {
		case "":
			*clientAuth = "basic"
		case "basic", "post":
		default:
			errs = append(errs, [2]string{prefix + "clientAuth", fmt.Sprintf("%q is not one of basic, post", *clientAuth)})
		}
	default:
		errs = append(errs, [2]string{prefix + "source", fmt.Sprintf("%q is not one of %s, %s, %s, %s", source, SourceKV, SourceVaultRead, SourceOAuth2, SourceIdentityToken)})
	}
	return errs
}

func (in *Inject) check() error {
	in.Header = strings.ToLower(in.Header)
	if !headerName.MatchString(in.Header) {
		return fmt.Errorf("header %q is not a valid HTTP header name", in.Header)
	}
	if strings.ContainsAny(in.Value, "\r\n\x00") {
		return fmt.Errorf("value template has a control character")
	}
	ms := placeholder.FindAllStringSubmatch(in.Value, -1)
	if len(ms) == 0 {
		return fmt.Errorf("value %q has no {field} placeholder", in.Value)
	}
	for _, m := range ms {
		if !fieldName.MatchString(m[1]) {
			return fmt.Errorf("value placeholder {%s} is not a secret field name", m[1])
		}
	}
	return nil
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
