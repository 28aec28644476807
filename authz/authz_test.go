package authz

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestScopeCovers(t *testing.T) {
	tests := map[string]struct {
		s      Scope
		ns, sa string
		want   bool
	}{
		"all":                 {Scope{}, "a", "b", true},
		"namespace match":     {Scope{Namespace: "a"}, "a", "b", true},
		"namespace mismatch":  {Scope{Namespace: "a"}, "c", "b", false},
		"identity match":      {Scope{Namespace: "a", ServiceAccount: "b"}, "a", "b", true},
		"identity other sa":   {Scope{Namespace: "a", ServiceAccount: "b"}, "a", "c", false},
		"identity other ns":   {Scope{Namespace: "a", ServiceAccount: "b"}, "x", "b", false},
		"route is not scoped": {Scope{Namespace: "a", Route: "r"}, "a", "z", true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.s.Covers(NewIdentity(tc.ns, tc.sa)); got != tc.want {
				t.Errorf("%v.Covers(%s/%s) = %v, want %v", tc.s, tc.ns, tc.sa, got, tc.want)
			}
		})
	}
	if !(Scope{}).CoversRoute("x") || !(Scope{Route: "x"}).CoversRoute("x") || (Scope{Route: "x"}).CoversRoute("y") {
		t.Error("CoversRoute")
	}
}

