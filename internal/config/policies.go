package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/credinject/credinject/authz"
)

// Policies says whether and whose CredentialPolicy resources are obeyed
// (policies.*).
type Policies struct {
	// Enabled turns the policy controller on (default false): credinject
	// watches CredentialPolicies and the HTTPRoutes they target, and serves
	// the accepted ones beside the config file's routes.
	Enabled bool `yaml:"enabled"`
	// Namespaces are the namespaces whose policies are obeyed; empty: all.
	Namespaces []string `yaml:"namespaces"`
	// LeaderElection: only the replica holding the Lease writes policy
	// status (default true when enabled). Every replica serves every
	// policy either way.
	LeaderElection *bool `yaml:"leaderElection"`
}

// LeaderElectionEnabled reports whether status is written by a leader
// (policies.leaderElection, default true).
func (p Policies) LeaderElectionEnabled() bool { return p.LeaderElection == nil || *p.LeaderElection }

// checkPolicies checks the policies.* keys.
func (c *Config) checkPolicies(bad func(key, format string, a ...any)) {
	for i, ns := range c.Policies.Namespaces {
		if !authz.IsDNSLabel(ns) {
			bad(fmt.Sprintf("policies.namespaces[%d]", i), "%q is not a namespace name", ns)
		}
	}
}

// VaultOverride is a route's own Vault login and mount (a
// CredentialPolicy's spec.vault); an empty field keeps vault.*'s value.
type VaultOverride struct {
	Role      string
	AuthMount string
	KVMount   string
	Namespace string
}

// CheckRoute completes and checks one route defined outside the file (a
// CredentialPolicy) with the rules of routes[]: completeRoute (source kv,
// vault.path when it needs none of its own, the source's or the top-level
// injection, clientAuth basic), then checkRoute (source, the keys only
// oauth2-client-credentials takes, path, injection), its hosts as
// routes[].hosts (one label may not be empty), and its Vault override
// (each set field as vault.role, vault.authMount, vault.kvMount,
// vault.namespace). Call it on a validated Config. key names a route key in
// the messages ("path" -> "spec.source.path"). The route's name is the
// caller's. It returns the completed route, or every error joined, each
// naming its key.
func (c *Config) CheckRoute(r Route, v VaultOverride, key func(string) string) (Route, error) {
	var errs []error
	bad := func(k, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", k, fmt.Sprintf(format, a...)))
	}
	r.Hosts = append([]string(nil), r.Hosts...)
	if r.OAuth2 != nil {
		o := *r.OAuth2
		r.OAuth2 = &o
	}
	kvInject := sources[0].inject
	if c.Source == SourceKV {
		kvInject = c.Inject
	}
	name := r.Name
	completeRoute(&r, kvInject, c.Vault.Path)
	r.Name = name
	if len(r.Hosts) == 0 {
		bad(key("hosts"), "at least one host is required")
	}
	for j, h := range r.Hosts {
		hkey := key(fmt.Sprintf("hosts[%d]", j))
		// A policy's host is also refused with an empty label, which the
		// CRD's pattern lets through.
		if checkHost(hkey, h, bad) && strings.Contains(h, "..") {
			bad(hkey, "%q is not a host name or *.suffix", h)
		}
	}
	checkRoute(r, key, c.Listen.HTTP != "", bad)
	for _, f := range []struct{ name, v string }{{"role", v.Role}, {"authMount", v.AuthMount}, {"kvMount", v.KVMount}} {
		if strings.ContainsAny(f.v, " \t\r\n?#") {
			bad(key("vault."+f.name), "%q has illegal characters", f.v)
		}
	}
	if ns := v.Namespace; ns != strings.TrimSpace(ns) || strings.ContainsAny(ns, "\r\n\x00") {
		bad(key("vault.namespace"), "%q has surrounding spaces or control characters", ns)
	}
	return r, errors.Join(errs...)
}
