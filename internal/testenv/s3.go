package testenv

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// S3Region is the bed's S3 gateway's region: a signature's credential scope
// must name it, or the gateway refuses the request.
const S3Region = "us-east-1"

// S3UnsignedPayload is the x-amz-content-sha256 value of a request whose
// body the signature does not cover.
const S3UnsignedPayload = "UNSIGNED-PAYLOAD"

// S3Account is one access key of the bed's S3 gateway.
type S3Account struct {
	AccessKey string
	SecretKey string
}

// S3 is a running Versity S3 gateway (versitygw, Apache-2.0; built by
// tools/build.sh into the tools cache) on loopback: plain HTTP, path-style
// addressing (http://ADDR/BUCKET/KEY), region S3Region, objects in a POSIX
// folder. It checks every request's AWS Signature Version 4, including the
// body against x-amz-content-sha256, and writes an S3 access log that names
// each request's access key.
//
// Accounts come from versitygw's internal IAM (a users.json written before
// start), each with the role "userplus": it may create buckets, and a bucket
// belongs to the account that created it, so another account's key is
// refused on it (AccessDenied, 403).
type S3 struct {
	addr      string
	root      S3Account
	accessLog string
	proc      *proc
}

// S3Request is one line of the gateway's access log.
type S3Request struct {
	// AccessKey is the access key the request's Authorization header named
	// when the gateway knows it, even when the signature did not match ("":
	// no signature, or an unknown key). Status says whether it was accepted.
	AccessKey string
	// Operation is versitygw's name of the S3 action ("s3_PutObject",
	// "s3_GetObject", "s3_CreateBucket", …), or "ActionUnDetected" for a
	// request refused before its action was known (a bad signature).
	Operation string
	// Bucket and Key come from the request's path ("" when absent).
	Bucket, Key string
	// Status is the HTTP status the gateway answered.
	Status int
	// ErrorCode is the S3 error code ("SignatureDoesNotMatch",
	// "AccessDenied", …); "" on success.
	ErrorCode string
}

// S3 starts a gateway of the test's own with accounts (see StartS3),
// stopped when the test ends; if the test failed its log is logged.
func (e *Env) S3(t testing.TB, accounts ...S3Account) *S3 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := StartS3(ctx, t.TempDir(), accounts...)
	if err != nil {
		t.Fatalf("testenv: s3: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("versitygw log:\n%s", s.Log())
		}
	})
	return s
}

// StartS3 runs versitygw in dir (its IAM folder, objects, server log and
// access log go there) on a free loopback port with a random root account
// and one "userplus" account per entry of accounts, and waits until it
// answers. An account without a key or secret, or a key given twice, is an
// error.
func StartS3(ctx context.Context, dir string, accounts ...S3Account) (*S3, error) {
	users := map[string]any{}
	for _, a := range accounts {
		if a.AccessKey == "" || a.SecretKey == "" {
			return nil, fmt.Errorf("testenv: s3: account %q: access key and secret key are required", a.AccessKey)
		}
		if _, dup := users[a.AccessKey]; dup {
			return nil, fmt.Errorf("testenv: s3: access key %q given twice", a.AccessKey)
		}
		users[a.AccessKey] = map[string]string{"access": a.AccessKey, "secret": a.SecretKey, "role": "userplus"}
	}
	bin, err := ToolDir("versitygw")
	if err != nil {
		return nil, err
	}
	iamDir, dataDir := filepath.Join(dir, "iam"), filepath.Join(dir, "data")
	for _, d := range []string{iamDir, dataDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	b, err := json.Marshal(map[string]any{"accessAccounts": users})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(iamDir, "users.json"), b, 0o600); err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	s := &S3{
		addr:      "127.0.0.1:" + strconv.Itoa(port),
		root:      S3Account{AccessKey: "root" + RandHex(8), SecretKey: RandHex(20)},
		accessLog: filepath.Join(dir, "access.log"),
	}
	s.proc = &proc{
		name: "versitygw", bin: filepath.Join(bin, "versitygw"), logPath: filepath.Join(dir, "versitygw.log"),
		args: []string{
			"--port", s.addr, "--region", S3Region, "--iam-dir", iamDir, "--access-log", s.accessLog,
			"--health", "/health", "--quiet", "posix", dataDir,
		},
		// The root account through the environment, not the command line;
		// nothing else of the test's environment (versitygw reads VGW_*).
		env: []string{"HOME=" + dir, "ROOT_ACCESS_KEY_ID=" + s.root.AccessKey, "ROOT_SECRET_ACCESS_KEY=" + s.root.SecretKey},
	}
	if err := s.proc.start(); err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(ctx, s.proc, "versitygw", 30*time.Second, httpOK(client, "http://"+s.addr+"/health")); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Addr is the gateway's host:port.
func (s *S3) Addr() string { return s.addr }

// URL is http://ADDR/bucket/key (the key, if any, as given: plain names).
func (s *S3) URL(bucket, key string) string {
	u := "http://" + s.addr + "/" + bucket
	if key != "" {
		u += "/" + key
	}
	return u
}

// Root is the gateway's root account (it may do anything).
func (s *S3) Root() S3Account { return s.root }

// Stop stops the gateway and waits for it. Its files stay in dir.
func (s *S3) Stop() { s.proc.stop() }

// Log is the tail of the gateway's own log (not the access log).
func (s *S3) Log() string { return s.proc.tail(50) }

// CreateBucket creates bucket as acct (a PUT signed with acct's key); acct
// then owns it. An answer other than 200 is an error naming the status and
// the S3 error code.
func (s *S3) CreateBucket(ctx context.Context, acct S3Account, bucket string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, s.URL(bucket, ""), nil)
	if err != nil {
		return err
	}
	if err := SignS3(ctx, req, acct, S3PayloadHash(nil)); err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("testenv: s3: create bucket %s: %w", bucket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("testenv: s3: create bucket %s: status %d %s", bucket, resp.StatusCode, S3ErrorCode(resp.Body))
	}
	return nil
}

