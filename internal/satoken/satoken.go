// Package satoken mints tokens shaped like Kubernetes service-account tokens
// (iss, sub, aud, exp, nbf, iat and the kubernetes.io claims) with a local
// key. `credinject dev` uses it as its dev issuer; tests and benchmarks use it
// where the API server cannot produce a token on demand (already expired, or
// 100,000 of them).
package satoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Issuer signs tokens.
type Issuer struct {
	URL    string
	KeyID  string
	signer jose.Signer
	pub    crypto.PublicKey
	alg    jose.SignatureAlgorithm
}

// New makes an issuer with a fresh ECDSA P-256 key (fast to sign).
func New(url string) (*Issuer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return FromKey(url, "dev-1", k, jose.ES256)
}

// FromKey makes an issuer from an existing private key (RSA or ECDSA).
func FromKey(url, kid string, key crypto.Signer, alg jose.SignatureAlgorithm) (*Issuer, error) {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("satoken: %w", err)
	}
	return &Issuer{URL: url, KeyID: kid, signer: s, pub: key.Public(), alg: alg}, nil
}

// JWKS is the issuer's public key set.
func (i *Issuer) JWKS() *jose.JSONWebKeySet {
	return &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: i.pub, KeyID: i.KeyID, Algorithm: string(i.alg), Use: "sig"}}}
}

// PublicKey is the verification key.
func (i *Issuer) PublicKey() crypto.PublicKey { return i.pub }

// Token describes one token to mint.
type Token struct {
	Namespace, ServiceAccount, UID string
	Audiences                      []string
	IssuedAt                       time.Time
	TTL                            time.Duration
	// Pod, Secret and Node, when named, bind the token to that object, as
	// TokenRequest's boundObjectRef does.
	Pod, Secret, Node ObjectRef
}

// ObjectRef names a bound object.
type ObjectRef struct{ Name, UID string }

// Mint signs a service-account-shaped token.
func (i *Issuer) Mint(t Token) (string, error) {
	if t.IssuedAt.IsZero() {
		t.IssuedAt = time.Now()
	}
	claims := jwt.Claims{
		Issuer:    i.URL,
		Subject:   "system:serviceaccount:" + t.Namespace + ":" + t.ServiceAccount,
		Audience:  jwt.Audience(t.Audiences),
		IssuedAt:  jwt.NewNumericDate(t.IssuedAt),
		NotBefore: jwt.NewNumericDate(t.IssuedAt),
		Expiry:    jwt.NewNumericDate(t.IssuedAt.Add(t.TTL)),
	}
	info := map[string]any{
		"namespace":      t.Namespace,
		"serviceaccount": map[string]any{"name": t.ServiceAccount, "uid": t.UID},
	}
	for name, r := range map[string]ObjectRef{"pod": t.Pod, "secret": t.Secret, "node": t.Node} {
		if r.Name != "" {
			info[name] = map[string]any{"name": r.Name, "uid": r.UID}
		}
	}
	k8s := map[string]any{"kubernetes.io": info}
	return jwt.Signed(i.signer).Claims(claims).Claims(k8s).Serialize()
}
