package tlsconfig_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/internal/testenv/testca"
	"github.com/credinject/credinject/internal/tlsconfig"
)

type pki struct {
	ca     *testca.CA
	files  testca.Files
	client tls.Certificate
}

func newPKI(t *testing.T, dir, name string) pki {
	t.Helper()
	ca, err := testca.New(name + "-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server(name)
	if err != nil {
		t.Fatal(err)
	}
	files, err := testca.Write(dir, name, ca, srv)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.Client(name + "-client")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := cl.TLS()
	if err != nil {
		t.Fatal(err)
	}
	return pki{ca: ca, files: files, client: clientCert}
}

// echoServer serves the reloader's configuration: every line a client sends
// comes back. It runs until the test ends.
func echoServer(t *testing.T, r *tlsconfig.Reloader) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", r.ServerConfig("test"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := c.Write(append(sc.Bytes(), '\n')); err != nil {
						return
					}
				}
			})
		}
	})
	return ln.Addr().String()
}

// dialCase is a client configuration and whether a handshake with it
// succeeds.
type dialCase struct {
	cfg *tls.Config
	ok  bool
}

// dialCases runs one subtest per case: it dials addr with the case's
// configuration and fails if the handshake's outcome is not the case's ok.
func dialCases(t *testing.T, addr string, cases map[string]dialCase) {
	t.Helper()
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := dial(addr, tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("dial: %v, want ok=%v", err, tc.ok)
			}
			if c != nil {
				c.Close()
			}
		})
	}
}