// Requests returns every request in the access log so far, oldest first.
// versitygw writes a request's line before it answers, so a request whose
// answer came back is in it. Keys with spaces are not supported (the log's
// fields are separated by spaces): such a line is an error.
func (s *S3) Requests() ([]S3Request, error) {
	f, err := os.Open(s.accessLog)
	if err != nil {
		return nil, fmt.Errorf("testenv: s3: %w", err)
	}
	defer f.Close()
	var out []S3Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "log starts ") {
			continue
		}
		r, err := parseS3AccessLine(line)
		if err != nil {
			return nil, fmt.Errorf("testenv: s3: access log line %d: %w", n, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// parseS3AccessLine reads the fields of versitygw's access log line
// (s3log/file.go: AWS's server access log format): bucket owner, bucket,
// [time zone] (two fields), remote IP, requester, request ID, operation,
// key, request URI, HTTP status, error code, then fields not read here.
// "-" is an absent value.
func parseS3AccessLine(line string) (S3Request, error) {
	f := strings.Fields(line)
	if len(f) < 12 || !strings.HasPrefix(f[2], "[") || !strings.HasSuffix(f[3], "]") {
		return S3Request{}, fmt.Errorf("not an access log line: %q", line)
	}
	status, err := strconv.Atoi(f[10])
	if err != nil || status < 100 || status > 599 {
		return S3Request{}, fmt.Errorf("no HTTP status in the 11th field (a key with a space?): %q", line)
	}
	dash := func(v string) string {
		if v == "-" {
			return ""
		}
		return v
	}
	return S3Request{
		AccessKey: dash(f[5]), Operation: f[7], Bucket: dash(f[1]), Key: dash(f[8]),
		Status: status, ErrorCode: dash(f[11]),
	}, nil
}

// SignS3 signs req for the bed's S3 gateway with acct's key (AWS SigV4,
// service s3, S3Region, now): it sets X-Amz-Content-Sha256 to payloadHash
// (S3PayloadHash of the body, or S3UnsignedPayload), X-Amz-Date and
// Authorization. The body is not read: payloadHash is what is signed.
func SignS3(ctx context.Context, req *http.Request, acct S3Account, payloadHash string) error {
	req.Header.Set("X-Amz-Content-Sha256", payloadHash)
	creds := aws.Credentials{AccessKeyID: acct.AccessKey, SecretAccessKey: acct.SecretKey}
	// S3 signs the path as sent, not escaped a second time.
	err := v4.NewSigner().SignHTTP(ctx, creds, req, payloadHash, "s3", S3Region, time.Now(), func(o *v4.SignerOptions) {
		o.DisableURIPathEscaping = true
	})
	if err != nil {
		return fmt.Errorf("testenv: s3: sign: %w", err)
	}
	return nil
}

// S3PayloadHash is the hex SHA-256 of body, the x-amz-content-sha256 of a
// signed body.
func S3PayloadHash(body []byte) string {
	h := sha256.Sum256(body)
	return hex.EncodeToString(h[:])
}

// S3ErrorCode reads an S3 error answer's <Code> from body ("" when the body
// is not one).
func S3ErrorCode(body io.Reader) string {
	var e struct {
		Code string `xml:"Code"`
	}
	if err := xml.NewDecoder(io.LimitReader(body, 64<<10)).Decode(&e); err != nil {
		return ""
	}
	return e.Code
}
