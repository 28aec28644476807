package events

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/credinject/credinject/internal/testenv/natsauth"
	"github.com/credinject/credinject/internal/testenv/testca"
)

func TestCredentialsOptionsRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	garbage := write("garbage", "not a credential")
	empty := write("empty", "  \n")
	akp, _ := nkeys.CreateAccount()
	accountSeed, _ := akp.Seed()
	accountSeedFile := write("account.nk", string(accountSeed))
	missing := filepath.Join(dir, "missing")
	ca, err := testca.New("x")
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := ca.Client("x")
	files, err := testca.Write(dir, "x", ca, leaf)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		c    Credentials
		want string
	}{
		"missing creds":         {Credentials{CredsFile: missing}, "credsFile"},
		"garbage creds":         {Credentials{CredsFile: garbage}, "credsFile"},
		"missing nkey":          {Credentials{NKeyFile: missing}, "nkeyFile"},
		"account seed as nkey":  {Credentials{NKeyFile: accountSeedFile}, "nkeyFile"},
		"missing token":         {Credentials{TokenFile: missing}, "tokenFile"},
		"empty token":           {Credentials{TokenFile: empty}, "tokenFile"},
		"missing CA":            {Credentials{CAFile: missing}, "caFile"},
		"garbage CA":            {Credentials{CAFile: garbage}, "caFile"},
		"key of another file":   {Credentials{CertFile: files.Cert, KeyFile: garbage}, "certFile"},
		"cert without key":      {Credentials{CertFile: files.Cert}, "keyFile"},
		"two kinds of identity": {Credentials{TokenFile: garbage, NKeyFile: garbage}, "at most one"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tc.c.Options()
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "not a credential") {
				t.Fatalf("error %q quotes the file", err)
			}
		})
	}
	if opts, err := (Credentials{}).Options(); err != nil || len(opts) != 0 {
		t.Fatalf("no credentials: %v, %v", opts, err)
	}
}

// TestSubscriberWithCredentials runs a NATS server that requires TLS with a
// client certificate and a user (creds, nkey or token): with the right files
// the subscriber connects and receives rotations published by a Publisher
// with the same files; with wrong ones it stays disconnected, says why, keeps
// trying, and connects once the file is fixed.
func TestSubscriberWithCredentials(t *testing.T) {
	for _, mode := range []natsauth.Mode{natsauth.Creds, natsauth.NKey, natsauth.Token} {
		t.Run(string(mode), func(t *testing.T) {
			dir := t.TempDir()
			srv, err := natsauth.Start(dir, mode)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Stop()
			goodOpts, err := Credentials(srv.Good).Options()
			if err != nil {
				t.Fatal(err)
			}
			subject := uniqueSubject(t)

			rec := newRecorder()
			run := runSubscriber(t, SubscriberConfig{URL: srv.URL, Subject: subject, Refresher: rec, Resyncer: rec, Options: goodOpts})
			waitFor(t, "connected with good credentials", run.s.Connected)

			nc, err := Connect(t.Context(), srv.URL, goodOpts...)
			if err != nil {
				t.Fatalf("publisher with good credentials: %v", err)
			}
			defer nc.Close()
			if !nc.TLSRequired() {
				t.Fatal("the connection is not TLS")
			}
			want := Rotation{Namespace: "egress-test", ServiceAccount: "default"}
			waitInterest(t, srv.Server(), subject, 1)
			publish(t, NewPublisher(nc, subject, "test"), want)
			if got := recv(t, rec.refreshed, "refresh"); got != want {
				t.Fatalf("Refresh(%+v), want %+v", got, want)
			}

			// Wrong credentials: a clear error, never connected.
			wrongOpts, err := Credentials(srv.Wrong).Options()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Connect(t.Context(), srv.URL, wrongOpts...); err == nil || !strings.Contains(err.Error(), "uthorization") {
				t.Fatalf("publisher with wrong credentials: %v", err)
			}
			wrongRec := newRecorder()
			wrong := runSubscriber(t, SubscriberConfig{URL: srv.URL, Subject: subject, Refresher: wrongRec, Resyncer: wrongRec, Options: wrongOpts})
			waitFor(t, "the authorization error", func() bool {
				err := wrong.s.LastError()
				return err != nil && strings.Contains(err.Error(), "uthorization")
			})
			if wrong.s.Connected() || wrong.s.Status() != StatusDisconnected || metric(t, wrong.reg, "credinject_events_connected") != 0 {
				t.Fatalf("with wrong credentials: connected %v, status %q", wrong.s.Connected(), wrong.s.Status())
			}

			// The file is replaced with the good one: the retries pick it
			// up (nkeys excepted: nats.go fixes the public key at start).
			if mode == natsauth.NKey {
				return
			}
			src, dst := srv.Good.CredsFile, srv.Wrong.CredsFile
			if mode == natsauth.Token {
				src, dst = srv.Good.TokenFile, srv.Wrong.TokenFile
			}
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "connected after the file was fixed", wrong.s.Connected)
			if wrong.s.LastError() != nil {
				t.Fatalf("LastError while connected: %v", wrong.s.LastError())
			}
		})
	}
}

func TestSubscriberWithoutClientCertificate(t *testing.T) {
	srv, err := natsauth.Start(t.TempDir(), natsauth.Token)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	opts, err := Credentials(srv.NoClientCert).Options()
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	run := runSubscriber(t, SubscriberConfig{URL: srv.URL, Subject: uniqueSubject(t), Refresher: rec, Resyncer: rec, Options: opts})
	waitFor(t, "a TLS error", func() bool { return run.s.LastError() != nil })
	if run.s.Connected() {
		t.Fatal("connected without a client certificate")
	}
	t.Logf("last error: %v", run.s.LastError())
}
