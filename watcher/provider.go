package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/credinject/credinject/authz"
)

// Source names how a route's credential is obtained (routes[].source).
type Source string

// The sources. Extend, never rename: they are configuration values and the
// metrics' source label.
const (
	// SourceKV reads a KV v2 secret (the default).
	SourceKV Source = "kv"
	// SourceVaultRead reads any Vault path and keeps the response's lease:
	// renewed, re-read before its max TTL, revoked when replaced.
	SourceVaultRead Source = "vault-read"
	// SourceOAuth2 obtains an OAuth2 access token with the client
	// credentials grant, the client's id and secret read from KV v2.
	SourceOAuth2 Source = "oauth2-client-credentials"
	// SourceIdentityToken mints a JWT for the identity's own Vault entity
	// (identity/oidc/token/<role>).
	SourceIdentityToken Source = "vault-identity-token"
)

// Sources lists every source.
var Sources = []Source{SourceKV, SourceVaultRead, SourceOAuth2, SourceIdentityToken}

// Provider obtains one kind of credential for an identity: how the
// credential of (route, identity) is read or minted. The executor's run for
// the identity is its only caller, so two Fetches of one (identity, route)
// never overlap.
//
// Fetch returns the credential's fields, or an *authz.Error:
// authz.ErrVaultDenied (Vault refused the identity), authz.ErrNoCredential
// (nothing to read), authz.ErrVaultUnavailable (try again later),
// authz.ErrTokenEndpointRefused / ErrTokenEndpointUnavailable (an OAuth2
// token endpoint refused the client / could not be asked).
type Provider interface {
	Fetch(ctx context.Context, f Fetch) (Credential, error)
}

// Fetch is one request to a Provider.
type Fetch struct {
	// Tokens hands out the identity's own Vault token (its session).
	Tokens   TokenSource
	Identity authz.Identity
	Route    Route
	// Anew: obtain a new value instead of extending the one held (a lease
	// is read again, not renewed): an event named the identity.
	Anew bool
	// Held is what the provider keeps of (identity, route) between
	// fetches (a lease). The identity owns it; a provider that keeps
	// nothing ignores it.
	Held *Held
}

// Held is a provider's state for one (identity, route), kept in the
// identity's route state and changed only by its run.
type Held struct {
	lease *lease
}

// TokenSource hands a Provider the identity's own Vault token (a session
// satisfies it).
type TokenSource interface {
	// VaultToken returns a usable token; fresh forces a new login, after
	// Vault refused a call with the current one.
	VaultToken(ctx context.Context, fresh bool) (string, error)
}

// Credential is what a Provider obtained.
type Credential struct {
	// Data holds the fields the route's inject template reads.
	Data map[string]any
	// Version is the source's version of the value (KV v2's version), 0
	// when the source has none.
	Version int64
	// Expires is when the value stops being valid (a lease's or a token's
	// end); zero when it does not expire. The loop refreshes it before then
	// and never serves it after.
	Expires time.Time
	// LeaseID is the Vault lease the value belongs to (vault-read), for
	// the audit trail; empty without one.
	LeaseID string
}

// kvProvider reads a KV v2 secret at mount/data/<route path>.
type kvProvider struct {
	vault vault
	mount string
}

var _ Provider = kvProvider{}

func (p kvProvider) Fetch(ctx context.Context, f Fetch) (Credential, error) {
	path := p.mount + "/data/" + authz.ExpandPath(f.Route.Path, f.Identity)
	s, err := readAs(ctx, p.vault, f.Tokens, path)
	if err != nil {
		return Credential{}, err
	}
	data, _ := s.Data["data"].(map[string]any)
	if data == nil {
		// A deleted or destroyed latest version.
		return Credential{}, authz.Deny(authz.ReasonNoCredential, errNotFound)
	}
	var version int64
	if md, ok := s.Data["metadata"].(map[string]any); ok {
		if v, ok := md["version"].(json.Number); ok {
			version, _ = v.Int64()
		}
	}
	return Credential{Data: data, Version: version}, nil
}

// readAs reads path with the identity's token. A refused read is retried
// once after a fresh login: Vault answers 403 both for a policy that no
// longer allows the path and for a token it no longer knows.
func readAs(ctx context.Context, v vault, tokens TokenSource, path string) (*vaultapi.Secret, error) {
	tok, err := tokens.VaultToken(ctx, false)
	if err != nil {
		return nil, err
	}
	s, err := v.Read(ctx, tok, path)
	if errors.Is(err, errForbidden) {
		if tok, err = tokens.VaultToken(ctx, true); err != nil {
			return nil, err
		}
		s, err = v.Read(ctx, tok, path)
		if errors.Is(err, errForbidden) {
			return nil, authz.Deny(authz.ReasonVaultDenied, fmt.Errorf("read %s: %w", path, err))
		}
	}
	switch {
	case errors.Is(err, errNotFound):
		return nil, authz.Deny(authz.ReasonNoCredential, err)
	case err != nil:
		return nil, err
	case s.Data == nil:
		return nil, authz.Deny(authz.ReasonNoCredential, errNotFound)
	}
	return s, nil
}
