package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func allow(values ...string) *authv3.CheckResponse {
	var hs []*corev3.HeaderValueOption
	for _, v := range values {
		hs = append(hs, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "authorization", Value: v}})
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: hs}},
	}
}

func deny(httpStatus int, header, reason string) *authv3.CheckResponse {
	var hs []*corev3.HeaderValueOption
	if header != "" {
		hs = append(hs, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: header, Value: reason}})
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(httpStatus)}, Headers: hs,
		}},
	}
}

func TestClassify(t *testing.T) {
	const want = "Bearer sk-mine"
	for name, tc := range map[string]struct {
		resp *authv3.CheckResponse
		err  error
		want string
	}{
		"own key":                  {resp: allow(want), want: ""},
		"another identity's key":   {resp: allow("Bearer sk-yours"), want: ErrWrongKey},
		"the workload's own token": {resp: allow("Bearer eyJ.x.y"), want: ErrWrongKey},
		"two authorization values": {resp: allow(want, "Bearer sk-yours"), want: ErrWrongKey},
		"no header":                {resp: allow(), want: ErrMissingKey},
		"credinject deny":          {resp: deny(403, "x-credinject-reason", "vault_denied"), want: "403/vault_denied"},
		"authorino deny":           {resp: deny(401, "x-ext-auth-reason", "not authenticated"), want: "401/not authenticated"},
		"deny without reason":      {resp: deny(503, "", ""), want: "503/-"},
		"deny without status":      {resp: deny(0, "x-credinject-reason", "no_route"), want: "403/no_route"},
		"denied status only": {
			resp: &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.Unavailable)}},
			want: "grpc-status/Unavailable",
		},
		"transport error": {err: status.Error(codes.DeadlineExceeded, "slow"), want: "grpc/DeadlineExceeded"},
	} {
		t.Run(name, func(t *testing.T) {
			if got := Classify(tc.resp, tc.err, want); got != tc.want {
				t.Errorf("Classify = %q, want %q", got, tc.want)
			}
		})
	}
}

// liar is a deliberately wrong ext_authz server, the thing the harness must
// catch: it answers "good" with its own key, "thief" with good's key, and
// denies "orphan" as credinject denies an identity without a credential.
type liar struct {
	authv3.UnimplementedAuthorizationServer
	byToken map[string]*authv3.CheckResponse
}

func (l *liar) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	tok := strings.TrimPrefix(req.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"], "Bearer ")
	if r, ok := l.byToken[tok]; ok {
		return r, nil
	}
	return nil, status.Error(codes.Internal, "unknown token")
}

