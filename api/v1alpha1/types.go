package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CredentialPolicy is one route of credinject configured as a resource: the
// requests it covers (hosts, path prefixes), the identities it serves, the
// Vault source of each identity's credential and how the credential is
// injected. Every replica serves every accepted policy; one replica writes
// status.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=credpol,categories=credinject
// +kubebuilder:printcolumn:name="Hosts",type=string,JSONPath=`.spec.hosts`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.source.type`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CredentialPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CredentialPolicySpec   `json:"spec"`
	Status CredentialPolicyStatus `json:"status,omitempty"`
}

// CredentialPolicyList is a list of CredentialPolicy.
//
// +kubebuilder:object:root=true
type CredentialPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CredentialPolicy `json:"items"`
}

// CredentialPolicySpec says which requests a policy covers and what it
// injects into them.
//
// +kubebuilder:validation:XValidation:rule="(has(self.targetRefs) && size(self.targetRefs) > 0) || (has(self.hosts) && size(self.hosts) > 0)",message="a policy needs targetRefs or hosts"
type CredentialPolicySpec struct {
	// TargetRefs are Gateway API HTTPRoutes in the policy's namespace; their
	// spec.hostnames are hosts of the policy.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	TargetRefs []TargetRef `json:"targetRefs,omitempty"`

	// Hosts are matched against the request's host without its port: exact
	// ("api.openai.com") or "*." and a suffix (one or more labels). Added to
	// the targets' hostnames. Lower case, ASCII (punycode for IDNs).
	//
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$`
	Hosts []string `json:"hosts,omitempty"`

	// Paths are request path prefixes ("/v1/"); the longest matching prefix
	// among the policies of a host wins. Empty: every path.
	//
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=1024
	// +kubebuilder:validation:items:Pattern=`^/[^\s?#]*$`
	Paths []string `json:"paths,omitempty"`

	// Subjects are the identities the policy serves; a caller outside them
	// gets 403 subject_not_allowed. Empty: every identity Vault serves.
	//
	// +optional
	Subjects *Subjects `json:"subjects,omitempty"`

	// Source is where each identity's credential comes from.
	Source Source `json:"source"`

	// Vault overrides the global vault.* settings for this policy.
	//
	// +optional
	Vault *VaultOverride `json:"vault,omitempty"`

	// Inject says how the credential is written into the request.
	Inject Inject `json:"inject"`
}

// TargetRef names a Gateway API HTTPRoute in the policy's namespace.
//
// +kubebuilder:validation:XValidation:rule="self.group == 'gateway.networking.k8s.io' && self.kind == 'HTTPRoute'",message="only gateway.networking.k8s.io HTTPRoute targets are supported"
type TargetRef struct {
	// +kubebuilder:validation:MaxLength=253
	Group string `json:"group"`
	// +kubebuilder:validation:MaxLength=63
	Kind string `json:"kind"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// Subjects select identities (namespace/serviceaccount).
type Subjects struct {
	// Namespaces whose every ServiceAccount is served.
	//
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespaces []string `json:"namespaces,omitempty"`
	// ServiceAccounts are single identities, "namespace/name".
	//
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1024
	// +kubebuilder:validation:items:MaxLength=317
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
}

// The source types (spec.source.type), as routes[].source of the config file.
const (
	SourceKV            = "kv"
	SourceVaultRead     = "vault-read"
	SourceOAuth2        = "oauth2-client-credentials"
	SourceIdentityToken = "vault-identity-token"
)

// Source is the Vault source of a policy's credential, with the semantics of
// the config file's routes[].source.
//
// +kubebuilder:validation:XValidation:rule="self.type == 'oauth2-client-credentials' || (!has(self.tokenURL) && !has(self.scopes) && !has(self.clientAuth))",message="tokenURL, scopes and clientAuth are only for type oauth2-client-credentials"
// +kubebuilder:validation:XValidation:rule="self.type != 'oauth2-client-credentials' || has(self.tokenURL)",message="type oauth2-client-credentials needs tokenURL"
// +kubebuilder:validation:XValidation:rule="!(self.type in ['vault-read', 'vault-identity-token']) || has(self.path)",message="types vault-read and vault-identity-token need their own path"
type Source struct {
	// Type is kv (path is a KV v2 path under the kvMount), vault-read (any
	// Vault path, its lease kept), oauth2-client-credentials (path is the KV
	// v2 secret with client_id and client_secret) or vault-identity-token
	// (path is identity/oidc/token/<role>).
	//
	// +kubebuilder:default=kv
	// +kubebuilder:validation:Enum=kv;vault-read;oauth2-client-credentials;vault-identity-token
	Type string `json:"type"`

	// Path is a Vault path template: relative, no "..", placeholders
	// {namespace} and {serviceaccount}, each bounded by '/', an end or a
	// character no Kubernetes name contains (such as '_'). Empty (kv and
	// oauth2 only): the global vault.path.
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/') && !self.contains('..')",message="path must be relative, without '..'"
	// +kubebuilder:validation:XValidation:rule="self.replace('{namespace}', '').replace('{serviceaccount}', '').matches('^[^{}]*$')",message="path has an unknown or unbalanced placeholder (use {namespace}, {serviceaccount})"
	// +kubebuilder:validation:XValidation:rule="!self.matches('[a-z0-9.}-][{](namespace|serviceaccount)[}]') && !self.matches('[{](namespace|serviceaccount)[}][a-z0-9.{-]')",message="a placeholder touches a character Kubernetes names contain, so two identities could expand to the same path: put '/' or a character such as '_' on both sides"
	Path string `json:"path,omitempty"`

	// TokenURL is the OAuth2 token endpoint (oauth2-client-credentials).
	//
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^https?://[^\s/?#]+`
	TokenURL string `json:"tokenURL,omitempty"`

	// Scopes are asked for with the client credentials grant.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:items:Pattern=`^[^\s"\\]+$`
	Scopes []string `json:"scopes,omitempty"`

	// ClientAuth is how the client authenticates to the token endpoint:
	// basic (default) or post.
	//
	// +optional
	// +kubebuilder:validation:Enum=basic;post
	ClientAuth string `json:"clientAuth,omitempty"`
}

// VaultOverride replaces global vault.* settings for one policy; an empty
// field keeps the global value.
type VaultOverride struct {
	// Role is the Vault role each identity logs in with.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^\s?#]+$`
	Role string `json:"role,omitempty"`
	// AuthMount is the mount of the kubernetes or jwt auth method.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^\s?#]+$`
	AuthMount string `json:"authMount,omitempty"`
	// KVMount is the KV v2 mount of kv and oauth2 sources.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^\s?#]+$`
	KVMount string `json:"kvMount,omitempty"`
	// Namespace is the Vault Enterprise / HCP namespace.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^\s\x00-\x1f]*$`
	Namespace string `json:"namespace,omitempty"`
}

// Inject writes the credential into the request: one header (header and
// value), more headers, Basic auth, query parameters, dynamic metadata, or
// an AWS Signature Version 4 over the request; the shapes combine. Query,
// metadata and sign need gRPC ext_authz (credinject with listen.http off);
// otherwise the policy is Invalid.
//
// +kubebuilder:validation:XValidation:rule="has(self.header) == has(self.value)",message="header and value go together"
// +kubebuilder:validation:XValidation:rule="has(self.header) || has(self.headers) || has(self.basic) || has(self.query) || has(self.metadata) || has(self.sign)",message="inject needs a shape: header and value, headers, basic, query, metadata or sign"
// +kubebuilder:validation:XValidation:rule="!has(self.sign) || !has(self.query)",message="query cannot go with sign: parameters set after signing would break the signature"
// +kubebuilder:validation:XValidation:rule="!(has(self.basic) && has(self.sign))",message="basic cannot go with sign: both set authorization"
// +kubebuilder:validation:XValidation:rule="!(has(self.basic) || has(self.sign)) || ((!has(self.header) || self.header.lowerAscii() != 'authorization') && (!has(self.headers) || self.headers.all(h, h.name.lowerAscii() != 'authorization')))",message="basic and sign set authorization: header and headers may not"
type Inject struct {
	// Header is the header set (overwriting the workload's); lower case is
	// how it is compared.
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern="^[!#$%&'*+.^_\x60|~0-9A-Za-z-]+$"
	Header string `json:"header,omitempty"`
	// Value is a template of the credential's fields: "Bearer {api_key}".
	//
	// +optional
	Value Template `json:"value,omitempty"`
	// Headers are more headers, set together, overwriting.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Headers []HeaderTemplate `json:"headers,omitempty"`
	// Basic sets authorization: Basic base64(username:password).
	//
	// +optional
	Basic *Basic `json:"basic,omitempty"`
	// Query parameters set on the upstream request (gRPC only).
	//
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	Query []QueryTemplate `json:"query,omitempty"`
	// Metadata keys placed in the CheckResponse's dynamic metadata, for a
	// later filter (gRPC only); namespace, serviceaccount and route are
	// credinject's own.
	//
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^[A-Za-z0-9_.-]{1,128}$') && !(k in ['namespace', 'serviceaccount', 'route']))",message="metadata keys are letters, digits, '_', '.', '-' (1 to 128), other than namespace, serviceaccount and route"
	Metadata map[string]Template `json:"metadata,omitempty"`
	// Sign signs each request with the credential's access_key, secret_key
	// and optional security_token (gRPC only).
	//
	// +optional
	Sign *Sign `json:"sign,omitempty"`
}

// Template is a value template of the credential's fields: "Bearer
// {api_key}".
//
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=4096
// +kubebuilder:validation:XValidation:rule="!self.matches('[\\x00-\\x08\\x0a-\\x1f\\x7f]')",message="value has a control character"
// +kubebuilder:validation:XValidation:rule="self.matches('[{][A-Za-z0-9_.-]+[}]') && !self.matches('[{]([^{}]*[^{}A-Za-z0-9_.-][^{}]*)?[}]')",message="value needs {field} placeholders naming credential fields (letters, digits, '_', '.', '-')"
type Template string

// HeaderTemplate is one header of inject.headers.
type HeaderTemplate struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern="^[!#$%&'*+.^_\x60|~0-9A-Za-z-]+$"
	Name  string   `json:"name"`
	Value Template `json:"value"`
}

