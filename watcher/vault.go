package watcher

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/credinject/credinject/authz"
)

// vault is the part of Vault's API the watcher uses, each call made with the
// token given (an identity's own, never credinject's). It is declared here,
// where it is used, so the session and refresh state machines are tested with
// a fake. vaultClient is the real one.
//
// Errors: errForbidden for a refused call (the token is unknown to Vault or
// its policy does not allow the path), errNotFound for nothing at the path,
// authz.ErrVaultDenied for a refused login, authz.ErrVaultUnavailable when
// Vault could not be asked.
type vault interface {
	// Login logs in to the auth method with a service-account token.
	Login(ctx context.Context, jwt string) (vaultLogin, error)
	// RenewSelf extends token's lease; it returns the new TTL.
	RenewSelf(ctx context.Context, token string) (time.Duration, error)
	// Read reads path (a full logical path, e.g. "secret/data/egress/ns/sa").
	Read(ctx context.Context, token, path string) (*vaultapi.Secret, error)
	// RevokeSelf revokes token (and, in Vault, every lease it holds).
	RevokeSelf(ctx context.Context, token string) error
	// RenewLease extends a secret's lease by increment (sys/leases/renew,
	// which Vault's default policy allows); it returns the new TTL, which
	// Vault caps at the lease's max TTL.
	RenewLease(ctx context.Context, token, leaseID string, increment time.Duration) (time.Duration, error)
	// RevokeLease revokes a secret's lease (sys/leases/revoke/<lease id>;
	// the policy must allow it, else the lease ends at its TTL). The id is
	// in the path, not the body, so a policy can allow an identity to
	// revoke only the leases of its own paths
	// (sys/leases/revoke/database/creds/<its role>/*).
	RevokeLease(ctx context.Context, token, leaseID string) error
}

// vaultLogin is a Vault token obtained by a login.
type vaultLogin struct {
	Token     string
	TTL       time.Duration
	Renewable bool
}

var (
	// errForbidden: Vault refused a call; the token may be unknown to Vault
	// (expired, revoked, lost in a restart) or the policy changed.
	errForbidden = errors.New("vault refused the call")
	// errNotFound: the token may read the path but nothing is there.
	errNotFound = errors.New("nothing at the path")
)

// VaultClientConfig says how to reach Vault. The client it builds carries no
// token: the watcher gives each identity's calls that identity's own.
//
// The TLS settings and the namespace go through vault/api's own
// configuration, on top of what the VAULT_* environment variables say
// (VAULT_CACERT, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_TLS_SERVER_NAME,
// VAULT_NAMESPACE, ...): a field that is set wins over its variable, an empty
// one leaves the variable in force. With CAFile set, VAULT_SKIP_VERIFY is
// ignored: Vault's certificate is always verified against it.
type VaultClientConfig struct {
	// Address is Vault's URL (vault.address).
	Address string
	// Concurrency sizes the idle connection pool to the watcher's bound on
	// concurrent calls (vault.concurrency).
	Concurrency int
	// Timeout bounds one HTTP call (default 10s).
	Timeout time.Duration
	// CAFile verifies Vault's certificate (vault.caFile).
	CAFile string
	// ClientCertFile and ClientKeyFile are the client certificate presented
	// to Vault (vault.clientCertFile, vault.clientKeyFile).
	ClientCertFile string
	ClientKeyFile  string
	// TLSServerName is the name expected in Vault's certificate
	// (vault.tlsServerName).
	TLSServerName string
	// Namespace is sent as X-Vault-Namespace on every call, of every clone
	// (vault.namespace).
	Namespace string
}

