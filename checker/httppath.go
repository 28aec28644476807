package checker

import (
	"net/http"
	"strings"
)

// Mount returns the HTTP server's handler: every request whose path is
// /check or starts with /check/ is answered by h, whatever follows, and
// every other request goes to rest (the probes' mux).
//
// The path after /check is the original request's (Envoy's HTTP ext_authz
// appends it): routes with path prefixes match it (checkedPath), byte by
// byte, never cleaned. Nothing else may change the answer: http.ServeMux
// cleans a path before it matches it, so
// "/check//x", "/check/../x" or "/check/%2e%2e/x" would get a 301 to
// another path, or land on another handler. Here the path is only compared
// with the prefix, never cleaned, so every such request gets the decision
// /check gets. (A request-target net/http cannot parse at all, e.g. an
// invalid escape like "/check/%zz", is answered 400 by the server before
// any handler.)
func (h *HTTP) Mount(rest http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsCheckPath(r.URL.Path) {
			h.ServeHTTP(w, r)
			return
		}
		rest.ServeHTTP(w, r)
	})
}

// IsCheckPath reports whether a request path (decoded, as in URL.Path) is
// /check or /check/<anything>.
func IsCheckPath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/check")
	return ok && (rest == "" || rest[0] == '/')
}

// checkedPath is the original request's path in a /check request's path
// (decoded, as in URL.Path): what follows /check, or "/" when nothing does.
func checkedPath(p string) string {
	rest := strings.TrimPrefix(p, "/check")
	if rest == "" {
		return "/"
	}
	return rest
}
