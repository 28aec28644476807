package checker

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math"
	"math/big"
	"strings"
	"sync"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credinject/credinject/authz"
)

// fuzzKeyPEM is a fixed P-256 key (kid "k1") made for these tests only, so
// the tokens in testdata/fuzz stay valid: a fresh key would turn every
// committed valid token into a bad signature.
const fuzzKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgALy1rXqxa4Qubtro
pQ937eUzygm6WmeRtnXOCBT2ysWhRANCAARbbfO3I2sQo3c/OBCxRITK5FF9OtOu
yZNU8LSy4UgCmflkTv+ndSEIHGvk4TB+6Ds7O6jz8hvaphsK6cTwNTQr
-----END PRIVATE KEY-----`

// jwksFuzz is a JWKSValidator over a key set of two keys, k1 (ES256, fixed)
// and k2 (RSA, fresh), at the fixed time t0, with signers for both and for
// a key outside the set that claims to be k1.
type jwksFuzz struct {
	v        *JWKSValidator
	ec       *ecdsa.PrivateKey
	rsa      *rsa.PrivateKey
	signers  [3]jose.Signer // k1, k2, a stranger calling itself k1
	inTheSet [3]bool
}

var (
	jwksFuzzOnce sync.Once
	jwksFuzzRig  *jwksFuzz
	jwksFuzzErr  error
)

// newJWKSFuzz builds the rig once per process (a worker runs many inputs).
func newJWKSFuzz(tb testing.TB) *jwksFuzz {
	tb.Helper()
	jwksFuzzOnce.Do(func() { jwksFuzzRig, jwksFuzzErr = buildJWKSFuzz() })
	if jwksFuzzErr != nil {
		tb.Fatal(jwksFuzzErr)
	}
	return jwksFuzzRig
}

func buildJWKSFuzz() (*jwksFuzz, error) {
	blk, _ := pem.Decode([]byte(fuzzKeyPEM))
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	r := &jwksFuzz{ec: k.(*ecdsa.PrivateKey), inTheSet: [3]bool{true, true, false}}
	if r.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	for i, sk := range []jose.SigningKey{
		{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: r.ec, KeyID: "k1"}},
		{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: r.rsa, KeyID: "k2"}},
		{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: stranger, KeyID: "k1"}},
	} {
		if r.signers[i], err = jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("JWT")); err != nil {
			return nil, err
		}
	}
	set := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: r.ec.Public(), KeyID: "k1", Algorithm: string(jose.ES256), Use: "sig"},
		{Key: r.rsa.Public(), KeyID: "k2", Algorithm: string(jose.RS256), Use: "sig"},
	}}
	r.v, err = NewJWKSValidator(context.Background(), JWKSConfig{
		Issuer: testIssuer, Audiences: []string{testAud}, Keys: set, Clock: clocktesting.NewFakeClock(t0),
	})
	return r, err
}

// sign signs payload as a compact JWS with signer i.
func (r *jwksFuzz) sign(tb testing.TB, i int, payload []byte) string {
	tb.Helper()
	obj, err := r.signers[i].Sign(payload)
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// validClaims is the payload of a valid pod-bound token at t0, for the seeds.
func validClaims(edit func(m map[string]any)) []byte {
	m := map[string]any{
		"iss": testIssuer, "sub": "system:serviceaccount:team-a:app", "aud": []string{testAud},
		"iat": t0.Unix() - 60, "nbf": t0.Unix() - 60, "exp": t0.Unix() + 3600,
		"kubernetes.io": map[string]any{
			"namespace":      "team-a",
			"serviceaccount": map[string]any{"name": "app", "uid": "sa-uid"},
			"pod":            map[string]any{"name": "p", "uid": "pod-uid"},
			"node":           map[string]any{"name": "n", "uid": "node-uid"},
		},
	}
	if edit != nil {
		edit(m)
	}
	b, _ := json.Marshal(m)
	return b
}

// checkVerdict: Validate answers with an allow or one of the two token
// reasons (the key set is fixed, so nothing is ever unavailable), and an
// error that names no more than a bounded amount of the input.
func checkVerdict(t *testing.T, err error) authz.Reason {
	t.Helper()
	r := authz.ReasonOf(err)
	switch r {
	case authz.ReasonNone, authz.ReasonMalformedToken, authz.ReasonInvalidToken:
	default:
		t.Fatalf("reason %q outside {allow, malformed_token, invalid_token}: %v", r, err)
	}
	return r
}

// FuzzJWKSToken: any token string is answered with an allow or a token deny
// reason, and an allow is only ever given to a token whose signature the
// standard library verifies against the key its kid names (an oracle
// independent of go-jose).
func FuzzJWKSToken(f *testing.F) {
	r := newJWKSFuzz(f)
	valid := r.sign(f, 0, validClaims(nil))
	for _, s := range []string{
		valid, valid + "x", strings.Replace(valid, ".", "..", 1), strings.ToUpper(valid),
		r.sign(f, 1, validClaims(nil)), r.sign(f, 2, validClaims(nil)),
		"", "..", "a.b.c", "e30.e30.", "eyJhbGciOiJub25lIn0.e30.",
		"eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.e30.AAAA",
		`{"payload":"e30","signatures":[{"protected":"eyJhbGciOiJFUzI1NiJ9","signature":""}]}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		ti, err := r.v.Validate(context.Background(), tok)
		if checkVerdict(t, err) != authz.ReasonNone {
			return
		}
		if !r.verifiedIndependently(tok) {
			t.Fatalf("accepted a token whose signature the standard library refuses: %q", tok)
		}
		checkAccepted(t, tok, ti)
	})
}

