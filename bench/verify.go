package bench

import (
	"strconv"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error keys of answers that are not a correct allow. A deny is counted as
// "<http status>/<reason>", a transport error as "grpc/<code>".
const (
	// ErrWrongKey: an allow that injects a value other than the identity's
	// own key (another identity's key, or the workload's token).
	ErrWrongKey = "wrong_key"
	// ErrMissingKey: an allow that injects no authorization header.
	ErrMissingKey = "missing_key"
)

// Reason headers read from a deny: credinject's, then Authorino's (which the
// reference target sends, as the reference design's gateway would see).
var reasonHeaders = []string{"x-credinject-reason", "x-ext-auth-reason"}

// Classify checks one answer. It returns "" for a correct allow (status OK,
// exactly one authorization header, equal to want) and an error key
// otherwise.
func Classify(resp *authv3.CheckResponse, err error, want string) string {
	if err != nil {
		return "grpc/" + status.Code(err).String()
	}
	if c := codes.Code(resp.GetStatus().GetCode()); c != codes.OK {
		d := resp.GetDeniedResponse()
		if d == nil {
			return "grpc-status/" + c.String()
		}
		httpStatus := int(d.GetStatus().GetCode())
		if httpStatus == 0 {
			httpStatus = 403 // Envoy's default for a deny without a status
		}
		reason := "-"
		for _, name := range reasonHeaders {
			for _, h := range d.GetHeaders() {
				if strings.EqualFold(h.GetHeader().GetKey(), name) {
					reason = h.GetHeader().GetValue()
					break
				}
			}
			if reason != "-" {
				break
			}
		}
		return strconv.Itoa(httpStatus) + "/" + reason
	}
	found := 0
	ok := false
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if strings.EqualFold(h.GetHeader().GetKey(), "authorization") {
			found++
			ok = h.GetHeader().GetValue() == want
		}
	}
	switch {
	case found == 0:
		return ErrMissingKey
	case found > 1 || !ok:
		return ErrWrongKey
	}
	return ""
}
