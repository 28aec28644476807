package policies

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/credinject/credinject/api/v1alpha1"
	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/internal/config"
)

// Route is one route of the table: a config-file route (Policy zero) or an
// accepted policy's.
type Route struct {
	// Name is the route's name: a config route's own ("" for the default
	// route), a policy's "<namespace>_<name>" (no Kubernetes name has a
	// '_', so no two policies share one).
	Name string
	// Hosts are lower-case hosts, exact or "*.suffix" (none: the default
	// route).
	Hosts []string
	// Paths are request path prefixes; empty: every path.
	Paths []string
	// Subjects, when set, are the only identities served.
	Subjects *Subjects
	// Config is the completed route: source, Vault path, OAuth2 keys,
	// injection.
	Config config.Route
	// Vault overrides vault.* for this route.
	Vault config.VaultOverride
	// Policy is the policy the route comes from; zero for a config route.
	Policy types.NamespacedName
	// Generation is the policy's metadata.generation.
	Generation int64
}

// Subjects select identities: every ServiceAccount of Namespaces, and each
// of ServiceAccounts ("namespace/name").
type Subjects struct {
	Namespaces      []string
	ServiceAccounts []string
}

// Condition is the Accepted condition of one policy.
type Condition struct {
	Accepted bool
	// Reason is one of v1alpha1.ReasonAccepted, ReasonInvalid,
	// ReasonConflicted, ReasonTargetNotFound.
	Reason  string
	Message string
	// Generation is the policy's metadata.generation judged.
	Generation int64
}

// Table is a compiled route table: the routes to serve, in order (the
// config file's first, then accepted policies oldest first), and the
// Accepted condition of every policy given.
type Table struct {
	Routes     []Route
	HasDefault bool
	Conditions map[types.NamespacedName]Condition
}

// Hostnames returns the spec.hostnames of the HTTPRoute namespace/name, and
// false when there is no such HTTPRoute.
type Hostnames func(namespace, name string) ([]string, bool)

