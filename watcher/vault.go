package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors: what Vault said, in the terms the checker answers with.
var (
	// ErrDenied: Vault refused the identity (login refused, or its token may
	// not read the path).
	ErrDenied = errors.New("watcher: vault denied the identity")
	// ErrNoCredential: the identity may read its path but nothing is there.
	ErrNoCredential = errors.New("watcher: no credential at the identity's path")
	// ErrUnavailable: Vault could not be asked (network, 5xx, sealed).
	ErrUnavailable = errors.New("watcher: vault unavailable")
	// ErrNoToken: no valid service-account token to log in with.
	ErrNoToken = errors.New("watcher: no valid service-account token to log in with")
	// errForbidden: a read was refused; the Vault token may be unknown to
	// Vault (expired, revoked, lost in a restart) or the policy changed.
	errForbidden = errors.New("watcher: vault refused the read")
)

// VaultClientConfig says how to reach Vault. The client it builds carries no
// token: the watcher gives each identity's calls that identity's own.
type VaultClientConfig struct {
	// Address is Vault's URL (vault.address).
	Address string
	// Concurrency sizes the idle connection pool to the watcher's bound on
	// concurrent calls (vault.concurrency).
	Concurrency int
	// Timeout bounds one HTTP call (default 10s).
	Timeout time.Duration
}

// NewVaultClient builds the Vault API client the watcher clones per
// identity: no retries of its own (the watcher backs off), no token whatever
// VAULT_TOKEN says.
func NewVaultClient(cfg VaultClientConfig) (*vaultapi.Client, error) {
	vcfg := vaultapi.DefaultConfig()
	vcfg.Address = cfg.Address
	vcfg.MaxRetries = 0
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
	return vc, nil
}

type vaultOps struct {
	base      *vaultapi.Client
	authMount string
	role      string
	kvMount   string
	sem       chan struct{}
	calls     *prometheus.CounterVec
}

type login struct {
	token     string
	issued    time.Time
	expires   time.Time
	renewable bool
}

func (o *vaultOps) acquire(ctx context.Context) error {
	select {
	case o.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

func (o *vaultOps) release() { <-o.sem }

func (o *vaultOps) client(token string) (*vaultapi.Client, error) {
	c, err := o.base.Clone()
	if err != nil {
		return nil, err
	}
	c.SetToken(token)
	return c, nil
}

// classify maps a Vault API error to the watcher's sentinels.
func classify(err error) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == http.StatusForbidden, re.StatusCode == http.StatusUnauthorized, re.StatusCode == http.StatusBadRequest:
			return fmt.Errorf("%w: status %d", errForbidden, re.StatusCode)
		case re.StatusCode == http.StatusNotFound:
			return ErrNoCredential
		}
		return fmt.Errorf("%w: status %d", ErrUnavailable, re.StatusCode)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

func (o *vaultOps) observe(op string, err error) {
	res := "ok"
	switch {
	case err == nil:
	case errors.Is(err, errForbidden), errors.Is(err, ErrDenied):
		res = "denied"
	case errors.Is(err, ErrNoCredential):
		res = "not_found"
	default:
		res = "error"
	}
	o.calls.WithLabelValues(op, res).Inc()
}

// login logs in to Vault as the identity whose token jwt is.
func (o *vaultOps) login(ctx context.Context, now time.Time, jwt string) (login, error) {
	if err := o.acquire(ctx); err != nil {
		return login{}, err
	}
	defer o.release()
	c, err := o.client("")
	if err != nil {
		return login{}, err
	}
	s, err := c.Logical().WriteWithContext(ctx, "auth/"+o.authMount+"/login", map[string]any{"role": o.role, "jwt": jwt})
	if err != nil {
		err = classify(err)
		if errors.Is(err, errForbidden) || errors.Is(err, ErrNoCredential) {
			err = fmt.Errorf("%w: login refused", ErrDenied)
		}
		o.observe("login", err)
		return login{}, err
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		err := fmt.Errorf("%w: login returned no token", ErrUnavailable)
		o.observe("login", err)
		return login{}, err
	}
	o.observe("login", nil)
	return login{
		token:     s.Auth.ClientToken,
		issued:    now,
		expires:   now.Add(time.Duration(s.Auth.LeaseDuration) * time.Second),
		renewable: s.Auth.Renewable,
	}, nil
}

// renew extends the Vault token's lease.
func (o *vaultOps) renew(ctx context.Context, now time.Time, token string) (time.Time, error) {
	if err := o.acquire(ctx); err != nil {
		return time.Time{}, err
	}
	defer o.release()
	c, err := o.client(token)
	if err != nil {
		return time.Time{}, err
	}
	s, err := c.Auth().Token().RenewSelfWithContext(ctx, 0)
	if err != nil {
		err = classify(err)
		o.observe("renew", err)
		return time.Time{}, err
	}
	o.observe("renew", nil)
	if s == nil || s.Auth == nil {
		return time.Time{}, fmt.Errorf("%w: renew returned no auth", ErrUnavailable)
	}
	return now.Add(time.Duration(s.Auth.LeaseDuration) * time.Second), nil
}

// secret is one KV v2 read.
type secret struct {
	data    map[string]any
	version int64
}

// read reads kvMount/data/path with the identity's Vault token.
func (o *vaultOps) read(ctx context.Context, token, path string) (secret, error) {
	if err := o.acquire(ctx); err != nil {
		return secret{}, err
	}
	defer o.release()
	c, err := o.client(token)
	if err != nil {
		return secret{}, err
	}
	s, err := c.Logical().ReadWithContext(ctx, o.kvMount+"/data/"+path)
	if err != nil {
		err = classify(err)
		o.observe("read", err)
		return secret{}, err
	}
	if s == nil || s.Data == nil {
		o.observe("read", ErrNoCredential)
		return secret{}, ErrNoCredential
	}
	data, _ := s.Data["data"].(map[string]any)
	if data == nil {
		// A deleted or destroyed latest version.
		o.observe("read", ErrNoCredential)
		return secret{}, ErrNoCredential
	}
	var version int64
	if md, ok := s.Data["metadata"].(map[string]any); ok {
		if v, ok := md["version"].(json.Number); ok {
			version, _ = v.Int64()
		}
	}
	o.observe("read", nil)
	return secret{data: data, version: version}, nil
}

// isRetryable: Vault or the API server could not be asked; try again later.
func isRetryable(err error) bool { return errors.Is(err, ErrUnavailable) }

// revoke revokes a superseded Vault token, best effort.
func (o *vaultOps) revoke(ctx context.Context, token string) {
	if err := o.acquire(ctx); err != nil {
		return
	}
	defer o.release()
	c, err := o.client(token)
	if err != nil {
		return
	}
	err = c.Auth().Token().RevokeSelfWithContext(ctx, "")
	if err != nil {
		err = classify(err)
	}
	o.observe("revoke", err)
}
