package config

import (
	"strings"
	"testing"
)

// TestSignCoveredHeaders: with inject.sign, no other shape may set a
// header the signature covers as the request carries it (content-type,
// content-md5, x-amz-*): set after signing, it would reach the upstream
// unsigned or with another value than the one signed, and every request
// would be refused there.
func TestSignCoveredHeaders(t *testing.T) {
	route := func(inject string) string {
		return "routes: [{hosts: [a.example], inject: " + inject + "}]"
	}
	const sign = `sign: {type: aws-sigv4, service: s3, region: us-east-1}`
	for name, tc := range map[string]struct{ yaml, key string }{
		"x-amz-meta":   {grpcOnly + route(`{`+sign+`, headers: [{name: X-Amz-Meta-Team, value: "{team}"}]}`), "routes[0].inject.headers[0].name"},
		"x-amz-acl":    {grpcOnly + route(`{`+sign+`, header: x-amz-acl, value: "{acl}"}`), "routes[0].inject.header"},
		"content-type": {grpcOnly + route(`{`+sign+`, headers: [{name: content-type, value: "{ct}"}]}`), "routes[0].inject.headers[0].name"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			if !namesKey(err, tc.key) {
				t.Fatalf("error names no %q:\n%v", tc.key, err)
			}
		})
	}
	// A header the signature does not cover goes with it.
	if _, err := Parse(strings.NewReader(grpcOnly + route(`{`+sign+`, headers: [{name: x-team, value: "{team}"}]}`))); err != nil {
		t.Errorf("x-team with sign: %v", err)
	}
}