// Compile makes the route table of the config file's routes (cfg, already
// validated) and the policies, given the hostnames of the HTTPRoutes they
// target. It is pure: the same input gives the same table.
//
// A policy is checked with the config file's own route rules
// (config.CheckRoute; reason Invalid, the message naming the key at
// fault); a policy one of whose targets is missing is TargetNotFound.
// Routes claim (host, path prefix) pairs: the config file's first, then
// policies by creationTimestamp, then namespace/name. A policy that claims a
// pair already claimed is Conflicted, naming the winner, and none of it is
// served (never half a policy).
func Compile(cfg *config.Config, pols []*v1alpha1.CredentialPolicy, hostnames Hostnames) Table {
	t := Table{HasDefault: cfg.HasDefaultRoute(), Conditions: make(map[types.NamespacedName]Condition, len(pols))}
	claims := map[claim]string{} // (host, path) -> the winner's description
	names := map[string]string{} // route name -> the winner's description
	all := cfg.AllRoutes()
	if t.HasDefault {
		// AllRoutes' first: the top-level keys.
		t.Routes = append(t.Routes, Route{Config: all[0]})
	}
	for i, r := range cfg.Routes {
		who := fmt.Sprintf("the config file's routes[%d] (%s)", i, r.Name)
		names[r.Name] = who
		for _, h := range r.Hosts {
			claims[claim{hostKey(h), ""}] = who
		}
		t.Routes = append(t.Routes, Route{Name: r.Name, Hosts: r.Hosts, Config: r})
	}
	sorted := slices.Clone(pols)
	slices.SortFunc(sorted, func(a, b *v1alpha1.CredentialPolicy) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	for _, p := range sorted {
		nn := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		r, cond := policyRoute(cfg, p, hostnames)
		cond.Generation = p.Generation
		if cond.Reason == "" {
			if winner := conflict(claims, names, r); winner != "" {
				cond = Condition{Reason: v1alpha1.ReasonConflicted, Generation: p.Generation,
					Message: fmt.Sprintf("claims a host and path of %s, which wins", winner)}
			}
		}
		if cond.Reason == "" {
			who := fmt.Sprintf("CredentialPolicy %s", nn)
			names[r.Name] = who
			for _, c := range r.claims() {
				claims[c] = who
			}
			t.Routes = append(t.Routes, r)
			cond = Condition{Accepted: true, Reason: v1alpha1.ReasonAccepted, Generation: p.Generation, Message: "served"}
		}
		t.Conditions[nn] = cond
	}
	return t
}

// claim is what a route claims: a host (lower case, no port) and a path
// prefix ("" for every path).
type claim struct{ host, path string }

// claims lists r's claims.
func (r Route) claims() []claim {
	paths := r.Paths
	if len(paths) == 0 {
		paths = []string{""}
	}
	var cs []claim
	for _, h := range r.Hosts {
		for _, p := range paths {
			cs = append(cs, claim{hostKey(h), p})
		}
	}
	return cs
}

// conflict names the winner of the first claim of r already taken (or of
// its name), "" when none is.
func conflict(claims map[claim]string, names map[string]string, r Route) string {
	if w, ok := names[r.Name]; ok {
		return w
	}
	for _, c := range r.claims() {
		if w, ok := claims[c]; ok {
			return w
		}
	}
	return ""
}

// hostKey is the form hosts conflict in: lower case, without port or
// trailing dot.
func hostKey(h string) string {
	h = strings.ToLower(h)
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	return strings.TrimSuffix(h, ".")
}

// RouteName is the route name of the policy namespace/name.
func RouteName(namespace, name string) string { return namespace + "_" + name }

// policyRoute checks p and makes its route; the condition's Reason is
// empty when p is valid and its targets exist.
func policyRoute(cfg *config.Config, p *v1alpha1.CredentialPolicy, hostnames Hostnames) (Route, Condition) {
	s := p.Spec
	var hosts, origin []string // origin[j]: the key hosts[j] came from
	for i, ref := range s.TargetRefs {
		if ref.Group != "gateway.networking.k8s.io" || ref.Kind != "HTTPRoute" {
			return Route{}, invalid("spec.targetRefs[%d]: only gateway.networking.k8s.io HTTPRoute targets are supported, not %s %s", i, ref.Group, ref.Kind)
		}
		hs, ok := hostnames(p.Namespace, ref.Name)
		if !ok {
			return Route{}, Condition{Reason: v1alpha1.ReasonTargetNotFound,
				Message: fmt.Sprintf("spec.targetRefs[%d]: HTTPRoute %s/%s not found", i, p.Namespace, ref.Name)}
		}
		for j, h := range hs {
			if !slices.Contains(hosts, h) {
				hosts = append(hosts, h)
				origin = append(origin, fmt.Sprintf("HTTPRoute %s spec.hostnames[%d]", ref.Name, j))
			}
		}
	}
	for j, h := range s.Hosts {
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
			origin = append(origin, fmt.Sprintf("spec.hosts[%d]", j))
		}
	}
	if len(hosts) == 0 {
		return Route{}, invalid("spec: no hosts: spec.hosts is empty and the targets' spec.hostnames are too")
	}
	name := RouteName(p.Namespace, p.Name)
	if !authz.IsRouteName(name) {
		return Route{}, invalid("metadata.name: route name %q is longer than %d bytes", name, authz.MaxRouteLength)
	}
	for i, path := range s.Paths {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n?#") {
			return Route{}, invalid("spec.paths[%d]: %q is not a path prefix (/..., no query)", i, path)
		}
	}
	cr := config.Route{Name: name, Hosts: hosts, Source: s.Source.Type, Path: s.Source.Path,
		Inject: configInject(s.Inject)}
	if s.Source.TokenURL != "" || len(s.Source.Scopes) > 0 || s.Source.ClientAuth != "" {
		cr.OAuth2 = &config.OAuth2{TokenURL: s.Source.TokenURL, Scopes: slices.Clone(s.Source.Scopes), ClientAuth: s.Source.ClientAuth}
	}
	var vo config.VaultOverride
	if v := s.Vault; v != nil {
		vo = config.VaultOverride{Role: v.Role, AuthMount: v.AuthMount, KVMount: v.KVMount, Namespace: v.Namespace}
	}
	cr, err := cfg.CheckRoute(cr, vo, func(k string) string {
		var j int
		if _, err := fmt.Sscanf(k, "hosts[%d]", &j); err == nil && j < len(origin) {
			return origin[j]
		}
		return specKey(k)
	})
	if err != nil {
		return Route{}, invalid("%v", err)
	}
	r := Route{Name: name, Hosts: cr.Hosts, Paths: slices.Clone(s.Paths), Config: cr, Vault: vo,
		Policy: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, Generation: p.Generation}
	slices.Sort(r.Paths)
	if sub := s.Subjects; sub != nil && (len(sub.Namespaces) > 0 || len(sub.ServiceAccounts) > 0) {
		for i, ns := range sub.Namespaces {
			if !authz.IsDNSLabel(ns) {
				return Route{}, invalid("spec.subjects.namespaces[%d]: %q is not a namespace name", i, ns)
			}
		}
		for i, sa := range sub.ServiceAccounts {
			if _, err := authz.ParseIdentity(sa); err != nil {
				return Route{}, invalid("spec.subjects.serviceAccounts[%d]: %v", i, err)
			}
		}
		r.Subjects = &Subjects{Namespaces: slices.Clone(sub.Namespaces), ServiceAccounts: slices.Clone(sub.ServiceAccounts)}
	}
	return r, Condition{}
}

func invalid(format string, a ...any) Condition {
	return Condition{Reason: v1alpha1.ReasonInvalid, Message: fmt.Sprintf(format, a...)}
}

// specKey names a route key as a CredentialPolicy's field.
func specKey(k string) string {
	switch {
	case k == "source":
		return "spec.source.type"
	case k == "path", k == "tokenURL", k == "clientAuth", strings.HasPrefix(k, "scopes"):
		return "spec.source." + k
	case k == "inject":
		return "spec.inject"
	}
	return "spec." + k
}

// configInject is a policy's spec.inject as the config file writes it.
func configInject(in v1alpha1.Inject) config.Inject {
	out := config.Inject{Header: in.Header, Value: string(in.Value)}
	for _, h := range in.Headers {
		out.Headers = append(out.Headers, config.NameValue{Name: h.Name, Value: string(h.Value)})
	}
	for _, q := range in.Query {
		out.Query = append(out.Query, config.NameValue{Name: q.Name, Value: string(q.Value)})
	}
	if b := in.Basic; b != nil {
		out.Basic = &config.Basic{Username: b.Username, Password: b.Password}
	}
	if len(in.Metadata) > 0 {
		out.Metadata = make(map[string]string, len(in.Metadata))
		for k, v := range in.Metadata {
			out.Metadata[k] = string(v)
		}
	}
	if s := in.Sign; s != nil {
		out.Sign = &config.Sign{Type: s.Type, Service: s.Service, Region: s.Region, Payload: s.Payload}
	}
	return out
}
