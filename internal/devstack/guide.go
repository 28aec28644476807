package devstack

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Guide is what `credinject dev` prints once everything serves: where things
// listen, the tokens, and commands to paste with what each should answer.
type Guide struct {
	Stack              *Stack
	GRPCAddr, HTTPAddr string
	// Command runs credinject ("credinject", or "go run ./cmd/credinject").
	Command string
}

// TokenVar is the shell variable the guide exports id's token in.
func TokenVar(id Identity) string {
	v := "TOKEN_" + id.Namespace
	if id.ServiceAccount != "default" {
		v += "_" + id.ServiceAccount
	}
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(v))
}

// CheckRequestJSON is an ext_authz CheckRequest (protojson) for a request to
// api.openai.com carrying authorization, the body the guide gives grpcurl.
func CheckRequestJSON(authorization string) string {
	req := map[string]any{"attributes": map[string]any{"request": map[string]any{"http": map[string]any{
		"method": "GET", "host": "api.openai.com", "path": "/v1/models",
		"headers": map[string]string{"authorization": authorization},
	}}}}
	b, _ := json.Marshal(req)
	return string(b)
}

// PeerCheckRequestJSON is an ext_authz CheckRequest (protojson) for a
// request to api.openai.com carrying no authorization, from the mesh peer
// principal, as a gateway sends it (attributes.source.principal).
func PeerCheckRequestJSON(principal string) string {
	req := map[string]any{"attributes": map[string]any{
		"source":  map[string]any{"principal": principal},
		"request": map[string]any{"http": map[string]any{"method": "GET", "host": "api.openai.com", "path": "/v1/models"}},
	}}
	b, _ := json.Marshal(req)
	return string(b)
}

// XFCC is the x-forwarded-client-cert a gateway (Envoy, SANITIZE_SET with
// the URI) sets for a client presenting id's mesh certificate.
func XFCC(id Identity) string {
	return "By=spiffe://" + TrustDomain + "/ns/istio-system/sa/egress-gateway;URI=" + id.SPIFFE()
}

