package authz

// IdentitySource is where a request's identity comes from (identity.sources):
// the workload's service-account token in its Authorization header, or the
// mesh peer a trusted gateway vouches for (its mutual-TLS certificate's
// SPIFFE ID). Its String is the identity_source label and field.
type IdentitySource uint8

// The sources. Extend, never rename: the names are configuration values,
// metric labels and audit fields.
const (
	SourceToken IdentitySource = iota
	SourcePeer
)

// IdentitySources lists every source, in the order of the docs.
var IdentitySources = []IdentitySource{SourceToken, SourcePeer}

// String is "token" or "peer" ("" for a value outside the set).
func (s IdentitySource) String() string {
	switch s {
	case SourceToken:
		return "token"
	case SourcePeer:
		return "peer"
	}
	return ""
}

// ParseIdentitySource parses "token" or "peer".
func ParseIdentitySource(s string) (IdentitySource, bool) {
	for _, k := range IdentitySources {
		if k.String() == s {
			return k, true
		}
	}
	return 0, false
}
