package checker

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credinject/credinject/authz"
)

// ClockSkew is the leeway on exp, nbf and iat: the API server's own (go-jose's
// DefaultLeeway, which kube-apiserver's service-account authenticator uses).
const ClockSkew = 60 * time.Second

// LegacyIssuer is the "iss" of the Secret-based service-account tokens that
// predate TokenRequest: no exp, no audience, not bound to any object. jwks
// mode refuses them; tokenreview mode checks their signature offline and
// leaves the rest to the API server.
const LegacyIssuer = "kubernetes/serviceaccount"

// BoundKind is the kind of object a token is bound to.
type BoundKind string

// The kinds TokenRequest binds tokens to (boundObjectRef, and the node a
// bound pod runs on).
const (
	BoundPod    BoundKind = "Pod"
	BoundSecret BoundKind = "Secret"
	BoundNode   BoundKind = "Node"
)

// BoundRef is an object a token is bound to: the token is valid only while
// an object of this kind, key and uid exists.
type BoundRef struct {
	Kind BoundKind
	// Key is "namespace/name" (the informer's key), or the name of a Node.
	Key string
	UID string
}

// BoundObjects tells whether a bound object still exists with this uid. It
// is backed by informers (no I/O) and answers false until they have synced:
// fail closed.
type BoundObjects interface {
	Exists(kind BoundKind, key, uid string) bool
}

// BoundObjectsFunc adapts a function to BoundObjects.
type BoundObjectsFunc func(kind BoundKind, key, uid string) bool

// Exists calls f.
func (f BoundObjectsFunc) Exists(kind BoundKind, key, uid string) bool { return f(kind, key, uid) }

// KubernetesInfo is the private "kubernetes.io" claim of a TokenRequest token:
// the ServiceAccount and the objects the token is bound to.
type KubernetesInfo struct {
	Namespace      string     `json:"namespace"`
	ServiceAccount ObjectRef  `json:"serviceaccount"`
	Pod            *ObjectRef `json:"pod"`
	Secret         *ObjectRef `json:"secret"`
	Node           *ObjectRef `json:"node"`
}

// ObjectRef names an object by name and uid.
type ObjectRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// saClaims are the claims of a service-account token.
type saClaims struct {
	jwt.Claims
	K8s *KubernetesInfo `json:"kubernetes.io"`
}

// expected is what a token's claims must say.
type expected struct {
	Issuer    string
	Audiences []string
}

// checkClaims is the offline claim check, a pure function of the claims, the
// expectation and the time: iss (never the legacy issuer), aud, exp required,
// exp/nbf/iat within ClockSkew, sub a service account that the kubernetes.io
// claims agree with, and each bound object named with its uid. The signature
// is the caller's business.
func checkClaims(c *saClaims, want expected, now time.Time) (TokenInfo, error) {
	deny := func(format string, a ...any) (TokenInfo, error) {
		return TokenInfo{}, authz.Denyf(authz.ReasonInvalidToken, format, a...)
	}
	if c.Issuer == LegacyIssuer {
		return deny("legacy issuer %q is not accepted (a Secret-based token with no expiry)", LegacyIssuer)
	}
	if c.Issuer != want.Issuer {
		return deny("issuer %q is not %q", c.Issuer, want.Issuer)
	}
	if c.Expiry == nil {
		return deny("token has no exp")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{AnyAudience: want.Audiences, Time: now}, ClockSkew); err != nil {
		return deny("claims: %w", err)
	}
	ns, name, err := ServiceAccountUser(c.Subject)
	if err != nil {
		return deny("subject: %w", err)
	}
	k := c.K8s
	if k == nil {
		return deny("no kubernetes.io claims")
	}
	if k.Namespace != ns || k.ServiceAccount.Name != name || k.ServiceAccount.UID == "" {
		return deny("kubernetes.io claims do not match the subject")
	}
	bound, err := boundRefs(k)
	if err != nil {
		return TokenInfo{}, authz.Deny(authz.ReasonInvalidToken, err)
	}
	ti := NewTokenInfo(ns, name, k.ServiceAccount.UID, c.Expiry.Time())
	ti.Bound = bound
	return ti, nil
}

// boundRefs lists the objects a token is bound to, as the API server's own
// authenticator checks them: the Secret and the Pod; the Node only when the
// token is bound to the Node itself (in a pod-bound token the node claim is
// informational, and its uid may be empty). A reference without a name or a
// uid cannot be checked, so it is refused.
func boundRefs(k *KubernetesInfo) ([]BoundRef, error) {
	var refs []BoundRef
	add := func(kind BoundKind, r *ObjectRef, namespaced bool) error {
		if r == nil {
			return nil
		}
		if r.Name == "" || r.UID == "" {
			return fmt.Errorf("kubernetes.io %s reference without name or uid", kind)
		}
		key := r.Name
		if namespaced {
			key = k.Namespace + "/" + r.Name
		}
		refs = append(refs, BoundRef{Kind: kind, Key: key, UID: r.UID})
		return nil
	}
	node := k.Node
	if k.Pod != nil {
		node = nil
	}
	if err := errors.Join(add(BoundPod, k.Pod, true), add(BoundSecret, k.Secret, true), add(BoundNode, node, false)); err != nil {
		return nil, err
	}
	return refs, nil
}
