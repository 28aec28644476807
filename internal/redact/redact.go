// Package redact hides the credentials that URLs may carry before they are
// logged or put in an error: the one helper the NATS subscriber, the
// publisher and the audit bridge share. It imports nothing of credinject's
// and knows nothing of NATS beyond the comma-separated list of server URLs
// its clients accept.
package redact

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
)

// Placeholder replaces a URL's user information (user, password or bare
// token).
const Placeholder = "redacted"

// URL returns u with its user information replaced by Placeholder:
// "nats://user:pw@host:4222" and "nats://TOKEN@host:4222" both become
// "nats://redacted@host:4222". A URL that does not parse, or parses with
// an '@' outside its user information (a password holding '/' or '#' ends
// the authority early: "nats://u:123/x@host" parses as host "u:123"), is
// never echoed whole either: everything between the scheme and its last
// '@' is replaced the same way. A string without '@' carries no user
// information and is returned trimmed.
func URL(u string) string {
	u = strings.TrimSpace(u)
	at := strings.LastIndexByte(u, '@')
	if at < 0 {
		return u
	}
	if p, err := url.Parse(u); err == nil && p.User != nil && !strings.Contains(p.Host+p.Path+p.RawQuery+p.Fragment, "@") {
		p.User = url.User(Placeholder)
		return p.String()
	}
	scheme := ""
	if i := strings.Index(u[:at], "://"); i >= 0 {
		scheme = u[:i+3]
	}
	return scheme + Placeholder + u[at:]
}

// URLs is URL over a comma-separated list of URLs (the NATS clients'
// server list), each trimmed of spaces, joined with ",".
func URLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = URL(p)
	}
	return strings.Join(parts, ",")
}

// Error returns err with the URL of a *url.Error in its chain redacted: a
// client that cannot parse its URL (nats.Connect, net/http) returns
// net/url's error, whose message quotes the URL whole, user information
// included. The result's message is err's with that URL replaced by
// URL(it), and it unwraps to the parse error's cause (never to the
// *url.Error). An err without a *url.Error is returned as it is.
func Error(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) || ue.URL == URL(ue.URL) {
		return err
	}
	// url.Error quotes the URL (%q); other wrappers may not.
	msg := strings.ReplaceAll(err.Error(), strconv.Quote(ue.URL), strconv.Quote(URL(ue.URL)))
	msg = strings.ReplaceAll(msg, ue.URL, URL(ue.URL))
	return &redactedError{msg: msg, cause: ue.Err}
}

type redactedError struct {
	msg   string
	cause error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.cause }
