package watcher

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"k8s.io/utils/clock"

	"github.com/credinject/credinject/authz"
)

// ClientAuth is how the client authenticates to the token endpoint.
type ClientAuth string

// The client authentication methods of RFC 6749 §2.3.1.
const (
	// ClientAuthBasic: HTTP Basic with client_id and client_secret
	// (client_secret_basic, the default).
	ClientAuthBasic ClientAuth = "basic"
	// ClientAuthPost: client_id and client_secret in the form body
	// (client_secret_post).
	ClientAuthPost ClientAuth = "post"
)

// oauth2Provider obtains an OAuth2 access token with the client credentials
// grant (RFC 6749 §4.4) for the identity's own client: its KV v2 secret at
// the route's path holds client_id, client_secret and, optionally, scope
// (space-separated, replacing the route's scopes) and audience. The client
// secret is used for the token request only: the inject template sees
// access_token and token_type, never the secret. The loop asks for a new
// token before the old one expires.
type oauth2Provider struct {
	kv     kvProvider
	client *http.Client
	clock  clock.PassiveClock
	calls  func(result string)
	tracer trace.Tracer // nil: no spans
}

var _ Provider = oauth2Provider{}

func (p oauth2Provider) Fetch(ctx context.Context, f Fetch) (Credential, error) {
	id, rt := f.Identity, f.Route
	sec, err := p.kv.Fetch(ctx, f)
	if err != nil {
		return Credential{}, err
	}
	cc, err := clientConfig(sec.Data, rt)
	if err != nil {
		return Credential{}, err
	}
	now := p.clock.Now()
	tok, err := p.token(ctx, cc, id, rt)
	if err != nil {
		return Credential{}, err
	}
	if tok.AccessToken == "" {
		return Credential{}, authz.Deny(authz.ReasonTokenEndpointUnavailable, errors.New("token endpoint returned no access token"))
	}
	data := map[string]any{"access_token": tok.AccessToken, "token_type": tok.TokenType}
	// The library dates expires_in on the wall clock; carry what is left
	// over to the watcher's clock.
	var expires time.Time
	if !tok.Expiry.IsZero() {
		expires = now.Add(time.Until(tok.Expiry))
	}
	return Credential{Data: data, Version: sec.Version, Expires: expires}, nil
}

// token asks the token endpoint, in a span (SpanTokenEndpoint) with the
// identity, the route, the endpoint's host and the result (ok, refused,
// error), and counts the call.
func (p oauth2Provider) token(ctx context.Context, cc *clientcredentials.Config, id authz.Identity, rt Route) (*oauth2.Token, error) {
	tracer := p.tracer
	if tracer == nil {
		tracer = noop.Tracer{}
	}
	ctx, span := tracer.Start(ctx, SpanTokenEndpoint, trace.WithSpanKind(trace.SpanKindClient))
	if span.IsRecording() {
		span.SetAttributes(attrIdentity.String(id.Key()), attrRoute.String(rt.Name), attrServerAddr.String(hostOf(rt.TokenURL)))
	}
	tok, err := cc.Token(context.WithValue(ctx, oauth2.HTTPClient, p.client))
	if err != nil {
		err = classifyTokenError(err)
		p.calls(resultOfToken(err))
		endSpan(span, resultOfToken(err))
		return nil, err
	}
	p.calls("ok")
	endSpan(span, "ok")
	return tok, nil
}

// clientConfig builds the client credentials request from the identity's
// secret and the route.
func clientConfig(data map[string]any, rt Route) (*clientcredentials.Config, error) {
	str := func(k string) string { s, _ := data[k].(string); return s }
	cc := &clientcredentials.Config{
		ClientID: str("client_id"), ClientSecret: str("client_secret"),
		TokenURL: rt.TokenURL, Scopes: rt.Scopes, AuthStyle: oauth2.AuthStyleInHeader,
	}
	if cc.ClientID == "" || cc.ClientSecret == "" {
		return nil, authz.Deny(authz.ReasonInvalidCredential, errors.New("the secret needs client_id and client_secret"))
	}
	if rt.ClientAuth == ClientAuthPost {
		cc.AuthStyle = oauth2.AuthStyleInParams
	}
	if s := str("scope"); s != "" {
		cc.Scopes = strings.Fields(s)
	}
	if a := str("audience"); a != "" {
		cc.EndpointParams = url.Values{"audience": {a}}
	}
	return cc, nil
}

// classifyTokenError: the endpoint's 4xx answers (invalid_client,
// unauthorized_client, invalid_scope…) refuse the client; anything else
// (5xx, 429, no answer) is an outage. The error text is the endpoint's, which
// never contains the client secret.
func classifyTokenError(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		code := re.Response.StatusCode
		if code >= 400 && code < 500 && code != http.StatusTooManyRequests && code != http.StatusRequestTimeout {
			return authz.Denyf(authz.ReasonTokenEndpointRefused, "token endpoint: status %d %s", code, re.ErrorCode)
		}
		return authz.Denyf(authz.ReasonTokenEndpointUnavailable, "token endpoint: status %d", code)
	}
	return authz.Deny(authz.ReasonTokenEndpointUnavailable, fmt.Errorf("token endpoint: %w", err))
}

func resultOfToken(err error) string {
	if errors.Is(err, authz.ErrTokenEndpointRefused) {
		return "refused"
	}
	return "error"
}
