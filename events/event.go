package events

// The format is read and written with plain encoding/json, not the CloudEvents
// SDK (github.com/cloudevents/sdk-go/v2/event): we accept exactly one shape
// (structured JSON, one event type, a three-field object as data), and the
// SDK would add a general decoder and its dependencies to the product binary
// that we would still have to narrow down. Decoding into maps of raw members
// matches attribute names exactly (encoding/json's struct decoding ignores
// case) and lets every error name the attribute that is wrong.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"time"

	"github.com/google/uuid"

	"github.com/credinject/credinject/authz"
)

// The event format. FORMAT.md documents it for publishers.
const (
	// SpecVersion is the only CloudEvents version accepted.
	SpecVersion = "1.0"
	// EventType is the CloudEvents type of a rotation notice.
	EventType = "io.credinject.credential.rotated"
	// DataContentType is the media type of the data attribute.
	DataContentType = "application/json"
	// DefaultSubject is the NATS subject events travel on unless configured
	// otherwise (config key events.subject).
	DefaultSubject = "credinject.rotated"
	// DefaultSource is the CloudEvents source a Publisher uses when given none.
	DefaultSource = "credinject"
	// MaxEventSize caps an encoded event; larger messages are dropped unread.
	MaxEventSize = 64 << 10
	// MaxIDLength and MaxSourceLength cap the id and source attributes.
	MaxIDLength     = 256
	MaxSourceLength = 1024
)

var (
	// ErrMalformed is wrapped by every error Parse returns: the message is
	// not a valid rotation event. The rest of the message says why.
	ErrMalformed = errors.New("malformed event")
	// ErrTooLarge is wrapped (together with ErrMalformed) when a message
	// exceeds MaxEventSize.
	ErrTooLarge = errors.New("event too large")
	// ErrInvalidRotation is wrapped by Rotation.Validate and NewEvent errors.
	ErrInvalidRotation = authz.ErrInvalidScope
)

// Rotation says whose credentials changed: a Scope of the shared vocabulary
// (empty fields widen it; Validate, Covers, String and LogValue are its
// methods).
type Rotation = authz.Scope

// Meta is the envelope of a parsed event, for logs and deduplication.
type Meta struct {
	ID     string
	Source string
	// Time is the producer's timestamp; zero when the event carried none.
	Time time.Time
}

// wire is the encoded event; field order is the order of the example in
// FORMAT.md.
type wire struct {
	SpecVersion     string   `json:"specversion"`
	Type            string   `json:"type"`
	Source          string   `json:"source"`
	ID              string   `json:"id"`
	Time            string   `json:"time"`
	DataContentType string   `json:"datacontenttype"`
	Data            wireData `json:"data"`
}

type wireData struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Route          string `json:"route,omitempty"`
}

// NewEvent encodes r as a structured-mode CloudEvent from source, with a
// random UUID as id and at (in UTC) as its time.
func NewEvent(source string, r Rotation, at time.Time) ([]byte, error) {
	if source == "" {
		return nil, fmt.Errorf("events: new event: %w: empty source", ErrInvalidRotation)
	}
	if len(source) > MaxSourceLength {
		return nil, fmt.Errorf("events: new event: %w: source longer than %d bytes", ErrInvalidRotation, MaxSourceLength)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("events: new event: %w", err)
	}
	b, err := json.Marshal(wire{
		SpecVersion:     SpecVersion,
		Type:            EventType,
		Source:          source,
		ID:              uuid.NewString(),
		Time:            at.UTC().Format(time.RFC3339Nano),
		DataContentType: DataContentType,
		Data:            wireData(r),
	})
	if err != nil {
		return nil, fmt.Errorf("events: new event: %w", err)
	}
	return b, nil
}