func TestParseIdentity(t *testing.T) {
	tests := map[string]struct {
		in   string
		want Identity
		ok   bool
	}{
		"plain":           {"team-a/billing", Identity{"team-a", "billing", "team-a/billing"}, true},
		"dotted sa":       {"ns/a.b", Identity{"ns", "a.b", "ns/a.b"}, true},
		"no slash":        {"team-a", Identity{}, false},
		"upper case":      {"Team/x", Identity{}, false},
		"empty sa":        {"ns/", Identity{}, false},
		"two slashes":     {"ns/a/b", Identity{}, false},
		"long namespace":  {strings.Repeat("a", 64) + "/x", Identity{}, false},
		"leading hyphen":  {"-ns/x", Identity{}, false},
		"empty namespace": {"/x", Identity{}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseIdentity(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseIdentity(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidIdentity) {
				t.Errorf("error %v does not wrap ErrInvalidIdentity", err)
			}
			if got != tc.want {
				t.Errorf("ParseIdentity(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestExpandPath(t *testing.T) {
	id := NewIdentity("ns", "sa")
	for in, want := range map[string]string{
		"egress/{namespace}/{serviceaccount}":               "egress/ns/sa",
		"fixed/path":                                        "fixed/path",
		"db/creds/{namespace}_{serviceaccount}_{namespace}": "db/creds/ns_sa_ns",
	} {
		if got := ExpandPath(in, id); got != want {
			t.Errorf("ExpandPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReasonStatus(t *testing.T) {
	want := map[Reason]int{
		ReasonNone: 200, ReasonMissingToken: 401, ReasonMalformedToken: 401, ReasonInvalidToken: 401,
		ReasonUnknownServiceAccount: 401, ReasonVaultDenied: 403, ReasonNoCredential: 403, ReasonNoRoute: 403,
		ReasonInvalidCredential: 403, ReasonVaultUnavailable: 503, ReasonTokenReviewUnavailable: 503,
		ReasonClientNotAllowed: 403, ReasonInternal: 500, Reason("bogus"): 500,
	}
	for r, st := range want {
		if got := r.Status(); got != st {
			t.Errorf("%q.Status() = %d, want %d", r, got, st)
		}
	}
	for _, r := range Reasons {
		if !r.Known() {
			t.Errorf("%q not Known", r)
		}
	}
	if Reason("bogus").Known() {
		t.Error("bogus reason is Known")
	}
}

func TestDenyError(t *testing.T) {
	cause := errors.New("status 403")
	err := fmt.Errorf("read: %w", Deny(ReasonVaultDenied, cause))
	if !errors.Is(err, ErrVaultDenied) {
		t.Error("errors.Is(err, ErrVaultDenied) = false")
	}
	if errors.Is(err, ErrNoCredential) {
		t.Error("errors.Is(err, ErrNoCredential) = true")
	}
	if !errors.Is(err, cause) {
		t.Error("cause lost")
	}
	var de *Error
	if !errors.As(err, &de) || de.Reason != ReasonVaultDenied {
		t.Errorf("errors.As = %v", de)
	}
	for e, want := range map[error]Reason{
		nil:                                  ReasonNone,
		err:                                  ReasonVaultDenied,
		errors.New("plain"):                  ReasonInternal,
		Deny(Reason("not_in_the_set"), nil):  ReasonInternal,
		Denyf(ReasonNoRoute, "host %q", "x"): ReasonNoRoute,
	} {
		if got := ReasonOf(e); got != want {
			t.Errorf("ReasonOf(%v) = %q, want %q", e, got, want)
		}
	}
}

func TestScopeValidate(t *testing.T) {
	for _, s := range []Scope{{}, {Namespace: "a"}, {Namespace: "a", ServiceAccount: "b.c"}, {Route: "r-1"}} {
		if err := s.Validate(); err != nil {
			t.Errorf("%v: %v", s, err)
		}
	}
	for _, s := range []Scope{{ServiceAccount: "b"}, {Namespace: "A"}, {Namespace: "a", ServiceAccount: "-"}, {Route: "R"}, {Route: strings.Repeat("r", 300)}} {
		if err := s.Validate(); !errors.Is(err, ErrInvalidScope) {
			t.Errorf("%v: Validate = %v, want ErrInvalidScope", s, err)
		}
	}
	if got := Quote(strings.Repeat("é", 100)); !strings.Contains(got, "(200 bytes)") {
		t.Errorf("Quote = %s", got)
	}
}

func TestCheckPathTemplate(t *testing.T) {
	for tmpl, wantErr := range map[string]string{
		// Accepted: every placeholder bounded by '/', an end, or a
		// character no name contains.
		"egress/{namespace}/{serviceaccount}":         "",
		"{namespace}/{serviceaccount}":                "",
		"database/creds/{namespace}_{serviceaccount}": "",
		"identity/oidc/token/egress_{namespace}":      "",
		"kv/{namespace}@{serviceaccount}:key":         "",
		"fixed/path":                                  "",
		"x/{namespace}/{namespace}":                   "",
		"x/{serviceaccount}":                          "",
		// Refused.
		"database/creds/{namespace}-{serviceaccount}": "{namespace} is followed by \"-\"",
		"identity/oidc/token/egress-{namespace}":      "{namespace} is preceded by \"-\"",
		"x/{namespace}.{serviceaccount}":              "{namespace} is followed by \".\"",
		"x/{serviceaccount}.json":                     "{serviceaccount} is followed by \".\"",
		"x/a{namespace}":                              "{namespace} is preceded by \"a\"",
		"x/{namespace}0":                              "{namespace} is followed by \"0\"",
		"x/{namespace}{serviceaccount}":               "{namespace} touches {serviceaccount}",
		"x/{serviceaccount}{namespace}/y":             "{serviceaccount} touches {namespace}",
		"x/{ns}/{serviceaccount}":                     "unknown placeholder {ns}",
		"x/{namespace/{serviceaccount}":               "'{' without its '}'",
		"x/{namespace":                                "'{' without its '}'",
		"x/namespace}":                                "'}' without its '{'",
		"x/{}":                                        "unknown placeholder {}",
	} {
		err := CheckPathTemplate(tmpl)
		switch {
		case wantErr == "" && err != nil:
			t.Errorf("CheckPathTemplate(%q) = %v, want nil", tmpl, err)
		case wantErr != "" && err == nil:
			t.Errorf("CheckPathTemplate(%q) = nil, want an error with %q", tmpl, wantErr)
		case wantErr != "" && (!errors.Is(err, ErrPathTemplate) || !strings.Contains(err.Error(), wantErr)):
			t.Errorf("CheckPathTemplate(%q) = %v, want ErrPathTemplate with %q", tmpl, err, wantErr)
		}
	}
}

// TestAcceptedTemplatesExpandOneToOne expands every accepted template for
// identities whose names use '-' and '.' at every split, and checks that no
// two identities (in one template, or across two) share a path, unless two
// templates differ only by which placeholder they use.
func TestAcceptedTemplatesExpandOneToOne(t *testing.T) {
	names := []string{"a", "b", "a-b", "b-a", "a.b", "a-b-a", "ab", "x-a", "a-x"}
	var ids []Identity
	for _, ns := range names {
		if !IsDNSLabel(ns) {
			continue
		}
		for _, sa := range names {
			ids = append(ids, NewIdentity(ns, sa))
		}
	}
	templates := []string{
		"c/{namespace}_{serviceaccount}", "c/{namespace}/{serviceaccount}", "c/x_{namespace}_{serviceaccount}",
		"c/{namespace}_x_{serviceaccount}", "c/{namespace}@{serviceaccount}:k",
	}
	seen := map[string]string{}
	for _, tmpl := range templates {
		if err := CheckPathTemplate(tmpl); err != nil {
			t.Fatalf("%q refused: %v", tmpl, err)
		}
		for _, id := range ids {
			p := ExpandPath(tmpl, id)
			who := tmpl + " " + id.Key()
			if prev, ok := seen[p]; ok {
				t.Errorf("%s and %s both expand to %q", prev, who, p)
			}
			seen[p] = who
		}
	}
	// The refused form does collide: the rule is not vacuous.
	bad := "c/{namespace}-{serviceaccount}"
	if ExpandPath(bad, NewIdentity("a", "b-a")) != ExpandPath(bad, NewIdentity("a-b", "a")) {
		t.Fatal("expected the refused template to collide")
	}
	if CheckPathTemplate(bad) == nil {
		t.Fatalf("%q accepted", bad)
	}
}