// NewVaultClient builds the Vault API client the watcher clones per
// call: no retries of its own (the watcher backs off), no token whatever
// VAULT_TOKEN says, the namespace and TLS settings carried by every clone.
// A file that cannot be read or parsed is an error naming it.
func NewVaultClient(cfg VaultClientConfig) (*vaultapi.Client, error) {
	vcfg := vaultapi.DefaultConfig()
	if vcfg.Error != nil {
		return nil, fmt.Errorf("vault client: VAULT_* environment: %w", vcfg.Error)
	}
	vcfg.Address = cfg.Address
	vcfg.MaxRetries = 0
	// Clones keep the headers, and so the namespace.
	vcfg.CloneHeaders = true
	if err := vcfg.ConfigureTLS(&vaultapi.TLSConfig{
		CACert:        cfg.CAFile,
		ClientCert:    cfg.ClientCertFile,
		ClientKey:     cfg.ClientKeyFile,
		TLSServerName: cfg.TLSServerName,
	}); err != nil {
		return nil, fmt.Errorf("vault client: TLS (caFile %q, clientCertFile %q, clientKeyFile %q): %w",
			cfg.CAFile, cfg.ClientCertFile, cfg.ClientKeyFile, err)
	}
	if t, ok := vcfg.HttpClient.Transport.(*http.Transport); ok && cfg.CAFile != "" && t.TLSClientConfig != nil {
		// DefaultConfig applied VAULT_SKIP_VERIFY already, and
		// ConfigureTLS only ever turns verification off: a CA given in
		// the configuration is there to verify with, whatever the
		// environment says.
		t.TLSClientConfig.InsecureSkipVerify = false
	}
	vcfg.Timeout = cfg.Timeout
	if vcfg.Timeout <= 0 {
		vcfg.Timeout = 10 * time.Second
	}
	if t, ok := vcfg.HttpClient.Transport.(*http.Transport); ok && cfg.Concurrency > 0 {
		t.MaxIdleConnsPerHost = cfg.Concurrency
	}
	vc, err := vaultapi.NewClient(vcfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	vc.ClearToken()
	if cfg.Namespace != "" {
		vc.SetNamespace(cfg.Namespace)
	}
	return vc, nil
}

// VaultTransportRisks reports what is unsafe in how vc reaches Vault:
// plaintext, an http:// address (every identity's Vault token and
// credentials cross the network unencrypted); unverified, an https://
// address whose certificate is not verified (VAULT_SKIP_VERIFY without a CA
// in the configuration).
func VaultTransportRisks(vc *vaultapi.Client) (plaintext, unverified bool) {
	u, err := url.Parse(vc.Address())
	if err != nil {
		return false, false
	}
	switch strings.ToLower(u.Scheme) {
	case "http":
		return true, false
	case "https":
		t, ok := vc.CloneConfig().HttpClient.Transport.(*http.Transport)
		return false, ok && t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify
	}
	return false, false
}

// vaultClient is vault over vault/api, with a counter of calls by operation
// and result. It needs no bound of its own on concurrent calls: every call
// is made by a run of the executor, whose workers are the bound.
type vaultClient struct {
	base      *vaultapi.Client
	authMount string
	role      string
	calls     callCounter
	// tracer makes a span per call (a no-op one in tests that leave it).
	tracer trace.Tracer
}

// callCounter counts one Vault call by operation and result.
type callCounter func(op, result string)

var _ vault = (*vaultClient)(nil)

// with runs f with a clone of the base client carrying token and counts
// the call. Its span (vault.<op>, a child of ctx's) names the operation,
// the path (never a token or a lease id) and the identity and route of
// ctx's scope.
func (c *vaultClient) with(ctx context.Context, op, path, token string, f func(context.Context, *vaultapi.Client) error) (err error) {
	tracer := c.tracer
	if tracer == nil {
		tracer = noop.Tracer{}
	}
	ctx, span := tracer.Start(ctx, SpanVaultPrefix+op, trace.WithSpanKind(trace.SpanKindClient))
	if span.IsRecording() {
		attrs := []attribute.KeyValue{attrVaultOp.String(op)}
		if path != "" {
			attrs = append(attrs, attrVaultPath.String(path))
		}
		span.SetAttributes(scopeAttrs(ctx, attrs)...)
	}
	defer func() { endSpan(span, resultOf(err)) }()
	vc, err := c.base.Clone()
	if err != nil {
		return fmt.Errorf("vault client: %w", err)
	}
	vc.SetToken(token)
	err = f(ctx, vc)
	c.calls(op, resultOf(err))
	return err
}

func (c *vaultClient) Login(ctx context.Context, jwt string) (vaultLogin, error) {
	var l vaultLogin
	path := "auth/" + c.authMount + "/login"
	err := c.with(ctx, "login", path, "", func(ctx context.Context, vc *vaultapi.Client) error {
		s, err := vc.Logical().WriteWithContext(ctx, path, map[string]any{"role": c.role, "jwt": jwt})
		if err != nil {
			err = fromVault(err)
			if errors.Is(err, errForbidden) || errors.Is(err, errNotFound) {
				return authz.Deny(authz.ReasonVaultDenied, fmt.Errorf("login refused: %w", err))
			}
			return err
		}
		if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
			return authz.Deny(authz.ReasonVaultUnavailable, errors.New("login returned no token"))
		}
		l = vaultLogin{Token: s.Auth.ClientToken, TTL: time.Duration(s.Auth.LeaseDuration) * time.Second, Renewable: s.Auth.Renewable}
		return nil
	})
	return l, err
}

