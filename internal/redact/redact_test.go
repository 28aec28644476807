package redact_test

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/credinject/credinject/internal/redact"
)

func TestURLs(t *testing.T) {
	for name, c := range map[string]struct{ in, want string }{
		"plain":               {"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		"password":            {"nats://user:pw@host:4222", "nats://redacted@host:4222"},
		"token":               {"nats://s3cr3t@host:4222", "nats://redacted@host:4222"},
		"list":                {"nats://a:1, nats://u:p@b:2", "nats://a:1,nats://redacted@b:2"},
		"tls":                 {"tls://u:p@nats.example:4222", "tls://redacted@nats.example:4222"},
		"bad escape in pw":    {"nats://user:p%zzw@host:4222", "nats://redacted@host:4222"},
		"space in password":   {"nats://user:p w@host:4222", "nats://redacted@host:4222"},
		"'@' in password":     {"nats://user:p@ss%@host:4222", "nats://redacted@host:4222"},
		"control character":   {"nats://tok\x7fen@host:4222", "nats://redacted@host:4222"},
		"no scheme, bad":      {"user:p%zz@host:4222", "redacted@host:4222"},
		"bad host, no creds":  {"nats://[::1:4222", "nats://[::1:4222"},
		"list with a bad one": {"nats://a:1,nats://u:p%zz@b:2", "nats://a:1,nats://redacted@b:2"},
		"'/' in a numeric pw": {"nats://u:123/x@host:4222", "nats://redacted@host:4222"},
	} {
		t.Run(name, func(t *testing.T) {
			if got := redact.URLs(c.in); got != c.want {
				t.Errorf("URLs(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

// TestURLNeverEchoesUserinfo: whatever the input, the secret part of the
// user information is not in the output.
func TestURLNeverEchoesUserinfo(t *testing.T) {
	const secret = "S3CR3T"
	for _, in := range []string{
		"nats://u:" + secret + "@h:1", "nats://" + secret + "@h:1", "nats://u:" + secret + "%zz@h:1",
		"nats://u:" + secret + " @h:1", "nats://u:" + secret + "@@h:1", "nats://u:" + secret + "/x@h:1",
		"nats://u:" + secret + "#x@h:1", "nats://u:" + secret + "?x@h:1", secret + "@h", "://" + secret + "@h",
		"nats://u:" + secret + "@[::1", "nats://u:" + secret + "%@h:1", "nats://u:123" + secret + "/x@h:1",
		"nats://u:1/" + secret + "@h:1",
	} {
		if got := redact.URL(in); strings.Contains(got, secret) {
			t.Errorf("URL(%q) = %q", in, got)
		}
	}
}

// TestError: net/url's parse error quotes the URL whole; the redacted
// error does not, and still says what was wrong.
func TestError(t *testing.T) {
	for _, raw := range []string{"nats://u:S3CR3T%zz@h:4222", "nats://u:S3CR3T w@h:4222", "nats://S3CR3T\x7f@h:4222"} {
		_, perr := url.Parse(raw)
		if perr == nil {
			t.Fatalf("%q parsed", raw)
		}
		err := redact.Error(fmt.Errorf("connect: %w", perr))
		if strings.Contains(err.Error(), "S3CR3T") || !strings.Contains(err.Error(), "connect: parse") || !strings.Contains(err.Error(), "redacted@h:4222") {
			t.Errorf("%q: %v", raw, err)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			t.Errorf("%q: the *url.Error is still in the chain", raw)
		}
		if errors.Unwrap(err) == nil || strings.Contains(errors.Unwrap(err).Error(), "S3CR3T") {
			t.Errorf("%q: cause %v", raw, errors.Unwrap(err))
		}
	}
	plain := errors.New("nats: no servers available for connection")
	if got := redact.Error(plain); got != plain {
		t.Errorf("an error without a URL became %v", got)
	}
	if got := redact.Error(nil); got != nil {
		t.Errorf("nil became %v", got)
	}
}
