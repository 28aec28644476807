package bench

import (
	"encoding/hex"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// What the load asks for: an OpenAI call through the egress gateway.
const (
	Host   = "api.openai.com"
	Path   = "/v1/chat/completions"
	Method = "POST"
)

// Identity is one workload: its ServiceAccount, a token the API server
// issued for it, and the credential stored for it in Vault.
type Identity struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Token          string `json:"-"`
	// APIKey is the identity's own key; an allow must inject
	// "Bearer <APIKey>".
	APIKey string `json:"-"`
}

// Key is "namespace/serviceaccount".
func (id Identity) Key() string { return id.Namespace + "/" + id.ServiceAccount }

// Requests hands out Check requests over a set of identities, round robin.
// It is safe for concurrent use.
type Requests struct {
	ids    []Identity
	seq    atomic.Uint64
	stream atomic.Uint64
}

// NewRequests spreads requests over ids.
func NewRequests(ids []Identity) *Requests {
	if len(ids) == 0 {
		panic("bench: NewRequests with no identities")
	}
	return &Requests{ids: ids}
}

// Next returns a fresh request for the next identity, and that identity.
func (r *Requests) Next() (*authv3.CheckRequest, *Identity) {
	id := r.nextIdentity()
	return NewCheckRequest(id, r.stream.Add(1)), id
}

// nextIdentity returns the next identity, for targets that send their own
// requests (behind a gateway).
func (r *Requests) nextIdentity() *Identity {
	return &r.ids[(r.seq.Add(1)-1)%uint64(len(r.ids))]
}

// NewCheckRequest builds the request Envoy's ext_authz HTTP filter sends for
// a workload's POST to the egress gateway: peer addresses, the request time,
// and the HTTP attributes with the headers as a map (Envoy's default, without
// encode_raw_headers), a fresh x-request-id each time. A new request is built
// per call, as Envoy does, so its cost is part of the client's.
func NewCheckRequest(id *Identity, stream uint64) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: socketAddress("10.244.1.17", 40000+uint32(stream%20000))},
		Destination: &authv3.AttributeContext_Peer{
			Address: socketAddress("10.96.0.20", 80),
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Now()),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:     strconv.FormatUint(stream, 10),
				Method: Method,
				Headers: map[string]string{
					":authority":        Host,
					":method":           Method,
					":path":             Path,
					":scheme":           "http",
					"authorization":     "Bearer " + id.Token,
					"content-type":      "application/json",
					"content-length":    "128",
					"user-agent":        "python-httpx/0.27.0",
					"x-forwarded-proto": "http",
					"x-request-id":      requestID(),
				},
				Path:     Path,
				Host:     Host,
				Scheme:   "http",
				Protocol: "HTTP/1.1",
				Size:     128,
			},
		},
	}}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// requestID is a UUIDv4-shaped id, as Envoy generates for x-request-id.
func requestID() string {
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i], b[8+i] = byte(hi>>(8*i)), byte(lo>>(8*i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