// FuzzJWKSClaims signs any payload with a key of the set (or with one
// outside it), so the fuzzer reaches the claim checks past the signature:
// a stranger's signature is never accepted, and an accepted token's claims,
// read again with encoding/json, satisfy every rule of checkClaims.
func FuzzJWKSClaims(f *testing.F) {
	r := newJWKSFuzz(f)
	seeds := [][]byte{
		validClaims(nil),
		validClaims(func(m map[string]any) { m["aud"] = testAud }),
		validClaims(func(m map[string]any) { m["aud"] = []string{"vault", testAud} }),
		validClaims(func(m map[string]any) { m["exp"] = t0.Unix() - 61 }),
		validClaims(func(m map[string]any) { m["exp"] = 1e300 }),
		validClaims(func(m map[string]any) { m["exp"] = "4102444800" }),
		validClaims(func(m map[string]any) { m["nbf"] = t0.Unix() + 120 }),
		validClaims(func(m map[string]any) { delete(m, "exp") }),
		validClaims(func(m map[string]any) { m["iss"] = LegacyIssuer }),
		validClaims(func(m map[string]any) { m["ISS"] = "x"; m["sub"] = "system:serviceaccount:team-a:app:x" }),
		validClaims(func(m map[string]any) { m["kubernetes.io"] = nil }),
		validClaims(func(m map[string]any) {
			m["kubernetes.io"].(map[string]any)["secret"] = map[string]any{"name": "s", "uid": ""}
		}),
		validClaims(func(m map[string]any) { delete(m["kubernetes.io"].(map[string]any), "pod") }),
		[]byte(`{"iss":"https://issuer.test","iss":"other"}`),
		[]byte(`null`), []byte(`[]`), []byte(``), []byte("\xff"),
	}
	for _, s := range seeds {
		for k := range uint8(3) {
			f.Add(s, k)
		}
	}
	f.Fuzz(func(t *testing.T, payload []byte, key uint8) {
		i := int(key % 3)
		tok := r.sign(t, i, payload)
		ti, err := r.v.Validate(context.Background(), tok)
		if checkVerdict(t, err) != authz.ReasonNone {
			return
		}
		if !r.inTheSet[i] {
			t.Fatalf("accepted a token signed by a key outside the set: %q", payload)
		}
		checkAccepted(t, tok, ti)
	})
}

