package tlsconfig_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credinject/credinject/internal/tlsconfig"
)

const gatewaySPIFFE = "spiffe://cluster.local/ns/istio-system/sa/egress-gateway"

// TestClientNamesMatch: which certificate names match which entries.
func TestClientNamesMatch(t *testing.T) {
	names, err := tlsconfig.ParseClientNames("listen.tls.clientNames", []string{
		"gateway.example.internal", "*.gw.example", "Upper.Example.", gatewaySPIFFE,
	})
	if err != nil {
		t.Fatal(err)
	}
	cert := func(sans ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, s := range sans {
			if strings.Contains(s, "://") {
				u, err := url.Parse(s)
				if err != nil {
					t.Fatal(err)
				}
				c.URIs = append(c.URIs, u)
			} else {
				c.DNSNames = append(c.DNSNames, s)
			}
		}
		return c
	}
	for name, tc := range map[string]struct {
		cert *x509.Certificate
		want bool
	}{
		"exact DNS":                      {cert("gateway.example.internal"), true},
		"exact DNS, any case, root dot":  {cert("GATEWAY.example.internal."), true},
		"entry written in upper case":    {cert("upper.example"), true},
		"second SAN matches":             {cert("workload.example", "gateway.example.internal"), true},
		"wildcard, one label":            {cert("a.gw.example"), true},
		"wildcard, not the suffix alone": {cert("gw.example"), false},
		"wildcard, not two labels":       {cert("a.b.gw.example"), false},
		"wildcard, not a longer suffix":  {cert("agw.example"), false},
		"certificate's own wildcard":     {cert("*.gw.example"), false},
		"another DNS name":               {cert("workload.example.internal"), false},
		"DNS name with a suffix":         {cert("gateway.example.internal.evil"), false},
		"exact URI":                      {cert(gatewaySPIFFE), true},
		"URI of another account":         {cert("spiffe://cluster.local/ns/default/sa/workload"), false},
		"URI with a longer path":         {cert(gatewaySPIFFE + "/x"), false},
		"URI of another trust domain":    {cert("spiffe://evil.local/ns/istio-system/sa/egress-gateway"), false},
		"URI's host as a DNS name":       {cert("cluster.local"), false},
		"DNS entry as a URI":             {cert("spiffe://gateway.example.internal"), false},
		"no SAN (the common name only)":  {&x509.Certificate{DNSNames: nil}, false},
		"nil certificate":                {nil, false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := names.Match(tc.cert); got != tc.want {
				t.Fatalf("Match = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseClientNamesRefusesBadEntries(t *testing.T) {
	for _, e := range []string{"", "*", "*.", "a..b", "a b.example", "*.*.example", "a.*.example", "spiffe://", "spiffe:///ns/x", "spiffe://cluster.local/ns/*/sa/gw", "http://[::1"} {
		t.Run(e, func(t *testing.T) {
			_, err := tlsconfig.ParseClientNames("listen.tls.clientNames", []string{"ok.example", e})
			if err == nil || !strings.Contains(err.Error(), "listen.tls.clientNames[1]") {
				t.Fatalf("entry %q: %v, want an error naming listen.tls.clientNames[1]", e, err)
			}
		})
	}
}

// TestClientNamesNeedTheClientCA: names are only meaningful on certificates
// the CA verified.
func TestClientNamesNeedTheClientCA(t *testing.T) {
	p := newPKI(t, t.TempDir(), "srv")
	_, err := tlsconfig.New(tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key}, tlsconfig.Options{Key: "listen.tls", ClientNames: []string{"gw.example"}})
	if err == nil || !strings.Contains(err.Error(), "listen.tls.clientNames needs listen.tls.clientCAFile") {
		t.Fatalf("New: %v", err)
	}
}

// TestClientNamesInTheHandshake: a client certificate of the right CA that
// names none of the entries fails ServerConfig's handshake, and is counted;
// ServerConfigNamesLater lets it through for the handler, whose ClientNamed
// says no (and counts it).
func TestClientNamesInTheHandshake(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir, "srv")
	other := newPKI(t, dir, "other")
	issue := func(names ...string) tls.Certificate {
		l, err := p.ca.ClientNamed("client", names...)
		if err != nil {
			t.Fatal(err)
		}
		c, err := l.TLS()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	gateway, wildcard, workload := issue(gatewaySPIFFE), issue("eu-1.gw.example"), issue("spiffe://cluster.local/ns/default/sa/workload", "workload.example")
	otherCA, err := other.ca.ClientNamed("client", gatewaySPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	otherGateway, err := otherCA.TLS()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	r, err := tlsconfig.New(tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key, ClientCAFile: p.files.CA},
		tlsconfig.Options{Key: "listen.tls", Registerer: reg, ClientNames: []string{gatewaySPIFFE, "*.gw.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if !r.HasClientNames() {
		t.Fatal("HasClientNames false")
	}
	with := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", Certificates: certs}
	}
	addr := echoServer(t, r)
	dialCases(t, addr, map[string]dialCase{
		"the gateway's URI SAN":                {with(gateway), true},
		"a DNS SAN under the wildcard":         {with(wildcard), true},
		"a workload's certificate from the CA": {with(workload), false},
		"the CA's certificate without SANs":    {with(p.client), false},
		"the gateway's name, another CA":       {with(otherGateway), false},
		"no client certificate":                {with(), false},
		"a workload's certificate, TLS 1.2":    {func() *tls.Config { c := with(workload); c.MaxVersion = tls.VersionTLS12; return c }(), false},
		"the gateway's URI SAN, TLS 1.2":       {func() *tls.Config { c := with(gateway); c.MaxVersion = tls.VersionTLS12; return c }(), true},
	})
	refused := counter(t, reg, "credinject_tls_client_refused_total", "handshake")
	if refused != 3 {
		t.Fatalf(`credinject_tls_client_refused_total{stage="handshake"} = %v, want 3 (the workload twice, the CA's certificate without SANs)`, refused)
	}

	// Names left to the handler: the handshake takes any certificate of the CA.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", r.ServerConfigNamesLater("test"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	states := make(chan tls.ConnectionState, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				states <- tc.ConnectionState()
			}
			c.Close()
		}
	}()
	for _, tc := range []struct {
		cert  tls.Certificate
		named bool
	}{{workload, false}, {gateway, true}} {
		c, err := tls.Dial("tcp", ln.Addr().String(), with(tc.cert))
		if err != nil {
			t.Fatalf("handshake with names left to the handler: %v", err)
		}
		st := <-states
		c.Close()
		if got := r.ClientNamed(&st); got != tc.named {
			t.Fatalf("ClientNamed = %v, want %v", got, tc.named)
		}
	}
	if got := counter(t, reg, "credinject_tls_client_refused_total", "request"); got != 1 {
		t.Fatalf(`credinject_tls_client_refused_total{stage="request"} = %v, want 1`, got)
	}
	if r.ClientNamed(nil) {
		t.Fatal("ClientNamed(nil) with names required")
	}
}

// TestNoClientNamesAllowsTheCA: without clientNames every certificate of the
// CA is named (the behaviour before the key existed).
func TestNoClientNamesAllowsTheCA(t *testing.T) {
	p := newPKI(t, t.TempDir(), "srv")
	r, err := tlsconfig.New(tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key, ClientCAFile: p.files.CA}, tlsconfig.Options{Key: "listen.tls"})
	if err != nil {
		t.Fatal(err)
	}
	if r.HasClientNames() || !r.ClientNamed(&tls.ConnectionState{}) {
		t.Fatal("names required without clientNames")
	}
}
