package devstack

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/uuid"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/internal/config"
	"github.com/credinject/credinject/internal/satoken"
)

// Defaults of the demo.
const (
	DefaultIssuer    = "https://credinject.dev.local"
	DefaultVaultAddr = "127.0.0.1:8200"
	DefaultNATSAddr  = "127.0.0.1:4222"
	DefaultTokenTTL  = 24 * time.Hour
	AuthMount        = "jwt"
	Role             = "egress-workload"
	Policy           = "egress-read"
	KVMount          = "secret"
	// FederatedHost is a host of the demo's minted route: requests to
	// *.cloud.example get a JWT Vault's identity engine mints for the
	// workload's own entity (source vault-identity-token).
	FederatedHost = "storage.cloud.example"
	// IdentityTokenPolicy lets the demo role mint identity tokens.
	IdentityTokenPolicy = "egress-identity-token"
	// TrustDomain is the demo mesh's SPIFFE trust domain
	// (identity.peer.trustDomain).
	TrustDomain = "cluster.local"
)

// SPIFFE is the identity's mesh name, as a gateway passes it:
// spiffe://cluster.local/ns/<namespace>/sa/<serviceaccount>.
func (i Identity) SPIFFE() string {
	return "spiffe://" + TrustDomain + "/ns/" + i.Namespace + "/sa/" + i.ServiceAccount
}

// Identity is one demo workload with its token.
type Identity struct {
	Namespace, ServiceAccount string
	// Key is the api_key seeded at secret/egress/<ns>/<sa>; empty for an
	// identity Vault refuses or one whose credential is minted.
	Key string
	// Minted: the identity's credential is minted, not stored: a Vault
	// identity token on the FederatedHost route.
	Minted bool
	Token  string
}

// Bound reports whether Vault accepts the identity's logins.
func (i Identity) Bound() bool { return i.Key != "" || i.Minted }

// Name is "namespace/serviceaccount".
func (i Identity) Name() string { return i.Namespace + "/" + i.ServiceAccount }

// Identities of the demo: two with different keys, one that Vault refuses
// (its namespace is not bound to the role), one whose credential is minted.
func demoIdentities() []Identity {
	return []Identity{
		{Namespace: "egress-test", ServiceAccount: "default", Key: "sk-test-openai-key-for-egress"},
		{Namespace: "workload-b", ServiceAccount: "default", Key: "sk-different-key-for-workload-b"},
		{Namespace: "default", ServiceAccount: "default"},
		{Namespace: "federated", ServiceAccount: "default", Minted: true},
	}
}

// Options configure Start. Zero values take the defaults.
type Options struct {
	// DataDir keeps Vault's storage between runs (required).
	DataDir string
	// VaultAddr and NATSAddr are host:port; port 0 picks a free one.
	VaultAddr, NATSAddr string
	// VaultBin is the vaultdev binary; empty: VaultBinary (build on first use).
	VaultBin string
	// Issuer is the "iss" of the dev tokens; Audiences their "aud".
	Issuer    string
	Audiences []string
	// TokenTTL is how long the printed tokens stay valid.
	TokenTTL time.Duration
	// Progress receives what happens while starting (the Vault build).
	Progress io.Writer
}

// Stack is the running Vault, NATS and dev issuer, configured and seeded.
type Stack struct {
	VaultAddr string
	NATSURL   string
	DataDir   string
	Issuer    *satoken.Issuer
	Audiences []string
	// Identities hold the demo tokens, valid until Expires.
	Identities []Identity
	Expires    time.Time

	vault   *Vault
	nats    *NATS
	lock    *os.File
	stopped sync.Once
}