// Parse decodes and validates one structured-mode CloudEvent. Every error
// wraps ErrMalformed (and ErrTooLarge for an oversized message) and names the
// offending attribute; it quotes at most a short prefix of a bad name and
// never the content of fields it does not know. Attribute names are matched
// exactly; extension attributes and unknown data fields are ignored.
func Parse(b []byte) (Rotation, Meta, error) {
	if len(b) > MaxEventSize {
		return Rotation{}, Meta{}, fmt.Errorf("%w: %w: %d bytes, limit %d", ErrMalformed, ErrTooLarge, len(b), MaxEventSize)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return Rotation{}, Meta{}, malformed("empty message")
	}
	if b[0] != '{' {
		if json.Valid(b) {
			return Rotation{}, Meta{}, malformed("not a JSON object")
		}
		return Rotation{}, Meta{}, malformed("not JSON")
	}
	var attrs map[string]json.RawMessage
	if err := json.Unmarshal(b, &attrs); err != nil {
		return Rotation{}, Meta{}, malformed("not JSON: %v", jsonErr(err))
	}

	specversion, err := stringAttr(attrs, "specversion", true)
	if err != nil {
		return Rotation{}, Meta{}, err
	}
	if specversion != SpecVersion {
		return Rotation{}, Meta{}, malformed("specversion %s, want %q", quote(specversion), SpecVersion)
	}
	typ, err := stringAttr(attrs, "type", true)
	if err != nil {
		return Rotation{}, Meta{}, err
	}
	if typ != EventType {
		return Rotation{}, Meta{}, malformed("type %s, want %q", quote(typ), EventType)
	}
	var meta Meta
	if meta.ID, err = stringAttr(attrs, "id", true); err != nil {
		return Rotation{}, Meta{}, err
	}
	if len(meta.ID) > MaxIDLength {
		return Rotation{}, Meta{}, malformed("id longer than %d bytes", MaxIDLength)
	}
	if meta.Source, err = stringAttr(attrs, "source", true); err != nil {
		return Rotation{}, Meta{}, err
	}
	if len(meta.Source) > MaxSourceLength {
		return Rotation{}, Meta{}, malformed("source longer than %d bytes", MaxSourceLength)
	}
	ts, err := stringAttr(attrs, "time", false)
	if err != nil {
		return Rotation{}, Meta{}, err
	}
	if ts != "" {
		if meta.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return Rotation{}, Meta{}, malformed("time %s is not an RFC 3339 timestamp", quote(ts))
		}
	}
	ct, err := stringAttr(attrs, "datacontenttype", false)
	if err != nil {
		return Rotation{}, Meta{}, err
	}
	if ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != DataContentType {
			return Rotation{}, Meta{}, malformed("datacontenttype %s, want %q", quote(ct), DataContentType)
		}
	}
	if _, ok := attrs["data_base64"]; ok {
		return Rotation{}, Meta{}, malformed("data_base64 is not supported: data must be a JSON object")
	}
	r, err := parseData(attrs["data"])
	if err != nil {
		return Rotation{}, Meta{}, err
	}
	return r, meta, nil
}

func parseData(raw json.RawMessage) (Rotation, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return Rotation{}, malformed("missing data")
	}
	if raw[0] != '{' {
		return Rotation{}, malformed("data is not a JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return Rotation{}, malformed("data: %v", jsonErr(err))
	}
	var (
		r   Rotation
		err error
	)
	if r.Namespace, err = stringAttr(fields, "namespace", false); err != nil {
		return Rotation{}, err
	}
	if r.ServiceAccount, err = stringAttr(fields, "serviceAccount", false); err != nil {
		return Rotation{}, err
	}
	if r.Route, err = stringAttr(fields, "route", false); err != nil {
		return Rotation{}, err
	}
	if err := r.Validate(); err != nil {
		return Rotation{}, fmt.Errorf("%w: data: %w", ErrMalformed, err)
	}
	return r, nil
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// stringAttr reads a string member of a decoded object; JSON null counts as
// absent. A required member must be a non-empty string.
func stringAttr(m map[string]json.RawMessage, name string, required bool) (string, error) {
	raw, ok := m[name]
	if !ok || string(raw) == "null" {
		if required {
			return "", malformed("missing %s", name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", malformed("%s is not a string", name)
	}
	if required && s == "" {
		return "", malformed("empty %s", name)
	}
	return s, nil
}

// jsonErr keeps the useful part of a decoding error without the Go type
// names encoding/json puts in it.
func jsonErr(err error) string {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return fmt.Sprintf("%s (at byte %d)", syn.Error(), syn.Offset)
	}
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		return fmt.Sprintf("unexpected JSON %s", typ.Value)
	}
	return err.Error()
}

func quote(s string) string { return authz.Quote(s) }
