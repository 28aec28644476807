package testenv_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/credinject/credinject/internal/testenv"
)

// s3Call is one request to the bed's S3 gateway: body is what is sent,
// signed is the body the signature's payload hash covers (nil: the same as
// body), or unsigned asks for UNSIGNED-PAYLOAD.
type s3Call struct {
	method, bucket, key string
	acct                testenv.S3Account
	body, signed        []byte
	unsigned            bool
}

// s3Answer is the gateway's status, S3 error code ("" on success) and body.
type s3Answer struct {
	status int
	code   string
	body   []byte
}

func s3Do(ctx context.Context, t *testing.T, s *testenv.S3, c s3Call) s3Answer {
	t.Helper()
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(ctx, c.method, s.URL(c.bucket, c.key), body)
	if err != nil {
		t.Fatal(err)
	}
	hash := testenv.S3PayloadHash(c.body)
	switch {
	case c.unsigned:
		hash = testenv.S3UnsignedPayload
	case c.signed != nil:
		hash = testenv.S3PayloadHash(c.signed)
	}
	if err := testenv.SignS3(ctx, req, c.acct, hash); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s/%s: %v", c.method, c.bucket, c.key, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := s3Answer{status: resp.StatusCode, body: b}
	if resp.StatusCode >= 300 {
		a.code = testenv.S3ErrorCode(bytes.NewReader(b))
	}
	return a
}

func wantS3(t *testing.T, what string, got s3Answer, status int, code string) {
	t.Helper()
	if got.status != status || got.code != code {
		t.Fatalf("%s: status %d code %q, want %d %q\n%s", what, got.status, got.code, status, code, got.body)
	}
}