func dial(addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	// A server refusing the client's certificate says so after the
	// client's handshake has completed (TLS 1.3): a round trip shows it.
	if err := roundTrip(c, "hello"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func roundTrip(c *tls.Conn, line string) error {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return errors.New("echo: got " + got)
	}
	return nil
}

func TestNewRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir, "srv")
	other := newPKI(t, dir, "other")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")
	for name, tc := range map[string]struct {
		files tlsconfig.Files
		want  []string
	}{
		"missing cert":       {tlsconfig.Files{CertFile: missing, KeyFile: p.files.Key}, []string{"listen.tls.certFile", missing}},
		"missing key":        {tlsconfig.Files{CertFile: p.files.Cert, KeyFile: missing}, []string{"listen.tls.keyFile", missing}},
		"garbage cert":       {tlsconfig.Files{CertFile: garbage, KeyFile: p.files.Key}, []string{"listen.tls.certFile", garbage}},
		"key of another":     {tlsconfig.Files{CertFile: p.files.Cert, KeyFile: other.files.Key}, []string{"listen.tls.keyFile", "private key does not match"}},
		"missing client CA":  {tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key, ClientCAFile: missing}, []string{"listen.tls.clientCAFile", missing}},
		"garbage client CA":  {tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key, ClientCAFile: garbage}, []string{"listen.tls.clientCAFile", garbage, "no PEM certificate"}},
		"cert without a key": {tlsconfig.Files{CertFile: p.files.Cert}, []string{"listen.tls.keyFile"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tlsconfig.New(tc.files, tlsconfig.Options{Key: "listen.tls"})
			if err == nil {
				t.Fatal("New accepted bad files")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestServesTLS12AndLater(t *testing.T) {
	p := newPKI(t, t.TempDir(), "srv")
	r, err := tlsconfig.New(tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key}, tlsconfig.Options{Key: "listen.tls"})
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, r)
	dialCases(t, addr, map[string]dialCase{
		"TLS 1.3":                  {&tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost"}, true},
		"TLS 1.2":                  {&tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", MaxVersion: tls.VersionTLS12}, true},
		"TLS 1.1 refused":          {&tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, false},
		"unknown server CA":        {&tls.Config{RootCAs: x509.NewCertPool(), ServerName: "localhost"}, false},
		"client cert not required": {&tls.Config{RootCAs: p.ca.Pool(), ServerName: "127.0.0.1"}, true},
	})
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir, "srv")
	other := newPKI(t, dir, "other")
	r, err := tlsconfig.New(tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key, ClientCAFile: p.files.CA}, tlsconfig.Options{Key: "listen.tls"})
	if err != nil {
		t.Fatal(err)
	}
	if !r.MutualTLS() {
		t.Fatal("MutualTLS false with a client CA")
	}
	addr := echoServer(t, r)
	base := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost"}
	with := func(certs ...tls.Certificate) *tls.Config {
		c := base.Clone()
		c.Certificates = certs
		return c
	}
	dialCases(t, addr, map[string]dialCase{
		"client cert of the CA":        {with(p.client), true},
		"no client cert":               {with(), false},
		"client cert of another CA":    {with(other.client), false},
		"no client cert, TLS 1.2":      {func() *tls.Config { c := with(); c.MaxVersion = tls.VersionTLS12; return c }(), false},
		"another CA's cert, TLS 1.2":   {func() *tls.Config { c := with(other.client); c.MaxVersion = tls.VersionTLS12; return c }(), false},
		"client cert of the CA, TLS12": {func() *tls.Config { c := with(p.client); c.MaxVersion = tls.VersionTLS12; return c }(), true},
	})
}

// TestReload replaces the files on disk while a connection is open: new
// connections get the new certificate once the check interval has passed,
// the open connection keeps working with the old one, and a bad replacement
// is refused without interrupting service.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir, "srv")
	clk := clocktesting.NewFakePassiveClock(time.Now())
	reg := prometheus.NewRegistry()
	r, err := tlsconfig.New(tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key, ClientCAFile: p.files.CA},
		tlsconfig.Options{Key: "listen.tls", Clock: clk, CheckInterval: time.Second, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, r)
	clientCfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{p.client}}
	old, err := dial(addr, clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	firstSerial := old.ConnectionState().PeerCertificates[0].SerialNumber

	// The same CA issues a new serving certificate, written in place.
	next, err := p.ca.Server("srv-renewed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testca.Write(dir, "srv", p.ca, next); err != nil {
		t.Fatal(err)
	}
	served := func() string {
		t.Helper()
		c, err := dial(addr, clientCfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "srv" {
		t.Fatalf("before the check interval: served %q, want the old srv", got)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	if got := served(); got != "srv-renewed" {
		t.Fatalf("after the check interval: served %q, want srv-renewed", got)
	}
	if err := roundTrip(old, "still here"); err != nil {
		t.Fatalf("the connection opened before the reload: %v", err)
	}
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(firstSerial) != 0 {
		t.Fatal("the old connection's certificate changed")
	}
	if got := reloads(t, reg, "ok"); got != 1 {
		t.Fatalf("reloads ok = %v, want 1", got)
	}

	// A replacement that does not load (the key of another certificate) is
	// refused; the last good certificate stays.
	bad, err := p.ca.Server("srv-bad")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.files.Cert, bad.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	if err := r.Check(); err == nil || !strings.Contains(err.Error(), "listen.tls.keyFile") {
		t.Fatalf("Check with a mismatched pair: %v", err)
	}
	if got := served(); got != "srv-renewed" {
		t.Fatalf("after a bad replacement: served %q, want srv-renewed", got)
	}
	if got := reloads(t, reg, "error"); got != 1 {
		t.Fatalf("reloads error = %v, want 1 (each bad version counted once)", got)
	}
	// Its key arrives: now it loads.
	if err := os.WriteFile(p.files.Key, bad.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	if got := served(); got != "srv-bad" {
		t.Fatalf("after the key arrived: served %q", got)
	}

	// A rotated client CA applies to new connections too.
	otherCA := newPKI(t, t.TempDir(), "other")
	if err := os.WriteFile(p.files.CA, otherCA.ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	if _, err := dial(addr, clientCfg); err == nil {
		t.Fatal("a client of the replaced CA was accepted")
	}
	otherCfg := clientCfg.Clone()
	otherCfg.Certificates = []tls.Certificate{otherCA.client}
	c, err := dial(addr, otherCfg)
	if err != nil {
		t.Fatalf("a client of the new CA: %v", err)
	}
	c.Close()
}

func reloads(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	return counter(t, reg, "credinject_tls_reloads_total", result)
}

// counter is the value of the counter name whose one label is value.
func counter(t *testing.T, reg *prometheus.Registry, name, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{…=%q}", name, value)
	return 0
}

func TestWarnsAboutAnExpiredCertificate(t *testing.T) {
	p := newPKI(t, t.TempDir(), "srv")
	var logs strings.Builder
	_, err := tlsconfig.New(tlsconfig.Files{CertFile: p.files.Cert, KeyFile: p.files.Key}, tlsconfig.Options{
		Key:   "listen.tls",
		Clock: clocktesting.NewFakePassiveClock(time.Now().Add(48 * time.Hour)),
		Log:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatalf("an expired certificate is served (clients decide), not refused: %v", err)
	}
	if !strings.Contains(logs.String(), "the certificate has expired") {
		t.Fatalf("no warning:\n%s", logs.String())
	}
}