func liarTarget(t *testing.T) (*Target, []Identity) {
	t.Helper()
	ids := []Identity{
		{Namespace: "ns", ServiceAccount: "good", Token: "tok-good", APIKey: "sk-good"},
		{Namespace: "ns", ServiceAccount: "thief", Token: "tok-thief", APIKey: "sk-thief"},
		{Namespace: "ns", ServiceAccount: "orphan", Token: "tok-orphan", APIKey: "sk-orphan"},
	}
	srv, err := Serve(&liar{byToken: map[string]*authv3.CheckResponse{
		"tok-good":   allow("Bearer sk-good"),
		"tok-thief":  allow("Bearer sk-good"),
		"tok-orphan": deny(403, "x-credinject-reason", "no_credential"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	conns, err := Dial(context.Background(), srv.Addr, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conns.Close()
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	return &Target{Name: "liar", Client: conns}, ids
}

// checkCounts asserts that each of the three identities' outcomes was
// counted in its own class. Requests go round robin and every request sent
// is answered, so the classes differ by at most one.
func checkCounts(t *testing.T, r *Result) {
	t.Helper()
	if r.Sent == 0 || r.Requests != r.Sent {
		t.Fatalf("sent %d, answered %d: every request must be answered", r.Sent, r.Requests)
	}
	if len(r.Errors) != 2 {
		t.Fatalf("errors %v, want exactly wrong_key and 403/no_credential", r.Errors)
	}
	wrong, denied := r.Errors[ErrWrongKey], r.Errors["403/no_credential"]
	for name, n := range map[string]int64{"wrong_key": wrong, "403/no_credential": denied} {
		if d := n - r.OK; d < -1 || d > 1 {
			t.Errorf("%s = %d, ok = %d: want a third of the requests each (%v)", name, n, r.OK, r.Errors)
		}
	}
	if r.OK+wrong+denied != r.Requests {
		t.Errorf("ok %d + wrong %d + denied %d != requests %d", r.OK, wrong, denied, r.Requests)
	}
	if r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 || r.Latency.P99 < r.Latency.P50 {
		t.Errorf("latency percentiles out of order: %+v", r.Latency)
	}
}

func TestClosedLoopCountsWrongKeysAndDenies(t *testing.T) {
	target, ids := liarTarget(t)
	r, err := RunClosed(context.Background(), target, NewRequests(ids), Closed{Concurrency: 4, Duration: 50 * time.Millisecond, Timeout: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, r)
	if r.Service != nil {
		t.Errorf("closed loop has a service-time distribution: %+v", r.Service)
	}
}

func TestOpenLoopCountsWrongKeysAndDenies(t *testing.T) {
	target, ids := liarTarget(t)
	// 30 requests on the schedule, whatever the timing.
	r, err := RunOpen(context.Background(), target, NewRequests(ids), Open{Rate: 300, Duration: 100 * time.Millisecond, Timeout: 5 * time.Second, MaxInFlight: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, r)
	if r.Sent != 30 || r.OK != 10 || r.Errors[ErrWrongKey] != 10 {
		t.Errorf("sent %d ok %d errors %v, want 30 sent, 10 of each", r.Sent, r.OK, r.Errors)
	}
	if r.Service == nil || r.Service.P50 > r.Latency.Max {
		t.Errorf("service time %+v should be at most the latency from the due time %+v", r.Service, r.Latency)
	}
}

func TestNoopTargetIsCorrect(t *testing.T) {
	srv, err := Serve(NewNoop())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	conns, err := Dial(context.Background(), srv.Addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer conns.Close()
	ids := []Identity{{Namespace: "a", ServiceAccount: "b", Token: "t", APIKey: "k"}}
	target := &Target{Name: TargetNoop, Client: conns, Want: func(*Identity) string { return NoopValue }}
	r, err := RunOpen(context.Background(), target, NewRequests(ids), Open{Rate: 200, Duration: 50 * time.Millisecond, Timeout: 5 * time.Second, MaxInFlight: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK != 10 || len(r.Errors) != 0 {
		t.Fatalf("ok %d errors %v, want 10 correct allows", r.OK, r.Errors)
	}
}

func TestCancelledRunReturnsError(t *testing.T) {
	target, ids := liarTarget(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := RunOpen(ctx, target, NewRequests(ids), Open{Rate: 10, Duration: time.Hour, Timeout: time.Second, MaxInFlight: 1}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("RunOpen on a cancelled context: %v, want context.Canceled", err)
	}
}

func TestNewCheckRequestIsEnvoyShaped(t *testing.T) {
	id := &Identity{Namespace: "ns", ServiceAccount: "sa", Token: "a.b.c"}
	a, b := NewCheckRequest(id, 1), NewCheckRequest(id, 2)
	h := a.GetAttributes().GetRequest().GetHttp()
	if h.GetHost() != Host || h.GetPath() != Path || h.GetMethod() != Method {
		t.Errorf("host/path/method = %s %s %s", h.GetHost(), h.GetPath(), h.GetMethod())
	}
	hs := h.GetHeaders()
	if hs["authorization"] != "Bearer a.b.c" || hs[":authority"] != Host || hs[":path"] != Path || hs[":method"] != Method {
		t.Errorf("headers %v", hs)
	}
	rid, rid2 := hs["x-request-id"], b.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"]
	if len(rid) != 36 || rid[14] != '4' || rid == rid2 {
		t.Errorf("x-request-id %q, %q: want distinct UUIDv4s", rid, rid2)
	}
}

func TestParseRates(t *testing.T) {
	got, err := ParseRates("10%, 80% ,250")
	if err != nil {
		t.Fatal(err)
	}
	want := []Rate{{Fraction: .1}, {Fraction: .8}, {PerSecond: 250}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("rate %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if got[1].of(1000) != 800 || got[2].of(1000) != 250 {
		t.Errorf("of(1000): %v, %v", got[1].of(1000), got[2].of(1000))
	}
	for _, bad := range []string{"x", "-5", "0%", "5%%"} {
		if _, err := ParseRates(bad); err == nil {
			t.Errorf("ParseRates(%q): no error", bad)
		}
	}
}

func TestMergeAndReport(t *testing.T) {
	target, ids := liarTarget(t)
	reqs := NewRequests(ids)
	var parts []*Result
	for range 2 {
		r, err := RunOpen(context.Background(), target, reqs, Open{Rate: 300, Duration: 100 * time.Millisecond, Timeout: 5 * time.Second, MaxInFlight: 8}, nil)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, r)
	}
	m := Merge(parts...)
	if m.Sent != 60 || m.OK != 20 || m.Errors[ErrWrongKey] != 20 || m.Errors["403/no_credential"] != 20 {
		t.Fatalf("merged: sent %d ok %d errors %v", m.Sent, m.OK, m.Errors)
	}
	if parts[0].Errors[ErrWrongKey] != 10 {
		t.Errorf("merging changed its inputs: %v", parts[0].Errors)
	}

	rep := &Report{Identities: 3, Closed: []*Result{m}, Sweep: parts}
	rep.Notes = notes(rep, Options{ReferenceQPS: 20, ReferenceBurst: 30})
	var text, js bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "wrong_key=20") || !strings.Contains(text.String(), "WRONG KEYS: liar") {
		t.Errorf("text report does not show the wrong keys:\n%s", text.String())
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Closed[0].Errors[ErrWrongKey] != 20 {
		t.Errorf("JSON round trip lost the errors: %+v", back.Closed[0])
	}
}