// Start brings up Vault (building vaultdev on first use) and NATS, generates
// the issuer key, configures Vault's JWT auth and seeds the credentials. Stop
// undoes it.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.DataDir == "" {
		return nil, errors.New("devstack: DataDir is required")
	}
	if opts.VaultAddr == "" {
		opts.VaultAddr = DefaultVaultAddr
	}
	if opts.NATSAddr == "" {
		opts.NATSAddr = DefaultNATSAddr
	}
	if opts.Issuer == "" {
		opts.Issuer = DefaultIssuer
	}
	if len(opts.Audiences) == 0 {
		opts.Audiences = config.Default().Kubernetes.Audiences
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	s := &Stack{DataDir: opts.DataDir, Audiences: slices.Clone(opts.Audiences)}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: %w", err)
	}
	if s.lock, err = lockDir(opts.DataDir); err != nil {
		return nil, err
	}

	bin := opts.VaultBin
	if bin == "" {
		if bin, err = VaultBinary(ctx, opts.Progress); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(opts.Progress, "vault: starting on %s (data in %s)\n", opts.VaultAddr, filepath.Join(opts.DataDir, "vault"))
	if s.vault, err = StartVault(ctx, VaultOptions{Bin: bin, Addr: opts.VaultAddr, DataDir: filepath.Join(opts.DataDir, "vault")}); err != nil {
		return nil, err
	}
	s.VaultAddr = s.vault.Addr
	if s.nats, err = StartNATS(opts.NATSAddr); err != nil {
		return nil, err
	}
	s.NATSURL = s.nats.URL

	// RSA, like a cluster's service-account signing key. A fresh key per
	// start: tokens of an earlier run stop working, the printed ones work.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("devstack: issuer key: %w", err)
	}
	kid := uuid.NewString()
	if s.Issuer, err = satoken.FromKey(opts.Issuer, kid, key, jose.RS256); err != nil {
		return nil, err
	}

	s.Identities = demoIdentities()
	var bound []string
	for _, id := range s.Identities {
		if id.Bound() {
			bound = append(bound, id.Namespace)
		}
	}
	if err := ConfigureIdentityTokens(ctx, s.vault.Client, IdentityTokenPolicy); err != nil {
		return nil, err
	}
	if err := ConfigureJWTAuth(ctx, s.vault.Client, JWTAuth{
		Mount: AuthMount, Role: Role, Policy: Policy, ExtraPolicies: []string{IdentityTokenPolicy},
		Issuer: opts.Issuer, PublicKey: s.Issuer.PublicKey(), Audiences: s.Audiences,
		Namespaces: bound, TTL: "1h",
	}); err != nil {
		return nil, err
	}
	now := time.Now()
	s.Expires = now.Add(opts.TokenTTL)
	for i := range s.Identities {
		id := &s.Identities[i]
		if id.Key != "" {
			if err := Seed(ctx, s.vault.Client, KVMount, "egress/"+id.Name(), map[string]any{"api_key": id.Key}); err != nil {
				return nil, err
			}
		}
		id.Token, err = s.Issuer.Mint(satoken.Token{
			Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, UID: uuid.NewString(),
			Audiences: s.Audiences, IssuedAt: now, TTL: opts.TokenTTL,
		})
		if err != nil {
			return nil, fmt.Errorf("devstack: token for %s: %w", id.Name(), err)
		}
	}
	return s, nil
}

// Config is credinject's configuration for the stack: jwks validation with
// the issuer's fixed key set (pass JWKS() as app.Options.JWKS with
// NoKubernetes), Vault JWT auth, rotation events from NATS, and identities
// from tokens, then from mesh peers, with loopback trusted as the gateway
// that vouches for them (pass Minter() as app.Options.Minter).
func (s *Stack) Config(grpcAddr, httpAddr string) config.Config {
	c := config.Default()
	c.Listen = config.Listen{GRPC: grpcAddr, HTTP: httpAddr}
	c.Kubernetes.TokenValidation = "jwks"
	c.Kubernetes.Issuer = s.Issuer.URL
	c.Kubernetes.Audiences = slices.Clone(s.Audiences)
	c.Vault.Address = s.VaultAddr
	c.Vault.AuthMethod = "jwt"
	c.Vault.AuthMount = AuthMount
	c.Vault.Role = Role
	c.Vault.KVMount = KVMount
	c.Events.NatsURL = s.NATSURL
	// Loopback is the demo's gateway: its x-forwarded-client-cert,
	// source.principal and forwarded host headers are believed.
	c.Listen.TrustedProxies = []string{"127.0.0.1", "::1"}
	c.Identity.Sources = []string{config.IdentitySourceToken, config.IdentitySourcePeer}
	c.Identity.Peer.TrustDomain = TrustDomain
	c.Routes = []config.Route{{
		Name: "federated", Hosts: []string{"*.cloud.example"}, Source: config.SourceIdentityToken,
		Path: "identity/oidc/token/egress_{namespace}",
	}}
	return c
}

// Minter mints the tokens credinject logs in to Vault with for a mesh
// peer, as TokenRequest does in a cluster: signed by the dev issuer, for
// the stack's audiences, valid an hour.
func (s *Stack) Minter() Minter { return Minter{iss: s.Issuer, auds: s.Audiences} }

// Minter is the dev stack's TokenRequest (watcher.TokenMinter).
type Minter struct {
	iss  *satoken.Issuer
	auds []string
}

// Token mints a token for id.
func (m Minter) Token(_ context.Context, id authz.Identity) (string, time.Time, error) {
	now := time.Now()
	t, err := m.iss.Mint(satoken.Token{Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, UID: uuid.NewString(),
		Audiences: m.auds, IssuedAt: now, TTL: time.Hour})
	return t, now.Add(time.Hour), err
}

// JWKS is the issuer's public key set.
func (s *Stack) JWKS() *jose.JSONWebKeySet { return s.Issuer.JWKS() }

// VaultLog is the path of Vault's log file.
func (s *Stack) VaultLog() string { return s.vault.LogPath() }

// VaultDone is closed if Vault exits.
func (s *Stack) VaultDone() <-chan struct{} { return s.vault.Done() }

// Stop stops NATS and Vault and releases the data folder.
func (s *Stack) Stop() {
	s.stopped.Do(func() {
		if s.nats != nil {
			s.nats.Stop()
		}
		if s.vault != nil {
			s.vault.Stop()
		}
		if s.lock != nil {
			_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
			s.lock.Close()
		}
	})
}

// lockDir keeps two dev stacks off the same Vault storage.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("devstack: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("devstack: %s is in use by another credinject dev (%w)", dir, err)
	}
	return f, nil
}
