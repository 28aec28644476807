package events

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Credentials say how a connection authenticates to NATS and how it trusts
// the server. Every secret is a file, never a value: the files are read and
// checked by Options, and read again at each (re)connection, so a rotated
// file is used without a restart.
type Credentials struct {
	// At most one of CredsFile (a NATS user JWT and its nkey seed, as `nsc`
	// writes them), NKeyFile (an nkey user seed) and TokenFile (a token).
	CredsFile string
	NKeyFile  string
	TokenFile string
	// CAFile verifies the server's certificate (PEM) and turns TLS on.
	CAFile string
	// CertFile and KeyFile are the client certificate (TLS client
	// authentication).
	CertFile string
	KeyFile  string
}

// ErrInvalidCredentials is wrapped by Options' errors.
var ErrInvalidCredentials = errors.New("invalid NATS credentials")

// Options turns c into nats.go options (nats.UserCredentials,
// nats.NkeyOptionFromSeed, nats.TokenHandler, nats.RootCAs, nats.ClientCert),
// having read every file once: a missing or bad file is an error naming the
// field (credsFile, nkeyFile, tokenFile, caFile, certFile, keyFile) and the
// file. Errors never quote a file's contents.
func (c Credentials) Options() ([]nats.Option, error) {
	bad := func(field, file string, err error) error {
		return fmt.Errorf("%s %q: %w: %w", field, file, ErrInvalidCredentials, err)
	}
	n := 0
	for _, f := range []string{c.CredsFile, c.NKeyFile, c.TokenFile} {
		if f != "" {
			n++
		}
	}
	if n > 1 {
		return nil, fmt.Errorf("credsFile, nkeyFile, tokenFile: %w: at most one may be set", ErrInvalidCredentials)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, fmt.Errorf("certFile, keyFile: %w: both or neither", ErrInvalidCredentials)
	}
	var opts []nats.Option
	switch {
	case c.CredsFile != "":
		if err := checkCreds(c.CredsFile); err != nil {
			return nil, bad("credsFile", c.CredsFile, err)
		}
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, bad("nkeyFile", c.NKeyFile, err)
		}
		opts = append(opts, o)
	case c.TokenFile != "":
		tf := &tokenFile{path: c.TokenFile}
		if _, err := tf.read(); err != nil {
			return nil, bad("tokenFile", c.TokenFile, err)
		}
		opts = append(opts, nats.TokenHandler(tf.token))
	}
	if c.CAFile != "" {
		o := nats.RootCAs(c.CAFile)
		if err := try(o); err != nil {
			return nil, bad("caFile", c.CAFile, err)
		}
		opts = append(opts, o)
	}
	if c.CertFile != "" {
		o := nats.ClientCert(c.CertFile, c.KeyFile)
		if err := try(o); err != nil {
			return nil, bad("certFile", c.CertFile, fmt.Errorf("with keyFile %q: %w", c.KeyFile, err))
		}
		opts = append(opts, o)
	}
	return opts, nil
}

// try applies o to scratch options: nats.RootCAs and nats.ClientCert load
// their files when applied.
func try(o nats.Option) error {
	scratch := nats.GetDefaultOptions()
	return o(&scratch)
}

// checkCreds reads a creds file as nats.UserCredentials will: a decorated
// user JWT and a decorated user nkey seed.
func checkCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	defer wipe(b)
	if _, err := nkeys.ParseDecoratedJWT(b); err != nil {
		return fmt.Errorf("no user JWT: %w", err)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return fmt.Errorf("no nkey seed: %w", err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return err
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return errors.New("the seed is not a user nkey")
	}
	return nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// tokenFile hands nats.go the file's current token at each connection; if
// the file cannot be read then, the last token read is used (the server
// decides).
type tokenFile struct {
	path string
	mu   sync.Mutex
	last string
}

func (t *tokenFile) read() (string, error) {
	b, err := os.ReadFile(t.path)
	if err != nil {
		return "", err
	}
	tok := string(bytes.TrimSpace(b))
	if tok == "" {
		return "", errors.New("empty token")
	}
	t.mu.Lock()
	t.last = tok
	t.mu.Unlock()
	return tok, nil
}

func (t *tokenFile) token() string {
	if tok, err := t.read(); err == nil {
		return tok
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}