// QueryTemplate is one query parameter of inject.query.
type QueryTemplate struct {
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._~-]{1,128}$`
	Name  string   `json:"name"`
	Value Template `json:"value"`
}

// Basic is Basic auth's username and password, templates of the
// credential's fields (at least one with a placeholder).
//
// +kubebuilder:validation:XValidation:rule="self.username.matches('[{][A-Za-z0-9_.-]+[}]') || (has(self.password) && self.password.matches('[{][A-Za-z0-9_.-]+[}]'))",message="username or password needs a {field} placeholder"
type Basic struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="!self.matches('[\\x00-\\x1f\\x7f]')",message="username has a control character"
	Username string `json:"username"`
	// Password may be empty (an API key as the username, as Stripe's).
	//
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="!self.matches('[\\x00-\\x1f\\x7f]')",message="password has a control character"
	Password string `json:"password,omitempty"`
}

// Sign is an AWS Signature Version 4 over each request.
type Sign struct {
	// +kubebuilder:validation:Enum=aws-sigv4
	Type string `json:"type"`
	// Service is the signing service: s3, bedrock, execute-api...
	//
	// +kubebuilder:validation:Pattern=`^[a-z0-9-]{1,64}$`
	Service string `json:"service"`
	// Region is the signing region: us-east-1...
	//
	// +kubebuilder:validation:Pattern=`^[a-z0-9-]{1,64}$`
	Region string `json:"region"`
	// Payload is body (default: the body's SHA-256; the gateway must send
	// it, Envoy's with_request_body) or unsigned (UNSIGNED-PAYLOAD).
	//
	// +optional
	// +kubebuilder:validation:Enum=body;unsigned
	Payload string `json:"payload,omitempty"`
}

// CredentialPolicyStatus is written by the replica holding the leader
// election lease.
type CredentialPolicyStatus struct {
	// ObservedGeneration is the metadata.generation the conditions describe.
	//
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Accepted (reasons Accepted, Invalid, Conflicted,
	// TargetNotFound) and Enforced (True once the serving replicas answer
	// with the policy).
	//
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// The condition types and reasons of CredentialPolicyStatus.
const (
	ConditionAccepted = "Accepted"
	ConditionEnforced = "Enforced"

	ReasonAccepted       = "Accepted"
	ReasonInvalid        = "Invalid"
	ReasonConflicted     = "Conflicted"
	ReasonTargetNotFound = "TargetNotFound"
	ReasonEnforced       = "Enforced"
	ReasonPending        = "Pending"
)
