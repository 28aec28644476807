package config

import (
	"fmt"
	"slices"
)

// Identity says where a request's identity comes from (identity.*).
type Identity struct {
	// Sources are tried in order, the first one a request carries
	// deciding: "token" (the Authorization header's service-account token)
	// and "peer" (the mesh peer a trusted caller vouches for). Default
	// [token].
	Sources []string `yaml:"sources"`
	// Peer configures the peer source.
	Peer IdentityPeer `yaml:"peer"`
}

// IdentityPeer configures peer identities (identity.peer.*).
type IdentityPeer struct {
	// TrustDomain is the SPIFFE trust domain of the mesh (default
	// cluster.local): a peer counts only as
	// spiffe://<trustDomain>/ns/<namespace>/sa/<name>.
	TrustDomain string `yaml:"trustDomain"`
	// Header is where /check's trusted caller names the peer: the URI= of
	// its last element, in Envoy's x-forwarded-client-cert format (default
	// x-forwarded-client-cert; lower-cased by Validate).
	Header string `yaml:"header"`
}

// Identity sources (identity.sources).
const (
	IdentitySourceToken = "token"
	IdentitySourcePeer  = "peer"
)

// HasPeer reports whether identity.sources lists peer.
func (i Identity) HasPeer() bool { return slices.Contains(i.Sources, IdentitySourcePeer) }

// defaultIdentity is identity.*'s defaults: the token only.
func defaultIdentity() Identity {
	return Identity{
		Sources: []string{IdentitySourceToken},
		Peer:    IdentityPeer{TrustDomain: "cluster.local", Header: "x-forwarded-client-cert"},
	}
}

// checkIdentity validates identity.* (and lower-cases the peer header).
// The peer source needs a caller to believe: listen.trustedProxies or
// listen.tls.clientNames.
func (c *Config) checkIdentity(bad func(key, format string, a ...any)) {
	id := &c.Identity
	if len(id.Sources) == 0 {
		bad("identity.sources", "at least one of token, peer is required")
	}
	for i, s := range id.Sources {
		key := fmt.Sprintf("identity.sources[%d]", i)
		switch {
		case s != IdentitySourceToken && s != IdentitySourcePeer:
			bad(key, "%q is not one of token, peer", s)
		case slices.Index(id.Sources, s) != i:
			bad(key, "%q is listed twice", s)
		}
	}
	if !id.HasPeer() {
		return
	}
	if !isTrustDomain(id.Peer.TrustDomain) {
		bad("identity.peer.trustDomain", "%q is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')", id.Peer.TrustDomain)
	}
	if !headerName.MatchString(id.Peer.Header) {
		bad("identity.peer.header", "%q is not a header name", id.Peer.Header)
	}
	if len(c.Listen.TrustedProxies) == 0 && len(c.Listen.TLS.ClientNames) == 0 {
		bad("identity.sources", "peer needs a trusted caller to vouch for the peer: set listen.trustedProxies or listen.tls.clientNames")
	}
}

// isTrustDomain: a SPIFFE trust domain name, at most 255 bytes.
func isTrustDomain(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
