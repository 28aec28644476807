package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
)

// identityTokenProvider mints a JWT for the identity's own Vault entity with
// Vault's identity secrets engine (a read of identity/oidc/token/<role>, as
// the identity): the token names the entity, and Vault signs it with the
// role's key, which APIs that accept OIDC federation verify at
// identity/oidc/.well-known/keys. The response's fields (token, client_id,
// ttl) are the inject template's; the loop mints anew before the token's
// ttl runs out.
type identityTokenProvider struct {
	vault vault
	clock clock.PassiveClock
}

var _ Provider = identityTokenProvider{}

func (p identityTokenProvider) Fetch(ctx context.Context, f Fetch) (Credential, error) {
	now := p.clock.Now()
	path := authz.ExpandPath(f.Route.Path, f.Identity)
	s, err := readAs(ctx, p.vault, f.Tokens, path)
	if err != nil {
		return Credential{}, err
	}
	if tok, _ := s.Data["token"].(string); tok == "" {
		return Credential{}, authz.Denyf(authz.ReasonInvalidCredential, "%s: no token in the response", path)
	}
	ttl, err := seconds(s.Data["ttl"])
	if err != nil || ttl <= 0 {
		return Credential{}, authz.Denyf(authz.ReasonInvalidCredential, "%s: ttl: %v", path, err)
	}
	return Credential{Data: s.Data, Expires: now.Add(ttl)}, nil
}

// seconds reads a JSON number of seconds.
func seconds(v any) (time.Duration, error) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return time.Duration(i) * time.Second, err
	case float64:
		return time.Duration(n * float64(time.Second)), nil
	case nil:
		return 0, errors.New("missing")
	default:
		return 0, fmt.Errorf("not a number: %T", v)
	}
}
