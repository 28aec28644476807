package events

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"k8s.io/apimachinery/pkg/util/validation"
)

const validEvent = `{"specversion":"1.0","type":"io.credinject.credential.rotated","source":"credinject/rotate",` +
	`"id":"8d7f6b0e-4c1a-4f0e-9a57-0f8d2a3c1b2e","time":"2026-03-01T12:00:00Z",` +
	`"datacontenttype":"application/json","data":{"namespace":"egress-test","serviceAccount":"default"}}`

// event builds a structured event around data with attribute overrides;
// a nil override value deletes the attribute.
func event(t testing.TB, data any, override map[string]any) []byte {
	t.Helper()
	m := map[string]any{
		"specversion":     "1.0",
		"type":            EventType,
		"source":          "test",
		"id":              "1",
		"time":            "2026-03-01T12:00:00Z",
		"datacontenttype": "application/json",
		"data":            data,
	}
	for k, v := range override {
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseValid(t *testing.T) {
	tests := map[string]struct {
		in   []byte
		want Rotation
		meta Meta
	}{
		"example from FORMAT.md": {
			in:   []byte(validEvent),
			want: Rotation{Namespace: "egress-test", ServiceAccount: "default"},
			meta: Meta{ID: "8d7f6b0e-4c1a-4f0e-9a57-0f8d2a3c1b2e", Source: "credinject/rotate",
				Time: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
		},
		"namespace only": {
			in:   event(t, map[string]any{"namespace": "team-a"}, nil),
			want: Rotation{Namespace: "team-a"},
		},
		"everything": {
			in: event(t, map[string]any{}, nil),
		},
		"explicit empty strings": {
			in: event(t, map[string]any{"namespace": "", "serviceAccount": "", "route": ""}, nil),
		},
		"null fields": {
			in:   event(t, map[string]any{"namespace": "team-a", "serviceAccount": nil, "route": nil}, nil),
			want: Rotation{Namespace: "team-a"},
		},
		"route only": {
			in:   event(t, map[string]any{"route": "github.com"}, nil),
			want: Rotation{Route: "github.com"},
		},
		"all fields, dotted service account": {
			in:   event(t, map[string]any{"namespace": "a", "serviceAccount": "b.c-d", "route": "r_1"}, nil),
			want: Rotation{Namespace: "a", ServiceAccount: "b.c-d", Route: "r_1"},
		},
		"no time, no datacontenttype": {
			in:   event(t, map[string]any{"namespace": "a"}, map[string]any{"time": nil, "datacontenttype": nil}),
			want: Rotation{Namespace: "a"},
		},
		"content type with parameters": {
			in:   event(t, map[string]any{"namespace": "a"}, map[string]any{"datacontenttype": "application/json; charset=utf-8"}),
			want: Rotation{Namespace: "a"},
		},
		"extension attributes and unknown data fields ignored": {
			in: event(t, map[string]any{"namespace": "a", "version": 7, "extra": map[string]any{"x": 1}},
				map[string]any{"traceparent": "00-abc-def-01", "subject": "a/b"}),
			want: Rotation{Namespace: "a"},
		},
		"fractional time": {
			in:   event(t, map[string]any{}, map[string]any{"time": "2026-03-01T12:00:00.123456789+02:00"}),
			meta: Meta{Time: time.Date(2026, 3, 1, 10, 0, 0, 123456789, time.UTC)},
		},
		"surrounding whitespace": {
			in:   []byte("\n  " + validEvent + "\r\n"),
			want: Rotation{Namespace: "egress-test", ServiceAccount: "default"},
		},
		"longest names": {
			in: event(t, map[string]any{
				"namespace":      strings.Repeat("n", 63),
				"serviceAccount": strings.Repeat("s", 126) + "." + strings.Repeat("s", 126),
			}, nil),
			want: Rotation{Namespace: strings.Repeat("n", 63), ServiceAccount: strings.Repeat("s", 126) + "." + strings.Repeat("s", 126)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, meta, err := Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if r != tc.want {
				t.Errorf("rotation = %+v, want %+v", r, tc.want)
			}
			if tc.meta.ID != "" && (meta.ID != tc.meta.ID || meta.Source != tc.meta.Source) {
				t.Errorf("meta = %+v, want %+v", meta, tc.meta)
			}
			if !tc.meta.Time.IsZero() && !meta.Time.Equal(tc.meta.Time) {
				t.Errorf("time = %v, want %v", meta.Time, tc.meta.Time)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	ok := map[string]any{"namespace": "a", "serviceAccount": "b"}
	tests := map[string]struct {
		in      []byte
		wantErr string // substring of the message
		tooBig  bool
	}{
		"empty":                 {in: nil, wantErr: "empty message"},
		"blank":                 {in: []byte(" \n"), wantErr: "empty message"},
		"not JSON":              {in: []byte("rotate egress-test/default"), wantErr: "not JSON"},
		"truncated JSON":        {in: []byte(validEvent[:40]), wantErr: "not JSON"},
		"trailing garbage":      {in: []byte(validEvent + "x"), wantErr: "not JSON"},
		"JSON array":            {in: []byte(`[1,2]`), wantErr: "not a JSON object"},
		"JSON string":           {in: []byte(`"hello"`), wantErr: "not a JSON object"},
		"JSON null":             {in: []byte(`null`), wantErr: "not a JSON object"},
		"missing specversion":   {in: event(t, ok, map[string]any{"specversion": nil}), wantErr: "missing specversion"},
		"wrong specversion":     {in: event(t, ok, map[string]any{"specversion": "0.3"}), wantErr: `specversion "0.3", want "1.0"`},
		"numeric specversion":   {in: event(t, ok, map[string]any{"specversion": 1.0}), wantErr: "specversion is not a string"},
		"missing type":          {in: event(t, ok, map[string]any{"type": nil}), wantErr: "missing type"},
		"wrong type":            {in: event(t, ok, map[string]any{"type": "com.example.other"}), wantErr: `type "com.example.other"`},
		"type differs in case":  {in: event(t, ok, map[string]any{"type": "IO.credinject.credential.rotated"}), wantErr: "type"},
		"missing id":            {in: event(t, ok, map[string]any{"id": nil}), wantErr: "missing id"},
		"empty id":              {in: event(t, ok, map[string]any{"id": ""}), wantErr: "empty id"},
		"id too long":           {in: event(t, ok, map[string]any{"id": strings.Repeat("i", MaxIDLength+1)}), wantErr: "id longer than"},
		"missing source":        {in: event(t, ok, map[string]any{"source": nil}), wantErr: "missing source"},
		"source not a string":   {in: event(t, ok, map[string]any{"source": 3}), wantErr: "source is not a string"},
		"source too long":       {in: event(t, ok, map[string]any{"source": strings.Repeat("s", MaxSourceLength+1)}), wantErr: "source longer than"},
		"bad time":              {in: event(t, ok, map[string]any{"time": "yesterday"}), wantErr: "time \"yesterday\" is not an RFC 3339"},
		"wrong content type":    {in: event(t, ok, map[string]any{"datacontenttype": "text/plain"}), wantErr: "datacontenttype"},
		"data_base64":           {in: event(t, nil, map[string]any{"data": nil, "data_base64": "e30="}), wantErr: "data_base64"},
		"missing data":          {in: event(t, nil, map[string]any{"data": nil}), wantErr: "missing data"},
		"null data":             {in: []byte(strings.Replace(validEvent, `{"namespace":"egress-test","serviceAccount":"default"}`, "null", 1)), wantErr: "data is not a JSON object"},
		"data is a string":      {in: event(t, "egress-test/default", nil), wantErr: "data is not a JSON object"},
		"data is an array":      {in: event(t, []string{"a"}, nil), wantErr: "data is not a JSON object"},
		"namespace not string":  {in: event(t, map[string]any{"namespace": 5}, nil), wantErr: "namespace is not a string"},
		"sa without namespace":  {in: event(t, map[string]any{"serviceAccount": "default"}, nil), wantErr: `serviceAccount "default" without a namespace`},
		"upper-case namespace":  {in: event(t, map[string]any{"namespace": "Egress"}, nil), wantErr: "namespace \"Egress\" is not a DNS-1123 label"},
		"namespace with dot":    {in: event(t, map[string]any{"namespace": "a.b"}, nil), wantErr: "not a DNS-1123 label"},
		"namespace leading -":   {in: event(t, map[string]any{"namespace": "-a"}, nil), wantErr: "not a DNS-1123 label"},
		"namespace trailing -":  {in: event(t, map[string]any{"namespace": "a-"}, nil), wantErr: "not a DNS-1123 label"},
		"namespace too long":    {in: event(t, map[string]any{"namespace": strings.Repeat("n", 64)}, nil), wantErr: "not a DNS-1123 label"},
		"sa with slash":         {in: event(t, map[string]any{"namespace": "a", "serviceAccount": "b/c"}, nil), wantErr: "not a DNS-1123 subdomain"},
		"sa empty label":        {in: event(t, map[string]any{"namespace": "a", "serviceAccount": "b..c"}, nil), wantErr: "not a DNS-1123 subdomain"},
		"sa label ends with -":  {in: event(t, map[string]any{"namespace": "a", "serviceAccount": "b-.c"}, nil), wantErr: "not a DNS-1123 subdomain"},
		"sa too long":           {in: event(t, map[string]any{"namespace": "a", "serviceAccount": strings.Repeat("s", 254)}, nil), wantErr: "not a DNS-1123 subdomain"},
		"bad route":             {in: event(t, map[string]any{"route": "GitHub"}, nil), wantErr: "route \"GitHub\" is not a route name"},
		"long value is cut":     {in: event(t, map[string]any{"namespace": strings.Repeat("X", 500)}, nil), wantErr: "… (500 bytes)"},
		"oversized":             {in: append(event(t, ok, nil), make([]byte, MaxEventSize)...), wantErr: "too large", tooBig: true},
		"oversized whitespace":  {in: []byte(validEvent + strings.Repeat(" ", MaxEventSize)), wantErr: "limit 65536", tooBig: true},
		"binary-mode data only": {in: []byte(`{"namespace":"a","serviceAccount":"b"}`), wantErr: "missing specversion"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, meta, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse = %+v, %+v, want an error", r, meta)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if got := errors.Is(err, ErrTooLarge); got != tc.tooBig {
				t.Errorf("errors.Is(ErrTooLarge) = %v, want %v", got, tc.tooBig)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes long; bad values must be cut", len(err.Error()))
			}
			if r != (Rotation{}) || meta != (Meta{}) {
				t.Errorf("Parse returned %+v, %+v with an error", r, meta)
			}
		})
	}
}

func TestNewEventRoundTrip(t *testing.T) {
	tests := map[string]Rotation{
		"identity":  {Namespace: "egress-test", ServiceAccount: "default"},
		"namespace": {Namespace: "egress-test"},
		"all":       {},
		"route":     {Namespace: "a", ServiceAccount: "b", Route: "github"},
	}
	for name, r := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := NewEvent("credinject/rotate", r, testTime)
			if err != nil {
				t.Fatalf("NewEvent: %v", err)
			}
			got, meta, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(%s): %v", b, err)
			}
			if got != r {
				t.Errorf("round trip = %+v, want %+v", got, r)
			}
			if meta.Source != "credinject/rotate" {
				t.Errorf("source = %q", meta.Source)
			}
			if _, err := uuid.Parse(meta.ID); err != nil {
				t.Errorf("id %q is not a UUID: %v", meta.ID, err)
			}
			if meta.Time.Location() != time.UTC || !meta.Time.Equal(testTime) {
				t.Errorf("time = %v, want the time given to NewEvent (%v) in UTC", meta.Time, testTime)
			}
			var raw map[string]any
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			if raw["datacontenttype"] != "application/json" || raw["specversion"] != "1.0" || raw["type"] != EventType {
				t.Errorf("envelope = %s", b)
			}
			if _, ok := raw["data"].(map[string]any)["route"]; ok != (r.Route != "") {
				t.Errorf("route present = %v in %s", ok, b)
			}
		})
	}
	a, _ := NewEvent("s", Rotation{}, testTime)
	b, _ := NewEvent("s", Rotation{}, testTime)
	_, ma, _ := Parse(a)
	_, mb, _ := Parse(b)
	if ma.ID == mb.ID {
		t.Errorf("two events share the id %q", ma.ID)
	}
}

func TestNewEventInvalid(t *testing.T) {
	tests := map[string]struct {
		source string
		r      Rotation
	}{
		"empty source":         {"", Rotation{}},
		"long source":          {strings.Repeat("s", MaxSourceLength+1), Rotation{}},
		"sa without namespace": {"s", Rotation{ServiceAccount: "default"}},
		"bad namespace":        {"s", Rotation{Namespace: "Not_A_Label"}},
		"bad route":            {"s", Rotation{Namespace: "a", Route: "-x"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if b, err := NewEvent(tc.source, tc.r, testTime); !errors.Is(err, ErrInvalidRotation) {
				t.Errorf("NewEvent = %s, %v; want ErrInvalidRotation", b, err)
			}
		})
	}
}

var testTime = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func TestRotationString(t *testing.T) {
	tests := map[string]struct {
		r    Rotation
		want string
	}{
		"all":       {Rotation{}, "*"},
		"namespace": {Rotation{Namespace: "a"}, "a/*"},
		"identity":  {Rotation{Namespace: "a", ServiceAccount: "b"}, "a/b"},
		"route":     {Rotation{Namespace: "a", ServiceAccount: "b", Route: "r"}, "a/b route=r"},
		"all route": {Rotation{Route: "r"}, "* route=r"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.r.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

// maxErrorLength bounds a Parse error's text: the attribute it names and a
// quoted prefix of a bad value, never the message.
const maxErrorLength = 512

// routeName is the README's rule for a route name, written apart from
// authz.IsRouteName.
var routeName = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$`)

// FuzzParse: no message makes Parse panic; every error wraps ErrMalformed
// and is short; an accepted event names a scope Kubernetes's own name
// validation accepts, and re-encodes to the same scope.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validEvent))
	f.Add(event(f, map[string]any{"namespace": "a"}, nil))
	f.Add(event(f, map[string]any{"namespace": "a", "serviceAccount": "b.c", "route": "r"}, nil))
	f.Add(event(f, map[string]any{}, map[string]any{"time": nil}))
	f.Add(event(f, map[string]any{"serviceAccount": "x"}, nil))
	f.Add(event(f, "str", nil))
	f.Add(event(f, nil, map[string]any{"data": nil, "data_base64": "e30="}))
	f.Add([]byte(`{"specversion":"1.0"}`))
	f.Add([]byte(`{"data":{"namespace":"\u00e9"}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{`))
	f.Add([]byte(""))
	f.Add([]byte("\xff\xfe"))
	f.Add(event(f, map[string]any{"namespace": strings.Repeat("a", 64)}, nil))
	f.Add(event(f, map[string]any{"namespace": "a", "serviceAccount": strings.Repeat("b.", 127) + "b"}, nil))
	f.Add(event(f, map[string]any{"namespace": "a", "route": strings.Repeat("r", 300)}, nil))
	f.Add(event(f, map[string]any{"namespace": "A"}, map[string]any{"specversion": strings.Repeat("x", 10000)}))
	f.Add([]byte(`{"specversion":"1.0","Specversion":"2.0","type":"io.credinject.credential.rotated","id":"1","source":"s","data":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, meta, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			// An error quotes at most a short prefix of what it names.
			if n := len(err.Error()); n > maxErrorLength {
				t.Fatalf("a %d-byte error for a %d-byte message: %.200q…", n, len(b), err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid rotation %+v: %v", r, err)
		}
		// The scope's names are what Kubernetes itself accepts (its own
		// validation, not authz's), and a service account is never
		// named without its namespace.
		if r.Namespace != "" && len(validation.IsDNS1123Label(r.Namespace)) > 0 ||
			r.ServiceAccount != "" && (r.Namespace == "" || len(validation.IsDNS1123Subdomain(r.ServiceAccount)) > 0) ||
			r.Route != "" && !routeName.MatchString(r.Route) {
			t.Fatalf("Parse accepted a scope with an invalid name: %+v", r)
		}
		if meta.ID == "" || meta.Source == "" || len(meta.ID) > MaxIDLength || len(meta.Source) > MaxSourceLength {
			t.Fatalf("Parse accepted an empty or overlong id or source: %d, %d bytes", len(meta.ID), len(meta.Source))
		}
		again, err := NewEvent(meta.Source, r, testTime)
		if err != nil {
			t.Fatalf("NewEvent(%q, %+v): %v", meta.Source, r, err)
		}
		r2, _, err := Parse(again)
		if err != nil || r2 != r {
			t.Fatalf("re-encoded %+v parsed as %+v, %v", r, r2, err)
		}
	})
}