// Write prints the guide.
func (g Guide) Write(w io.Writer) error {
	s := g.Stack
	bw := bufio.NewWriter(w)
	p := func(format string, a ...any) { fmt.Fprintf(bw, format+"\n", a...) }
	url := "http://" + g.HTTPAddr
	p("")
	p("credinject dev: everything runs on loopback; Ctrl-C stops it all.")
	p("")
	p("  credinject  ext_authz gRPC %s, forward-auth %s/check (also /healthz /readyz /metrics)", g.GRPCAddr, url)
	p("  Vault       %s  (VAULT_TOKEN=%s; JWT auth at auth/%s, role %s; log %s)", s.VaultAddr, RootToken, AuthMount, Role, s.VaultLog())
	p("  NATS        %s  (rotation events)", s.NATSURL)
	p("  issuer      %s  (tokens valid until %s)", s.Issuer.URL, s.Expires.Local().Format(time.DateTime))
	p("")
	p("Workload tokens, shaped like Kubernetes service-account tokens (paste into another shell):")
	p("")
	var first, denied Identity
	for _, id := range s.Identities {
		if id.Minted {
			p("  # %s: its requests to *.cloud.example get authorization: Bearer <a JWT Vault mints for its own entity>", id.Name())
		} else if id.Key != "" {
			p("  # %s: its requests get authorization: Bearer %s", id.Name(), id.Key)
			if first.Token == "" {
				first = id
			}
		} else {
			p("  # %s: a valid token, but Vault refuses its namespace: 403 vault_denied", id.Name())
			denied = id
		}
		p("  export %s='%s'", TokenVar(id), id.Token)
	}
	p("")
	p("Forward-auth, as nginx auth_request, Traefik or Caddy ask it (see deploy/nginx):")
	p("")
	for _, id := range s.Identities {
		if id.Minted {
			continue
		}
		p(`  curl -si %s/check -H "Authorization: Bearer $%s"`, url, TokenVar(id))
		if id.Key != "" {
			p("    -> 200, authorization: Bearer %s", id.Key)
		} else {
			p("    -> 403, x-credinject-reason: vault_denied")
		}
	}
	p("  curl -si %s/check", url)
	p("    -> 401, www-authenticate: Bearer, x-credinject-reason: missing_token")
	for _, id := range s.Identities {
		if !id.Minted {
			continue
		}
		p("")
		p("A minted credential (route federated, source vault-identity-token): a JWT from Vault's identity engine,")
		p("for the workload's own Vault entity, refreshed before it expires:")
		p("")
		// Host: what a workload itself sends (the gateway passes it on).
		p(`  curl -si %s/check -H "Authorization: Bearer $%s" -H "Host: %s"`, url, TokenVar(id), FederatedHost)
		p("    -> 200, authorization: Bearer eyJ… (sub: the entity; keys at %s/v1/identity/oidc/.well-known/keys)", s.VaultAddr)
	}
	p("")
	p("Envoy ext_authz over gRPC (grpcurl; the server has reflection):")
	p("")
	if first.Token != "" {
		body := strings.Replace(CheckRequestJSON("Bearer TOKEN"), "TOKEN", `'"$`+TokenVar(first)+`"'`, 1)
		p("  grpcurl -plaintext -d '%s' %s envoy.service.auth.v3.Authorization/Check", body, g.GRPCAddr)
		p("    -> status {}, okResponse.headers: authorization: Bearer %s (OVERWRITE_IF_EXISTS_OR_ADD),", first.Key)
		p("       dynamicMetadata: namespace %s, serviceaccount %s", first.Namespace, first.ServiceAccount)
	}
	if denied.Token != "" {
		body := strings.Replace(CheckRequestJSON("Bearer TOKEN"), "TOKEN", `'"$`+TokenVar(denied)+`"'`, 1)
		p("  grpcurl -plaintext -d '%s' %s envoy.service.auth.v3.Authorization/Check", body, g.GRPCAddr)
		p("    -> status code 7 (PERMISSION_DENIED), deniedResponse 403, x-credinject-reason: vault_denied")
	}
	if first.Token != "" {
		p("")
		p("Mesh identity, no token: the application sends nothing; the gateway names the workload by its mTLS")
		p("certificate (identity.sources [token, peer]). The dev stack trusts loopback as its gateway")
		p("(listen.trustedProxies 127.0.0.1, ::1); from any other address these headers are ignored:")
		p("")
		p(`  curl -si %s/check -H 'x-forwarded-client-cert: %s'`, url, XFCC(first))
		p("    -> 200, authorization: Bearer %s", first.Key)
		if denied.Token != "" {
			p(`  curl -si %s/check -H 'x-forwarded-client-cert: %s'`, url, XFCC(denied))
			p("    -> 403, x-credinject-reason: vault_denied")
		}
		p("  grpcurl -plaintext -d '%s' %s envoy.service.auth.v3.Authorization/Check", PeerCheckRequestJSON(first.SPIFFE()), g.GRPCAddr)
		p("    -> status {}, okResponse.headers: authorization: Bearer %s", first.Key)
		p("")
		p("Rotate a key (writes a new version to Vault, then publishes the event; the next check has it):")
		p("")
		p("  VAULT_ADDR=%s VAULT_TOKEN=%s %s rotate --nats-url %s %s api_key=sk-rotated-1",
			s.VaultAddr, RootToken, g.Command, s.NATSURL, first.Name())
		p("    -> wrote %s/egress/%s version N, published …", KVMount, first.Name())
		p(`  curl -si %s/check -H "Authorization: Bearer $%s"`, url, TokenVar(first))
		p("    -> 200, authorization: Bearer sk-rotated-1")
		p("  (the next start of credinject dev seeds %s again)", first.Key)
	}
	p("")
	return bw.Flush()
}
