package checker_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/checker"
)

// badNames are (namespace, serviceaccount) pairs no ServiceAccount can have:
// a signed token, or an API server's answer, naming one is refused.
var badNames = map[string][2]string{
	"upper-case namespace":          {"Team-A", "app"},
	"upper-case name":               {"team-a", "App"},
	"underscore":                    {"team_a", "app"},
	"slash in name":                 {"team-a", "app/../../other"},
	"slash in namespace":            {"team-a/x", "app"},
	"NUL":                           {"team-a", "app\x00"},
	"non-ASCII namespace":           {"t\u00e9am", "app"},
	"Kelvin sign":                   {"team-a", "\u212aey"},
	"namespace over 63 bytes":       {strings.Repeat("a", 64), "app"},
	"name over 253 bytes":           {"team-a", strings.Repeat("a", 254)},
	"empty label in name":           {"team-a", "app..x"},
	"leading dash":                  {"-team", "app"},
	"trailing dot":                  {"team-a", "app."},
	"space":                         {"team a", "app"},
	"dots in namespace":             {"team.a", "app"},
	"curly placeholder in the name": {"team-a", "{serviceaccount}"},
}

func TestServiceAccountUser(t *testing.T) {
	for name, c := range map[string]struct {
		user, ns, sa string
		ok           bool
	}{
		"plain":                {"system:serviceaccount:egress-test:default", "egress-test", "default", true},
		"dotted name":          {"system:serviceaccount:ns:my.app-1", "ns", "my.app-1", true},
		"63-byte namespace":    {"system:serviceaccount:" + strings.Repeat("a", 63) + ":x", strings.Repeat("a", 63), "x", true},
		"253-byte name":        {"system:serviceaccount:ns:" + strings.Repeat("a", 253), "ns", strings.Repeat("a", 253), true},
		"colon in name":        {"system:serviceaccount:ns:sa:x", "", "", false},
		"not a serviceaccount": {"system:node:n1", "", "", false},
	} {
		t.Run(name, func(t *testing.T) {
			ns, sa, err := checker.ServiceAccountUser(c.user)
			if ns != c.ns || sa != c.sa || (err == nil) != c.ok {
				t.Fatalf("got %q %q %v", ns, sa, err)
			}
		})
	}
	for name, n := range badNames {
		t.Run(name, func(t *testing.T) {
			ns, sa, err := checker.ServiceAccountUser("system:serviceaccount:" + n[0] + ":" + n[1])
			if !errors.Is(err, checker.ErrNotServiceAccount) || ns != "" || sa != "" {
				t.Fatalf("got %q %q %v, want ErrNotServiceAccount", ns, sa, err)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("error message of %d bytes: %q", len(err.Error()), err)
			}
		})
	}
}

// reviewsFunc is a fake TokenReview API.
type reviewsFunc func(tr *authnv1.TokenReview) *authnv1.TokenReview

func (f reviewsFunc) Create(_ context.Context, tr *authnv1.TokenReview, _ metav1.CreateOptions) (*authnv1.TokenReview, error) {
	return f(tr), nil
}

// TestTokenNamesAreDNSNames: both validators refuse, 401 invalid_token, a
// token whose namespace or service account is not a Kubernetes name: the
// offline (JWKS) one on the signed claims, the TokenReview one on the API
// server's username, and the budget in front of TokenReview before it
// spends a call.
func TestTokenNamesAreDNSNames(t *testing.T) {
	r := newRig(t, nil, true)
	r.put(t, "", "team-a", "app", "authorization", "Bearer sk-a")
	if got := outcome(check(t, r, "Bearer "+r.token(t, "team-a", "app"), "h")); got != "allow authorization=Bearer sk-a" {
		t.Fatalf("a good token: %q", got)
	}
	var reviewed atomic.Int64
	user := "" // the username the fake API server vouches for
	tr, err := checker.NewTokenReviewValidator(reviewsFunc(func(in *authnv1.TokenReview) *authnv1.TokenReview {
		reviewed.Add(1)
		return &authnv1.TokenReview{Status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: in.Spec.Audiences,
			User: authnv1.UserInfo{Username: user, UID: "uid"}}}
	}), []string{aud}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	budgeted, err := checker.Budgeted(tr, checker.BudgetConfig{Rate: 100, Burst: 100, Clock: clocktesting.NewFakePassiveClock(r.clock.Now())})
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range badNames {
		t.Run(name, func(t *testing.T) {
			tok := r.token(t, n[0], n[1])
			if got := outcome(check(t, r, "Bearer "+tok, "h")); got != "deny 401 invalid_token www=Bearer" {
				t.Errorf("jwks: %q", got)
			}
			user = "system:serviceaccount:" + n[0] + ":" + n[1]
			_, err := tr.Validate(context.Background(), tok)
			if authz.ReasonOf(err) != authz.ReasonInvalidToken || !errors.Is(err, checker.ErrNotServiceAccount) {
				t.Errorf("tokenreview: %v", err)
			}
			before := reviewed.Load()
			_, err = budgeted.Validate(context.Background(), tok)
			if authz.ReasonOf(err) != authz.ReasonInvalidToken || reviewed.Load() != before {
				t.Errorf("budgeted: %v after %d TokenReviews", err, reviewed.Load()-before)
			}
		})
	}
	// The same fake vouching for a real name: the refusals above were the
	// names'.
	user = "system:serviceaccount:team-a:app"
	if ti, err := budgeted.Validate(context.Background(), r.token(t, "team-a", "app")); err != nil || ti.Identity.Key() != "team-a/app" {
		t.Fatalf("tokenreview of a good name: %v %v", ti, err)
	}
}
