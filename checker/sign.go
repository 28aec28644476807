package checker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/credinject/credinject/authz"
	"github.com/credinject/credinject/cache"
)

// The headers a signed answer sets, and the ones of the request it reads.
const (
	headerAmzDate          = "x-amz-date"
	headerAmzContentSHA256 = "x-amz-content-sha256"
	headerAmzSecurityToken = "x-amz-security-token"
	// headerPartialBody is Envoy's mark on a CheckRequest whose gateway
	// sends the body (with_request_body): "true" when the body was cut at
	// max_request_bytes, "false" when it is whole.
	headerPartialBody = "x-envoy-auth-partial-body"
	unsignedPayload   = "UNSIGNED-PAYLOAD"
)

// Signed is the SigV4 answer for one request: the values of authorization,
// x-amz-date, x-amz-content-sha256 and (temporary credentials only)
// x-amz-security-token.
type Signed struct {
	Authorization, Date, ContentSHA256, SecurityToken string
}

// newSigner is the AWS SDK's SigV4 signer for one credential k: S3's
// canonical URI is the path as sent, every other service's escapes it again
// (the SDK's DisableURIPathEscaping). A signer caches its derived signing
// key by service, region and access key id only, not by secret key, so
// one is never shared between credentials: it lives in the cache entry's
// memo, and is replaced with it.
func newSigner(k *cache.SigV4) *v4.Signer {
	if k.Service == "s3" {
		return v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
	}
	return v4.NewSigner()
}

// sign computes the SigV4 signature of the request m describes, as the
// upstream will receive it, with k (signer: newSigner(k)) at now: method, path and query, host,
// content-type, content-md5 and every x-amz-* header the request carries,
// and the payload's SHA-256 (or UNSIGNED-PAYLOAD when k says so).
//
// The body counts only when the gateway sent it whole (Envoy's
// with_request_body marks it x-envoy-auth-partial-body: false). A request
// that is unsignable gets ReasonUnsignableRequest: no description (m nil:
// HTTP forward-auth), a cut body, a body that was not sent (a
// content-length other than 0, a transfer-encoding, or a method that
// carries one with no length, also when marked whole but empty), a body
// whose length differs from its content-length, a target that is not an
// origin-form path, or a query Go's parser cannot read whole.
func sign(ctx context.Context, signer *v4.Signer, m *authv3.AttributeContext_HttpRequest, host string, k *cache.SigV4, now time.Time) (Signed, authz.Reason) {
	if m == nil || host == "" || !validMethod(m.GetMethod()) {
		return Signed{}, authz.ReasonUnsignableRequest
	}
	target := m.GetPath()
	if target == "" || target[0] != '/' {
		return Signed{}, authz.ReasonUnsignableRequest
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return Signed{}, authz.ReasonUnsignableRequest
	}
	if _, err := url.ParseQuery(u.RawQuery); err != nil {
		// The signer reads the query with URL.Query, which drops the
		// pairs it cannot parse (a ';' separator, a bad escape): the
		// upstream would still receive them, unsigned.
		return Signed{}, authz.ReasonUnsignableRequest
	}
	// No scheme: the SDK drops a port that is the scheme's default from
	// the signed host, and the upstream receives the port.
	u.Host = host
	req := &http.Request{Method: m.GetMethod(), URL: u, Host: host, Header: make(http.Header, 4)}
	hash := unsignedPayload
	if !k.UnsignedPayload {
		var ok bool
		if hash, ok = payloadHash(m); !ok {
			return Signed{}, authz.ReasonUnsignableRequest
		}
	}
	eachHeader(m, func(name, value string) {
		switch {
		case name == headerAmzDate, name == headerAmzContentSHA256, name == headerAmzSecurityToken:
			// Set below; the workload's own never count.
		case name == "content-type", name == "content-md5", strings.HasPrefix(name, "x-amz-"):
			// Repeated (a header_map lists each): signed joined by ','.
			k := http.CanonicalHeaderKey(name)
			req.Header[k] = append(req.Header[k], value)
		}
	})
	req.Header["X-Amz-Content-Sha256"] = []string{hash}
	creds := aws.Credentials{AccessKeyID: k.AccessKey, SecretAccessKey: k.SecretKey, SessionToken: k.SessionToken}
	if err := signer.SignHTTP(ctx, creds, req, hash, k.Service, k.Region, now); err != nil {
		return Signed{}, authz.ReasonUnsignableRequest
	}
	return Signed{
		Authorization: req.Header.Get("Authorization"), Date: req.Header.Get("X-Amz-Date"),
		ContentSHA256: hash, SecurityToken: req.Header.Get("X-Amz-Security-Token"),
	}, authz.ReasonNone
}

// payloadHash is the hex SHA-256 of the request's body when the gateway
// sent all of it, or of the empty body when the request has none; ok false
// when the body is not (wholly) in the CheckRequest.
func payloadHash(m *authv3.AttributeContext_HttpRequest) (string, bool) {
	partial, length, encoded := "", "", false
	eachHeader(m, func(name, value string) {
		switch name {
		case headerPartialBody:
			partial = value
		case "content-length":
			length = value
		case "transfer-encoding":
			encoded = true
		}
	})
	h := sha256.New()
	switch partial {
	case "true":
		return "", false // cut at max_request_bytes
	case "false":
		n := len(m.GetRawBody())
		if n > 0 {
			h.Write(m.GetRawBody())
		} else {
			n = len(m.GetBody())
			h.Write([]byte(m.GetBody()))
		}
		if length != "" && length != strconv.Itoa(n) {
			return "", false
		}
		// No body: Envoy marks only a buffered one, so the mark may be the
		// workload's own, passed on by a gateway that sends no body.
		if n == 0 && !noBody(m, length, encoded) {
			return "", false
		}
	default:
		// The gateway sends no body: only a request without one is
		// signable.
		if !noBody(m, length, encoded) {
			return "", false
		}
	}
	return hex.EncodeToString(h.Sum(nil)), true
}

// noBody reports whether the request says it has no body: no
// transfer-encoding, and a content-length of 0, or none on a method that
// does not carry one.
func noBody(m *authv3.AttributeContext_HttpRequest, length string, encoded bool) bool {
	if encoded || (length != "" && length != "0") {
		return false
	}
	if length == "" {
		switch m.GetMethod() {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			return false
		}
	}
	return true
}

// eachHeader calls fn with each request header, name in lower case, from
// the headers map or (Envoy's encode_raw_headers) the header map.
func eachHeader(m *authv3.AttributeContext_HttpRequest, fn func(name, value string)) {
	if hs := m.GetHeaders(); len(hs) > 0 {
		for k, v := range hs {
			fn(strings.ToLower(k), v)
		}
		return
	}
	for _, kv := range m.GetHeaderMap().GetHeaders() {
		fn(strings.ToLower(kv.GetKey()), headerValue(kv))
	}
}

// validMethod reports a method token (RFC 9110 §9.1: tchar, here upper
// case letters and '-' as every registered method is), which the signature
// covers as sent.
func validMethod(m string) bool {
	if m == "" || len(m) > 32 {
		return false
	}
	for i := 0; i < len(m); i++ {
		if c := m[i]; (c < 'A' || c > 'Z') && c != '-' {
			return false
		}
	}
	return true
}
