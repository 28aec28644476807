package config

import (
	"reflect"
	"strings"
	"testing"
)

// TestIdentityKeys: identity.sources defaults to [token]; peer with its
// trust domain and header parses, the header lower-cased.
func TestIdentityKeys(t *testing.T) {
	c, err := Parse(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Identity.Sources, []string{"token"}) || c.Identity.HasPeer() {
		t.Fatalf("default identity.sources %v", c.Identity.Sources)
	}
	c, err = Parse(strings.NewReader(`
listen: {trustedProxies: [127.0.0.6]}
identity:
  sources: [peer, token]
  peer: {trustDomain: mesh.example, header: X-Client-Cert}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Identity{Sources: []string{"peer", "token"}, Peer: IdentityPeer{TrustDomain: "mesh.example", Header: "x-client-cert"}}
	if !reflect.DeepEqual(c.Identity, want) || !c.Identity.HasPeer() {
		t.Fatalf("identity %+v, want %+v", c.Identity, want)
	}
	c, err = Parse(strings.NewReader("listen: {trustedProxies: [127.0.0.6]}\nidentity: {sources: [peer]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity.Peer != (IdentityPeer{TrustDomain: "cluster.local", Header: "x-forwarded-client-cert"}) {
		t.Fatalf("identity.peer defaults %+v", c.Identity.Peer)
	}
}

// TestIdentityRefuses: each bad identity.* value is named.
func TestIdentityRefuses(t *testing.T) {
	const trusted = "listen: {trustedProxies: [127.0.0.6]}\n"
	for name, c := range map[string]struct{ yaml, want string }{
		"no source":           {trusted + "identity: {sources: []}", "identity.sources: at least one"},
		"unknown source":      {trusted + "identity: {sources: [token, mtls]}", "identity.sources[1]: \"mtls\""},
		"twice":               {trusted + "identity: {sources: [peer, peer]}", "identity.sources[1]: \"peer\" is listed twice"},
		"bad trust domain":    {trusted + "identity: {sources: [peer], peer: {trustDomain: \"Cluster.Local\"}}", "identity.peer.trustDomain"},
		"trust domain scheme": {trusted + "identity: {sources: [peer], peer: {trustDomain: \"spiffe://cluster.local\"}}", "identity.peer.trustDomain"},
		"bad header":          {trusted + "identity: {sources: [peer], peer: {header: \"x client cert\"}}", "identity.peer.header"},
		"nobody trusted":      {"identity: {sources: [peer]}", "peer needs a trusted caller"},
		"unknown key":         {trusted + "identity: {peer: {trustdomain: x}}", "trustdomain"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one naming %q", err, c.want)
			}
		})
	}
}
