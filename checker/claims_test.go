package checker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/internal/satoken"
)

const (
	testIssuer = "https://issuer.test"
	testAud    = "https://kubernetes.default.svc.cluster.local"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// claimsAt is a valid pod-bound token's claims issued at iat, for an hour.
func claimsAt(iat time.Time) *saClaims {
	return &saClaims{
		Claims: jwt.Claims{
			Issuer: testIssuer, Subject: "system:serviceaccount:ns:sa", Audience: jwt.Audience{testAud},
			IssuedAt: jwt.NewNumericDate(iat), NotBefore: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(iat.Add(time.Hour)),
		},
		K8s: &KubernetesInfo{
			Namespace: "ns", ServiceAccount: ObjectRef{Name: "sa", UID: "sa-uid"},
			Pod: &ObjectRef{Name: "p", UID: "pod-uid"}, Node: &ObjectRef{Name: "n1", UID: "node-uid"},
		},
	}
}

func TestCheckClaims(t *testing.T) {
	want := expected{Issuer: testIssuer, Audiences: []string{testAud}}
	cases := map[string]struct {
		edit   func(c *saClaims)
		now    time.Time
		reason authz.Reason
	}{
		"valid":                           {now: t0},
		"exp just past, within skew":      {now: t0.Add(time.Hour + 59*time.Second)},
		"exp past the skew":               {now: t0.Add(time.Hour + 61*time.Second), reason: authz.ReasonInvalidToken},
		"iat/nbf ahead, within skew":      {now: t0.Add(-59 * time.Second)},
		"nbf in the future beyond skew":   {now: t0.Add(-61 * time.Second), edit: func(c *saClaims) { c.IssuedAt = nil }, reason: authz.ReasonInvalidToken},
		"iat in the future beyond skew":   {now: t0.Add(-61 * time.Second), edit: func(c *saClaims) { c.NotBefore = nil }, reason: authz.ReasonInvalidToken},
		"missing exp":                     {now: t0, edit: func(c *saClaims) { c.Expiry = nil }, reason: authz.ReasonInvalidToken},
		"legacy issuer":                   {now: t0, edit: func(c *saClaims) { c.Issuer = LegacyIssuer }, reason: authz.ReasonInvalidToken},
		"wrong issuer":                    {now: t0, edit: func(c *saClaims) { c.Issuer = "https://evil.example" }, reason: authz.ReasonInvalidToken},
		"wrong audience":                  {now: t0, edit: func(c *saClaims) { c.Audience = jwt.Audience{"vault"} }, reason: authz.ReasonInvalidToken},
		"one of several audiences":        {now: t0, edit: func(c *saClaims) { c.Audience = jwt.Audience{"vault", testAud} }},
		"subject not a service account":   {now: t0, edit: func(c *saClaims) { c.Subject = "system:node:n1" }, reason: authz.ReasonInvalidToken},
		"no kubernetes.io claims":         {now: t0, edit: func(c *saClaims) { c.K8s = nil }, reason: authz.ReasonInvalidToken},
		"kubernetes.io namespace differs": {now: t0, edit: func(c *saClaims) { c.K8s.Namespace = "other" }, reason: authz.ReasonInvalidToken},
		"service account uid missing":     {now: t0, edit: func(c *saClaims) { c.K8s.ServiceAccount.UID = "" }, reason: authz.ReasonInvalidToken},
		"pod without uid":                 {now: t0, edit: func(c *saClaims) { c.K8s.Pod.UID = "" }, reason: authz.ReasonInvalidToken},
		"secret without name":             {now: t0, edit: func(c *saClaims) { c.K8s.Secret = &ObjectRef{UID: "x"} }, reason: authz.ReasonInvalidToken},
		"unbound":                         {now: t0, edit: func(c *saClaims) { c.K8s.Pod, c.K8s.Node = nil, nil }},
		"pod-bound, node without uid":     {now: t0, edit: func(c *saClaims) { c.K8s.Node.UID = "" }},
		"node-bound without uid":          {now: t0, edit: func(c *saClaims) { c.K8s.Pod, c.K8s.Node.UID = nil, "" }, reason: authz.ReasonInvalidToken},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := claimsAt(t0)
			if tc.edit != nil {
				tc.edit(c)
			}
			ti, err := checkClaims(c, want, tc.now)
			if r := authz.ReasonOf(err); r != tc.reason {
				t.Fatalf("reason %q (%v), want %q", r, err, tc.reason)
			}
			if err == nil && (ti.Identity.Key() != "ns/sa" || ti.UID != "sa-uid" || !ti.Expires.Equal(t0.Add(time.Hour))) {
				t.Fatalf("token info %+v", ti)
			}
		})
	}
	t.Run("bound references", func(t *testing.T) {
		c := claimsAt(t0)
		c.K8s.Secret = &ObjectRef{Name: "s", UID: "secret-uid"}
		ti, err := checkClaims(c, want, t0)
		if err != nil {
			t.Fatal(err)
		}
		wantRefs := []BoundRef{{BoundPod, "ns/p", "pod-uid"}, {BoundSecret, "ns/s", "secret-uid"}}
		if !slices.Equal(ti.Bound, wantRefs) {
			t.Fatalf("bound %+v, want %+v", ti.Bound, wantRefs)
		}
		c.K8s.Pod, c.K8s.Secret = nil, nil
		if ti, err = checkClaims(c, want, t0); err != nil || !slices.Equal(ti.Bound, []BoundRef{{BoundNode, "n1", "node-uid"}}) {
			t.Fatalf("node-bound: %+v, %v", ti.Bound, err)
		}
	})
}

// TestJWKSValidatorTime drives the signed path with a fake clock: a token
// from an issuer whose clock runs ahead becomes valid within the skew, and
// an expired one stays refused.
func TestJWKSValidatorTime(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	iss, err := satoken.New(testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewJWKSValidator(context.Background(), JWKSConfig{Issuer: testIssuer, Audiences: []string{testAud}, Keys: iss.JWKS(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ahead, err := iss.Mint(satoken.Token{Namespace: "ns", ServiceAccount: "sa", UID: "u", Audiences: []string{testAud}, IssuedAt: t0.Add(2 * time.Minute), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Validate(context.Background(), ahead); authz.ReasonOf(err) != authz.ReasonInvalidToken {
		t.Fatalf("nbf 2 min ahead: %v", err)
	}
	clk.Step(61 * time.Second)
	if _, err := v.Validate(context.Background(), ahead); err != nil {
		t.Fatalf("nbf 59 s ahead: %v", err)
	}
	clk.Step(time.Hour + 2*time.Minute)
	if _, err := v.Validate(context.Background(), ahead); authz.ReasonOf(err) != authz.ReasonInvalidToken {
		t.Fatalf("expired: %v", err)
	}
}