// TestS3VerifiesSignatures proves the bed's S3 gateway is a real SigV4
// verifier: it accepts what an account's key signed, refuses a wrong secret,
// a body other than the signed one and another account's key on a bucket it
// does not own, and its access log names the key of every request.
func TestS3VerifiesSignatures(t *testing.T) {
	env := testenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice := testenv.S3Account{AccessKey: "AKIDALICE", SecretKey: "alice-secret-0123456789"}
	bob := testenv.S3Account{AccessKey: "AKIDBOB", SecretKey: "bob-secret-0123456789"}
	s := env.S3(t, alice, bob)
	if err := s.CreateBucket(ctx, alice, "alice-bucket"); err != nil {
		t.Fatal(err)
	}

	t.Run("a signed put and get are accepted", func(t *testing.T) {
		body := []byte("signed body \x00\xff binary")
		wantS3(t, "put", s3Do(ctx, t, s, s3Call{method: http.MethodPut, bucket: "alice-bucket", key: "signed", acct: alice, body: body}), 200, "")
		got := s3Do(ctx, t, s, s3Call{method: http.MethodGet, bucket: "alice-bucket", key: "signed", acct: alice})
		wantS3(t, "get", got, 200, "")
		if !bytes.Equal(got.body, body) {
			t.Fatalf("get returned %q, want %q", got.body, body)
		}
	})

	t.Run("a wrong secret is refused", func(t *testing.T) {
		forged := testenv.S3Account{AccessKey: alice.AccessKey, SecretKey: "not-alice-secret"}
		wantS3(t, "put with a wrong secret", s3Do(ctx, t, s, s3Call{method: http.MethodPut, bucket: "alice-bucket", key: "forged", acct: forged, body: []byte("x")}), 403, "SignatureDoesNotMatch")
		wantS3(t, "get of what was refused", s3Do(ctx, t, s, s3Call{method: http.MethodGet, bucket: "alice-bucket", key: "forged", acct: alice}), 404, "NoSuchKey")
	})

	t.Run("a body other than the signed one is refused", func(t *testing.T) {
		// The same length, so only the payload hash can tell.
		c := s3Call{method: http.MethodPut, bucket: "alice-bucket", key: "tampered", acct: alice, body: []byte("pay 100 to bob"), signed: []byte("pay 100 to eve")}
		wantS3(t, "put of a tampered body", s3Do(ctx, t, s, c), 400, "XAmzContentSHA256Mismatch")
		wantS3(t, "get of what was refused", s3Do(ctx, t, s, s3Call{method: http.MethodGet, bucket: "alice-bucket", key: "tampered", acct: alice}), 404, "NoSuchKey")
	})

	t.Run("UNSIGNED-PAYLOAD is accepted", func(t *testing.T) {
		body := []byte("unsigned body")
		wantS3(t, "put", s3Do(ctx, t, s, s3Call{method: http.MethodPut, bucket: "alice-bucket", key: "unsigned", acct: alice, body: body, unsigned: true}), 200, "")
		got := s3Do(ctx, t, s, s3Call{method: http.MethodGet, bucket: "alice-bucket", key: "unsigned", acct: alice})
		wantS3(t, "get", got, 200, "")
		if !bytes.Equal(got.body, body) {
			t.Fatalf("get returned %q, want %q", got.body, body)
		}
	})

	t.Run("another account's key is refused on the bucket", func(t *testing.T) {
		wantS3(t, "bob's put", s3Do(ctx, t, s, s3Call{method: http.MethodPut, bucket: "alice-bucket", key: "bobs", acct: bob, body: []byte("x")}), 403, "AccessDenied")
		wantS3(t, "bob's get", s3Do(ctx, t, s, s3Call{method: http.MethodGet, bucket: "alice-bucket", key: "signed", acct: bob}), 403, "AccessDenied")
		// Bob's key is valid: his own bucket is his.
		if err := s.CreateBucket(ctx, bob, "bob-bucket"); err != nil {
			t.Fatal(err)
		}
		wantS3(t, "bob's put in his bucket", s3Do(ctx, t, s, s3Call{method: http.MethodPut, bucket: "bob-bucket", key: "bobs", acct: bob, body: []byte("x")}), 200, "")
	})

	t.Run("the access log names each request's key", func(t *testing.T) {
		reqs, err := s.Requests()
		if err != nil {
			t.Fatal(err)
		}
		want := []testenv.S3Request{
			{AccessKey: alice.AccessKey, Operation: "s3_CreateBucket", Bucket: "alice-bucket", Status: 200},
			{AccessKey: alice.AccessKey, Operation: "s3_PutObject", Bucket: "alice-bucket", Key: "signed", Status: 200},
			{AccessKey: alice.AccessKey, Operation: "s3_GetObject", Bucket: "alice-bucket", Key: "signed", Status: 200},
			{AccessKey: alice.AccessKey, Bucket: "alice-bucket", Key: "forged", Status: 403, ErrorCode: "SignatureDoesNotMatch"},
			{AccessKey: alice.AccessKey, Operation: "s3_PutObject", Bucket: "alice-bucket", Key: "tampered", Status: 400, ErrorCode: "XAmzContentSHA256Mismatch"},
			{AccessKey: alice.AccessKey, Operation: "s3_PutObject", Bucket: "alice-bucket", Key: "unsigned", Status: 200},
			{AccessKey: bob.AccessKey, Operation: "s3_PutObject", Bucket: "alice-bucket", Key: "bobs", Status: 403, ErrorCode: "AccessDenied"},
			{AccessKey: bob.AccessKey, Operation: "s3_GetObject", Bucket: "alice-bucket", Key: "signed", Status: 403, ErrorCode: "AccessDenied"},
			{AccessKey: bob.AccessKey, Operation: "s3_CreateBucket", Bucket: "bob-bucket", Status: 200},
			{AccessKey: bob.AccessKey, Operation: "s3_PutObject", Bucket: "bob-bucket", Key: "bobs", Status: 200},
		}
		for _, w := range want {
			if !hasS3Request(reqs, w) {
				t.Errorf("no access log entry %+v in\n%+v", w, reqs)
			}
		}
	})
}

// hasS3Request reports whether reqs hold w; an empty Operation in w matches
// any (a request refused before its action is known has none of its own).
func hasS3Request(reqs []testenv.S3Request, w testenv.S3Request) bool {
	for _, r := range reqs {
		if w.Operation == "" {
			r.Operation = ""
		}
		if r == w {
			return true
		}
	}
	return false
}

func TestStartS3RefusesBadAccounts(t *testing.T) {
	ctx := context.Background()
	for name, accts := range map[string][]testenv.S3Account{
		"no secret":       {{AccessKey: "AKIDA"}},
		"no access key":   {{SecretKey: "s"}},
		"key given twice": {{AccessKey: "AKIDA", SecretKey: "s1"}, {AccessKey: "AKIDA", SecretKey: "s2"}},
	} {
		t.Run(name, func(t *testing.T) {
			if s, err := testenv.StartS3(ctx, t.TempDir(), accts...); err == nil {
				s.Stop()
				t.Fatal("started")
			}
		})
	}
}