// checkAccepted re-reads an accepted token's payload with encoding/json and
// checks checkClaims's rules on it, independently.
func checkAccepted(t *testing.T, tok string, ti TokenInfo) {
	t.Helper()
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatalf("accepted a token whose payload is not base64url: %v", err)
	}
	if why := rejects(payload); why != "" {
		t.Fatalf("accepted a token whose claims %s: %q", why, payload)
	}
	var c struct {
		Sub string `json:"sub"`
		K8s struct {
			ServiceAccount struct{ UID string } `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	_ = json.Unmarshal(payload, &c)
	if want := "system:serviceaccount:" + ti.Identity.Namespace + ":" + ti.Identity.ServiceAccount; c.Sub != want || ti.UID != c.K8s.ServiceAccount.UID {
		t.Fatalf("identity %+v (uid %q) is not the token's subject %q", ti.Identity, ti.UID, c.Sub)
	}
	for _, b := range ti.Bound {
		if b.Key == "" || b.UID == "" || strings.HasSuffix(b.Key, "/") {
			t.Fatalf("bound reference without name or uid: %+v", b)
		}
	}
	// Every binding the token carries is kept (the node's only without a
	// pod): a dropped one would let the token outlive its object.
	var k map[string]json.RawMessage
	var top map[string]json.RawMessage
	_ = json.Unmarshal(payload, &top)
	_ = json.Unmarshal(top["kubernetes.io"], &k)
	for kind, name := range map[BoundKind]string{BoundPod: "pod", BoundSecret: "secret", BoundNode: "node"} {
		raw, ok := k[name]
		if !ok || string(raw) == "null" || kind == BoundNode && k["pod"] != nil && string(k["pod"]) != "null" {
			continue
		}
		var ref struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		}
		_ = json.Unmarshal(raw, &ref)
		kept := false
		for _, b := range ti.Bound {
			kept = kept || b.Kind == kind && b.UID == ref.UID && strings.HasSuffix(b.Key, ref.Name)
		}
		if !kept {
			t.Fatalf("the token's %s binding %s is not in %+v", name, raw, ti.Bound)
		}
	}
}

func accepts(payload []byte) bool { return rejects(payload) == "" }

// rejects says which of checkClaims's rules payload breaks at t0, or "".
// Claims names are matched exactly, as JWT requires (and go-jose's decoder
// does; encoding/json's struct decoding would not).
func rejects(payload []byte) string {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		return "are not a JSON object"
	}
	str := func(name string) (string, bool) {
		var s string
		return s, json.Unmarshal(m[name], &s) == nil && m[name] != nil
	}
	num := func(name string) (float64, bool) {
		var f float64
		return f, json.Unmarshal(m[name], &f) == nil && m[name] != nil && string(m[name]) != "null"
	}
	now := float64(t0.Unix())
	skew := ClockSkew.Seconds()
	if iss, _ := str("iss"); iss != testIssuer {
		return "name another issuer"
	}
	exp, ok := num("exp")
	if !ok || math.IsNaN(exp) || now-skew > math.Trunc(exp) || exp >= math.MaxInt64 {
		return "have no exp or an expired one"
	}
	if nbf, ok := num("nbf"); ok && now+skew < math.Trunc(nbf) {
		return "are not valid yet"
	}
	if iat, ok := num("iat"); ok && now+skew < math.Trunc(iat) {
		return "were issued in the future"
	}
	var auds []string
	if a, ok := str("aud"); ok {
		auds = []string{a}
	} else if json.Unmarshal(m["aud"], &auds) != nil {
		return "have an unreadable audience"
	}
	found := false
	for _, a := range auds {
		found = found || a == testAud
	}
	if !found {
		return "are not for our audience"
	}
	sub, _ := str("sub")
	ns, name, ok := ParseServiceAccountUser(sub)
	if !ok {
		return "name no service account"
	}
	var k struct {
		Namespace      *string                    `json:"namespace"`
		ServiceAccount map[string]json.RawMessage `json:"serviceaccount"`
	}
	if json.Unmarshal(m["kubernetes.io"], &k) != nil || k.Namespace == nil || *k.Namespace != ns {
		return "disagree with the kubernetes.io namespace"
	}
	var saName, saUID string
	if json.Unmarshal(k.ServiceAccount["name"], &saName) != nil || saName != name ||
		json.Unmarshal(k.ServiceAccount["uid"], &saUID) != nil || saUID == "" {
		return "disagree with the kubernetes.io service account"
	}
	return ""
}

// verifiedIndependently verifies tok's signature with crypto/ecdsa or
// crypto/rsa against the key its header's kid names (none: the only key
// when there is one, which is never the case here).
func (r *jwksFuzz) verifiedIndependently(tok string) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	hdr, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	sig, err2 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if json.Unmarshal(hdr, &h) != nil {
		return false
	}
	input := []byte(parts[0] + "." + parts[1])
	switch {
	case h.Kid == "k1" && h.Alg == "ES256":
		if len(sig) != 64 {
			return false
		}
		d := sha256.Sum256(input)
		return ecdsa.Verify(&r.ec.PublicKey, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case h.Kid == "k2":
		var hf crypto.Hash
		var d []byte
		switch h.Alg {
		case "RS256", "PS256":
			s := sha256.Sum256(input)
			hf, d = crypto.SHA256, s[:]
		case "RS384":
			s := sha512.Sum384(input)
			hf, d = crypto.SHA384, s[:]
		case "RS512":
			s := sha512.Sum512(input)
			hf, d = crypto.SHA512, s[:]
		default:
			return false
		}
		if strings.HasPrefix(h.Alg, "PS") {
			return rsa.VerifyPSS(&r.rsa.PublicKey, hf, d, sig, nil) == nil
		}
		return rsa.VerifyPKCS1v15(&r.rsa.PublicKey, hf, d, sig) == nil
	}
	return false
}

// TestJWKSFuzzOracle: the fuzz targets' oracles are not vacuous: they accept
// what the validator accepts in the plain cases and see a forgery.
func TestJWKSFuzzOracle(t *testing.T) {
	r := newJWKSFuzz(t)
	tok := r.sign(t, 0, validClaims(nil))
	if _, err := r.v.Validate(context.Background(), tok); err != nil || !r.verifiedIndependently(tok) || !accepts(validClaims(nil)) {
		t.Fatalf("valid token: %v, verified %v, accepted %v", err, r.verifiedIndependently(tok), accepts(validClaims(nil)))
	}
	if tok2 := r.sign(t, 1, validClaims(nil)); !r.verifiedIndependently(tok2) {
		t.Fatal("RSA token not verified")
	}
	if r.verifiedIndependently(r.sign(t, 2, validClaims(nil))) {
		t.Fatal("a stranger's signature verified")
	}
	for name, edit := range map[string]func(m map[string]any){
		"expired":   func(m map[string]any) { m["exp"] = t0.Unix() - 61 },
		"no exp":    func(m map[string]any) { delete(m, "exp") },
		"other aud": func(m map[string]any) { m["aud"] = "vault" },
		"other ns":  func(m map[string]any) { m["sub"] = "system:serviceaccount:team-b:app" },
		"no sa uid": func(m map[string]any) {
			m["kubernetes.io"].(map[string]any)["serviceaccount"] = map[string]any{"name": "app"}
		},
		"future nbf": func(m map[string]any) { m["nbf"] = t0.Unix() + 61 },
	} {
		if accepts(validClaims(edit)) {
			t.Errorf("%s: the oracle accepts it", name)
		}
	}
	if !bytes.Contains(validClaims(nil), []byte(`"kubernetes.io"`)) {
		t.Fatal("seed without kubernetes.io claims")
	}
}
