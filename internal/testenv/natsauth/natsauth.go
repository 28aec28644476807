// Package natsauth runs an embedded NATS server that demands what a
// production one does: TLS with a client certificate (a CA generated in the
// test) and a user authenticated by a creds file (operator mode: a user JWT
// signed by a trusted account), an nkey or a token. It writes the matching
// client files, and wrong ones, into a folder. Tests import it; the product
// binary never does. It does not start the rest of the bed.
package natsauth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/credinject/credinject/internal/testenv/testca"
)

// Mode is how users authenticate.
type Mode string

// The modes.
const (
	Creds Mode = "creds" // operator mode, user JWT + seed
	NKey  Mode = "nkey"  // an nkey user
	Token Mode = "token" // a token
)

// Files are a client's files, with the fields of events.Credentials (so
// events.Credentials(f) converts them; this package cannot import events,
// whose tests use it).
type Files struct {
	CredsFile string
	NKeyFile  string
	TokenFile string
	CAFile    string
	CertFile  string
	KeyFile   string
}

// Server is a running NATS server requiring TLS, a client certificate and
// credentials of its Mode.
type Server struct {
	URL string
	// Good are the credentials it accepts; Wrong are of the same kind but
	// refused (another account's user, another nkey, another token), with
	// a valid client certificate.
	Good, Wrong Files
	// NoClientCert are the good credentials without a client certificate.
	NoClientCert Files
	srv          *server.Server
}

// Start starts the server on a free loopback port, writing files into dir.
func Start(dir string, mode Mode) (*Server, error) {
	ca, err := testca.New("nats-test-ca")
	if err != nil {
		return nil, err
	}
	srvLeaf, err := ca.Server("nats")
	if err != nil {
		return nil, err
	}
	srvFiles, err := testca.Write(dir, "nats-server", ca, srvLeaf)
	if err != nil {
		return nil, err
	}
	cl, err := ca.Client("credinject")
	if err != nil {
		return nil, err
	}
	clFiles, err := testca.Write(dir, "nats-client", ca, cl)
	if err != nil {
		return nil, err
	}
	srvCert, err := srvLeaf.TLS()
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		TLS: true, TLSVerify: true, TLSTimeout: 5,
		TLSConfig: (&testca.ServerTLS{Cert: srvCert, ClientCAs: ca.Pool()}).Config(),
	}
	tlsFiles := Files{CAFile: srvFiles.CA, CertFile: clFiles.Cert, KeyFile: clFiles.Key}
	good, wrong := tlsFiles, tlsFiles
	var account, accountJWT string
	switch mode {
	case Creds:
		okp, err := nkeys.CreateOperator()
		if err != nil {
			return nil, err
		}
		opub, _ := okp.PublicKey()
		akp, err := nkeys.CreateAccount()
		if err != nil {
			return nil, err
		}
		account, _ = akp.PublicKey()
		if accountJWT, err = jwt.NewAccountClaims(account).Encode(okp); err != nil {
			return nil, err
		}
		opts.TrustedKeys = []string{opub}
		opts.AccountResolver = &server.MemAccResolver{}
		if good.CredsFile, err = writeCreds(dir, "good.creds", akp); err != nil {
			return nil, err
		}
		// A user of an account the server does not trust.
		other, err := nkeys.CreateAccount()
		if err != nil {
			return nil, err
		}
		if wrong.CredsFile, err = writeCreds(dir, "wrong.creds", other); err != nil {
			return nil, err
		}
	case NKey:
		pub, seedFile, err := writeSeed(dir, "good.nk")
		if err != nil {
			return nil, err
		}
		opts.Nkeys = []*server.NkeyUser{{Nkey: pub}}
		good.NKeyFile = seedFile
		if _, wrong.NKeyFile, err = writeSeed(dir, "wrong.nk"); err != nil {
			return nil, err
		}
	case Token:
		opts.Authorization = "good-token-" + fmt.Sprint(time.Now().UnixNano())
		good.TokenFile = filepath.Join(dir, "good.token")
		wrong.TokenFile = filepath.Join(dir, "wrong.token")
		if err := os.WriteFile(good.TokenFile, []byte(opts.Authorization+"\n"), 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(wrong.TokenFile, []byte("wrong-token\n"), 0o600); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("natsauth: unknown mode %q", mode)
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsauth: %w", err)
	}
	if accountJWT != "" {
		if err := srv.AccountResolver().Store(account, accountJWT); err != nil {
			return nil, err
		}
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("natsauth: server not ready")
	}
	noCert := good
	noCert.CertFile, noCert.KeyFile = "", ""
	return &Server{URL: srv.ClientURL(), Good: good, Wrong: wrong, NoClientCert: noCert, srv: srv}, nil
}

// Stop shuts the server down.
func (s *Server) Stop() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// Server is the embedded server (for Subsz and the like).
func (s *Server) Server() *server.Server { return s.srv }

func writeCreds(dir, name string, account nkeys.KeyPair) (string, error) {
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return "", err
	}
	upub, _ := ukp.PublicKey()
	useed, _ := ukp.Seed()
	ujwt, err := jwt.NewUserClaims(upub).Encode(account)
	if err != nil {
		return "", err
	}
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, creds, 0o600)
}

func writeSeed(dir, name string) (pub, path string, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", "", err
	}
	pub, _ = kp.PublicKey()
	seed, _ := kp.Seed()
	path = filepath.Join(dir, name)
	return pub, path, os.WriteFile(path, seed, 0o600)
}
