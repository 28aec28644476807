package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/client-go/rest"
)

// The reference design's Kubernetes client limits. Authorino creates the
// client of its TokenReview evaluator from --kube-client-qps (default 20) and
// --kube-client-burst (default 30) (Kuadrant/authorino main.go,
// controllers.EvaluatorClientOptions); before that change it used
// rest.InClusterConfig() unchanged, i.e. client-go's own 5 QPS / burst 10.
const (
	ReferenceQPS   = 20
	ReferenceBurst = 30
)

// Deny reasons of the reference target, in its x-ext-auth-reason header
// (bounded, so the harness can count them).
const (
	refNoCredential    = "credential not found"
	refUnauthenticated = "not authenticated"
	refReviewFailed    = "tokenreview failed"
	refUnauthorized    = "Unauthorized"
)

// ReferenceConfig configures the reference target.
type ReferenceConfig struct {
	// RestConfig reaches the API server (copied; QPS and Burst are set).
	RestConfig *rest.Config
	QPS        float32
	Burst      int
	// Audiences of the TokenReview.
	Audiences []string
	// VaultAddr is Vault's base URL; Role the Kubernetes auth role.
	VaultAddr string
	AuthMount string
	Role      string
	KVMount   string
	// Timeout bounds each outbound call (Authorino's default, 5 s).
	Timeout time.Duration
}

// Reference is the reference design (shared/reference, an Authorino
// AuthPolicy) as an ext_authz server, doing for every request what that
// AuthPolicy makes Authorino do, in order and without any caching:
//
//  1. kubernetesTokenReview: a TokenReview of the bearer token for the
//     configured audience, through a client-go client with the rate limit
//     above (401 if it fails);
//  2. metadata vault_login (priority 0): POST <vault>/v1/auth/kubernetes/login
//     {"jwt": <token>, "role": "egress-workload"};
//  3. metadata vault_secret (priority 1): GET
//     <vault>/v1/secret/data/egress/<ns>/<sa> with X-Vault-Token: the login's
//     client token, ns and sa from the login's auth.metadata;
//  4. patternMatching has(vault_secret.data), else 403;
//  5. success header authorization: "Bearer " + data.data.api_key.
//
// Metadata calls that fail are skipped, as Authorino's are, so they surface
// as the 403 of step 4. The HTTP client is Authorino's: a 5 s timeout over Go's
// default transport settings (2 idle connections per host).
type Reference struct {
	authv3.UnimplementedAuthorizationServer
	cfg     ReferenceConfig
	reviews authnclient.TokenReviewInterface
	http    *http.Client
	denied  map[string]*authv3.CheckResponse
}

var _ authv3.AuthorizationServer = (*Reference)(nil)

// NewReference builds the reference target.
func NewReference(cfg ReferenceConfig) (*Reference, error) {
	if cfg.RestConfig == nil || cfg.VaultAddr == "" || cfg.Role == "" {
		return nil, errors.New("bench: reference needs RestConfig, VaultAddr and Role")
	}
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = ReferenceQPS, ReferenceBurst
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.AuthMount == "" {
		cfg.AuthMount = "kubernetes"
	}
	if cfg.KVMount == "" {
		cfg.KVMount = "secret"
	}
	cfg.Audiences = slices.Clone(cfg.Audiences)
	rc := rest.CopyConfig(cfg.RestConfig)
	rc.QPS, rc.Burst, rc.Timeout = cfg.QPS, cfg.Burst, cfg.Timeout
	rc.RateLimiter = nil
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("bench: reference kubernetes client: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	r := &Reference{
		cfg: cfg, reviews: cs.AuthenticationV1().TokenReviews(),
		http:   &http.Client{Timeout: cfg.Timeout, Transport: tr},
		denied: map[string]*authv3.CheckResponse{},
	}
	r.denied[refNoCredential] = referenceDeny(401, refNoCredential)
	r.denied[refUnauthenticated] = referenceDeny(401, refUnauthenticated)
	r.denied[refReviewFailed] = referenceDeny(401, refReviewFailed)
	r.denied[refUnauthorized] = referenceDeny(403, refUnauthorized)
	return r, nil
}

// Check does the reference design's work for one request.
func (r *Reference) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	h := req.GetAttributes().GetRequest().GetHttp()
	authz := h.GetHeaders()["authorization"]
	token, ok := strings.CutPrefix(authz, "Bearer ")
	if !ok || token == "" {
		return r.denied[refNoCredential], nil
	}
	auds := r.cfg.Audiences
	if len(auds) == 0 {
		auds = []string{h.GetHost()}
	}
	tr, err := r.reviews.Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: auds}}, metav1.CreateOptions{})
	if err != nil {
		// The rate limiter's wait ends here too when it would outlast ctx.
		return r.denied[refReviewFailed], nil
	}
	if !tr.Status.Authenticated {
		return r.denied[refUnauthenticated], nil
	}
	login, err := r.login(ctx, token)
	if err != nil {
		return r.denied[refUnauthorized], nil
	}
	key, err := r.secret(ctx, login)
	if err != nil {
		return r.denied[refUnauthorized], nil
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "authorization", Value: "Bearer " + key},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
	}, nil
}

type vaultLogin struct {
	Auth struct {
		ClientToken string `json:"client_token"`
		Metadata    struct {
			Namespace      string `json:"service_account_namespace"`
			ServiceAccount string `json:"service_account_name"`
		} `json:"metadata"`
	} `json:"auth"`
}

func (r *Reference) login(ctx context.Context, jwt string) (*vaultLogin, error) {
	// The body is built by string concatenation, as the AuthPolicy's CEL
	// expression builds it.
	body := `{"jwt": "` + jwt + `", "role": "` + r.cfg.Role + `"}`
	var out vaultLogin
	err := r.do(ctx, http.MethodPost, r.cfg.VaultAddr+"/v1/auth/"+r.cfg.AuthMount+"/login", "", strings.NewReader(body), &out)
	if err != nil {
		return nil, err
	}
	if out.Auth.ClientToken == "" || out.Auth.Metadata.Namespace == "" || out.Auth.Metadata.ServiceAccount == "" {
		return nil, errors.New("vault login: no token or identity")
	}
	return &out, nil
}

func (r *Reference) secret(ctx context.Context, l *vaultLogin) (string, error) {
	u := r.cfg.VaultAddr + "/v1/" + r.cfg.KVMount + "/data/egress/" +
		url.PathEscape(l.Auth.Metadata.Namespace) + "/" + url.PathEscape(l.Auth.Metadata.ServiceAccount)
	var out struct {
		Data *struct {
			Data map[string]any `json:"data"`
		} `json:"data"`
	}
	if err := r.do(ctx, http.MethodGet, u, l.Auth.ClientToken, nil, &out); err != nil {
		return "", err
	}
	if out.Data == nil {
		return "", errors.New("vault read: no data")
	}
	key, ok := out.Data.Data["api_key"].(string)
	if !ok {
		return "", errors.New("vault read: no api_key")
	}
	return key, nil
}

func (r *Reference) do(ctx context.Context, method, u, vaultToken string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if vaultToken != "" {
		req.Header.Set("X-Vault-Token", vaultToken)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: status %d", method, u, resp.StatusCode)
	}
	return json.Unmarshal(b, out)
}

func referenceDeny(status int, reason string) *authv3.CheckResponse {
	code := codes.PermissionDenied
	headers := []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-ext-auth-reason", Value: reason}}}
	if status == 401 {
		code = codes.Unauthenticated
		headers = append(headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "www-authenticate", Value: `Bearer realm="workload-identity"`}})
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(status)},
			Headers: headers,
		}},
	}
}