func (c *vaultClient) RenewSelf(ctx context.Context, token string) (time.Duration, error) {
	var ttl time.Duration
	err := c.with(ctx, "renew", "auth/token/renew-self", token, func(ctx context.Context, vc *vaultapi.Client) error {
		s, err := vc.Auth().Token().RenewSelfWithContext(ctx, 0)
		if err != nil {
			return fromVault(err)
		}
		if s == nil || s.Auth == nil {
			return authz.Deny(authz.ReasonVaultUnavailable, errors.New("renew returned no auth"))
		}
		ttl = time.Duration(s.Auth.LeaseDuration) * time.Second
		return nil
	})
	return ttl, err
}

func (c *vaultClient) Read(ctx context.Context, token, path string) (*vaultapi.Secret, error) {
	var s *vaultapi.Secret
	err := c.with(ctx, "read", path, token, func(ctx context.Context, vc *vaultapi.Client) error {
		var err error
		s, err = vc.Logical().ReadWithContext(ctx, path)
		if err != nil {
			return fromVault(err)
		}
		if s == nil {
			return errNotFound
		}
		return nil
	})
	return s, err
}

func (c *vaultClient) RevokeSelf(ctx context.Context, token string) error {
	return c.with(ctx, "revoke", "auth/token/revoke-self", token, func(ctx context.Context, vc *vaultapi.Client) error {
		if err := vc.Auth().Token().RevokeSelfWithContext(ctx, ""); err != nil {
			return fromVault(err)
		}
		return nil
	})
}

func (c *vaultClient) RenewLease(ctx context.Context, token, leaseID string, increment time.Duration) (time.Duration, error) {
	var ttl time.Duration
	err := c.with(ctx, "renew_lease", "sys/leases/renew", token, func(ctx context.Context, vc *vaultapi.Client) error {
		s, err := vc.Sys().RenewWithContext(ctx, leaseID, int(increment/time.Second))
		if err != nil {
			return fromVault(err)
		}
		if s == nil {
			return authz.Deny(authz.ReasonVaultUnavailable, errors.New("lease renew returned nothing"))
		}
		ttl = time.Duration(s.LeaseDuration) * time.Second
		return nil
	})
	return ttl, err
}

func (c *vaultClient) RevokeLease(ctx context.Context, token, leaseID string) error {
	return c.with(ctx, "revoke_lease", "sys/leases/revoke", token, func(ctx context.Context, vc *vaultapi.Client) error {
		// Not Sys().Revoke, which sends the id in the body of
		// sys/leases/revoke: a policy could then only allow revoking
		// every lease, or none.
		if _, err := vc.Logical().WriteWithContext(ctx, "sys/leases/revoke/"+leaseID, nil); err != nil {
			return fromVault(err)
		}
		return nil
	})
}

// fromVault translates a Vault API error into the watcher's errors (what
// the call answered; classify, in refresh.go, decides what that means).
func fromVault(err error) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusForbidden, http.StatusUnauthorized, http.StatusBadRequest:
			return fmt.Errorf("%w: status %d", errForbidden, re.StatusCode)
		case http.StatusNotFound:
			return errNotFound
		}
		return authz.Denyf(authz.ReasonVaultUnavailable, "status %d", re.StatusCode)
	}
	return authz.Deny(authz.ReasonVaultUnavailable, err)
}

// resultOf is a call's result label: ok, denied, not_found or error.
func resultOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errForbidden), errors.Is(err, authz.ErrVaultDenied):
		return "denied"
	case errors.Is(err, errNotFound):
		return "not_found"
	default:
		return "error"
	}
}
