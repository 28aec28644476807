// Package testca makes certificate authorities and leaf certificates for
// tests: a CA generated in the test, server and client certificates signed by
// it, written as PEM files. Tests import it; the product binary never does. It
// has no dependency beyond the standard library, so unit packages may use it
// without pulling in the test bed.
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

var serial atomic.Int64

// CA is a certificate authority held in memory.
type CA struct {
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
}

// New makes a self-signed CA valid for a day.
func New(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}, nil
}

// Pool is a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf is an issued certificate and its key, in PEM.
type Leaf struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// TLS is the leaf as a tls.Certificate.
func (l *Leaf) TLS() (tls.Certificate, error) { return tls.X509KeyPair(l.CertPEM, l.KeyPEM) }

// Server issues a serving certificate for 127.0.0.1, ::1 and localhost plus
// the given DNS names. It may also authenticate as a client.
func (ca *CA) Server(cn string, dnsNames ...string) (*Leaf, error) {
	return ca.issue(cn, append([]string{"localhost"}, dnsNames...),
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
}

// ServerOnly issues a serving certificate for the given DNS names only (no
// loopback names or addresses), to test the name a client expects.
func (ca *CA) ServerOnly(cn string, dnsNames ...string) (*Leaf, error) {
	return ca.issue(cn, dnsNames, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
}

// Client issues a client certificate.
func (ca *CA) Client(cn string) (*Leaf, error) {
	return ca.issue(cn, nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

// ClientNamed issues a client certificate carrying names as subject
// alternative names: a name with "://" is a URI SAN
// (spiffe://cluster.local/ns/x/sa/y), any other a DNS SAN.
func (ca *CA) ClientNamed(cn string, names ...string) (*Leaf, error) {
	var dns []string
	var uris []*url.URL
	for _, n := range names {
		if !strings.Contains(n, "://") {
			dns = append(dns, n)
			continue
		}
		u, err := url.Parse(n)
		if err != nil {
			return nil, err
		}
		uris = append(uris, u)
	}
	return ca.issueURIs(cn, dns, uris, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

func (ca *CA) issue(cn string, dns []string, ips []net.IP, usage []x509.ExtKeyUsage) (*Leaf, error) {
	return ca.issueURIs(cn, dns, nil, ips, usage)
}

func (ca *CA) issueURIs(cn string, dns []string, uris []*url.URL, ips []net.IP, usage []x509.ExtKeyUsage) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		DNSNames:     dns,
		URIs:         uris,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Leaf{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// Files are PEM files written by Write.
type Files struct {
	CA, Cert, Key string
}

// Write writes the CA, the leaf's certificate and its key into dir as
// <name>-ca.crt, <name>.crt and <name>.key (mode 0600) and returns the paths.
// Writing again replaces the files in place, as a certificate manager does.
func Write(dir, name string, ca *CA, leaf *Leaf) (Files, error) {
	f := Files{
		CA:   filepath.Join(dir, name+"-ca.crt"),
		Cert: filepath.Join(dir, name+".crt"),
		Key:  filepath.Join(dir, name+".key"),
	}
	for path, b := range map[string][]byte{f.CA: ca.PEM, f.Cert: leaf.CertPEM, f.Key: leaf.KeyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return Files{}, fmt.Errorf("testca: %w", err)
		}
	}
	return f, nil
}

// ServerTLS builds a server configuration: TLS 1.2 or later, the
// certificate, and, with ClientCAs, client certificates required and
// verified.
type ServerTLS struct {
	Cert      tls.Certificate
	ClientCAs *x509.CertPool
}

// Config is the tls.Config.
func (s *ServerTLS) Config() *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{s.Cert}}
	if s.ClientCAs != nil {
		c.ClientCAs = s.ClientCAs
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c
}
