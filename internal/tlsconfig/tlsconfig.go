// Package tlsconfig serves TLS from certificate files that change on disk.
// A Reloader loads a certificate, its key and optionally a client CA (which
// makes it mutual TLS: a client certificate signed by that CA is required),
// and hands each new connection the files' current contents: cert-manager and
// kubelet replace them in place, and a listener must neither restart nor drop
// the connections it has. With client names (ClientNames) a CA-signed client
// certificate must also name one of them: in the handshake (ServerConfig) or,
// for a handler that answers the refusal itself, per connection
// (ServerConfigNamesLater and ClientNamed).
//
// The files are checked on a handshake, at most once per check interval, by
// their modification time and size (os.Stat follows kubelet's ..data symlink
// swap). New files that do not load (a half-written pair, a key that does not
// match) are refused: the previous certificate keeps being served, the failure
// is logged and counted, and the next handshake tries again. Established
// connections are never touched; they keep the certificate they were
// negotiated with until they close.
//
// It does not pick listeners or ports, and it does not make client-side
// configurations.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
)

// DefaultCheckInterval is how often, at most, a handshake looks at the files.
const DefaultCheckInterval = time.Second

// Files are the PEM files of a listener. CertFile and KeyFile are required;
// ClientCAFile, when set, requires and verifies client certificates.
type Files struct {
	CertFile     string
	KeyFile      string
	ClientCAFile string
}

// Options configure a Reloader.
type Options struct {
	// Key is the configuration section the files come from ("listen.tls"); errors
	// name "<Key>.certFile" and so on.
	Key string
	// CheckInterval: files are looked at no more often than this; default
	// DefaultCheckInterval.
	CheckInterval time.Duration
	// Clock; default the real one.
	Clock clock.PassiveClock
	// Log; nil discards.
	Log *slog.Logger
	// Registerer receives credinject_tls_*; nil skips registration.
	Registerer prometheus.Registerer
	// ClientNames (listen.tls.clientNames) are the DNS or URI SANs, one of
	// which a client certificate must carry (see ClientNames); empty: any
	// certificate the client CA signed. Requires Files.ClientCAFile.
	ClientNames []string
}

// Reloader holds the current certificate and client CA pool.
type Reloader struct {
	files    Files
	opts     Options
	log      *slog.Logger
	cur      atomic.Pointer[state]
	names    ClientNames
	reloads  *prometheus.CounterVec
	refused  *prometheus.CounterVec // by stage: handshake, request
	mu       sync.Mutex             // serialises checks
	checked  time.Time              // guarded by mu
	failStmp [3]stamp               // guarded by mu: the files last refused, so each bad version is logged once
}

type state struct {
	cert   tls.Certificate
	pool   *x509.CertPool
	stamps [3]stamp
}

// stamp identifies a file's version well enough to notice a replacement.
type stamp struct {
	mod  time.Time
	size int64
}

// New loads the files now. A missing or bad file is an error naming the key
// and the file.
func New(files Files, opts Options) (*Reloader, error) {
	if opts.Key == "" {
		opts.Key = "tls"
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if files.CertFile == "" || files.KeyFile == "" {
		return nil, fmt.Errorf("%s.certFile and %s.keyFile are both required", opts.Key, opts.Key)
	}
	names, err := ParseClientNames(opts.Key+".clientNames", opts.ClientNames)
	if err != nil {
		return nil, err
	}
	if !names.Empty() && files.ClientCAFile == "" {
		return nil, fmt.Errorf("%s.clientNames needs %s.clientCAFile: names are checked on client certificates the CA verified", opts.Key, opts.Key)
	}
	r := &Reloader{files: files, opts: opts, log: opts.Log, names: names}
	st, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cur.Store(st)
	r.checked = opts.Clock.Now()
	r.warnValidity(st)
	if r.reloads, r.refused, err = newMetrics(opts.Registerer, r.notAfter); err != nil {
		return nil, err
	}
	return r, nil
}

// notAfter is the loaded certificate's expiry in Unix seconds (0 unknown).
func (r *Reloader) notAfter() float64 {
	if leaf := r.cur.Load().cert.Leaf; leaf != nil {
		return float64(leaf.NotAfter.Unix())
	}
	return 0
}

// ServerConfig is a server configuration, TLS 1.2 or later, whose every
// handshake gets the current certificate (and client CA). nextProtos are the
// ALPN protocols to offer ("h2", "http/1.1"). With client names, a client
// certificate that names none of them fails the handshake (counted in
// credinject_tls_client_refused_total{stage="handshake"}).
func (r *Reloader) ServerConfig(nextProtos ...string) *tls.Config {
	return r.serverConfig(nextProtos, true)
}

// ServerConfigNamesLater is ServerConfig for a listener that answers a
// certificate naming no entry itself (HTTP: a 403 with a reason): the
// handshake verifies the CA only, and the handler asks ClientNamed.
func (r *Reloader) ServerConfigNamesLater(nextProtos ...string) *tls.Config {
	return r.serverConfig(nextProtos, false)
}

func (r *Reloader) serverConfig(nextProtos []string, namesInHandshake bool) *tls.Config {
	var verify func(tls.ConnectionState) error
	if namesInHandshake && !r.names.Empty() {
		verify = r.verifyNames
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: nextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			r.maybeReload()
			c := r.cur.Load().config(nextProtos)
			c.VerifyConnection = verify
			return c, nil
		},
	}
}

// errNotNamed fails a handshake whose client certificate names no entry.
var errNotNamed = errors.New("tls: the client certificate names none of the allowed client names")

// verifyNames runs after the CA verified the chain (tls.Config's
// VerifyConnection).
func (r *Reloader) verifyNames(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > 0 && r.names.Match(cs.PeerCertificates[0]) {
		return nil
	}
	r.refused.WithLabelValues("handshake").Inc()
	return errNotNamed
}

// HasClientNames reports whether client certificates must carry one of the
// client names.
func (r *Reloader) HasClientNames() bool { return !r.names.Empty() }

// ClientNamed reports whether a connection's verified client certificate
// names one of the client names (true when there are none to match). A
// false is counted in credinject_tls_client_refused_total{stage="request"}:
// call it once per connection (the caller answers the refusal). cs nil (not
// TLS) is false when names are required.
func (r *Reloader) ClientNamed(cs *tls.ConnectionState) bool {
	if r.names.Empty() {
		return true
	}
	if cs != nil && len(cs.PeerCertificates) > 0 && r.names.Match(cs.PeerCertificates[0]) {
		return true
	}
	r.refused.WithLabelValues("request").Inc()
	return false
}

func (st *state) config(nextProtos []string) *tls.Config {
	c := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   nextProtos,
		Certificates: []tls.Certificate{st.cert},
	}
	if st.pool != nil {
		c.ClientCAs = st.pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c
}

// MutualTLS reports whether client certificates are required.
func (r *Reloader) MutualTLS() bool { return r.files.ClientCAFile != "" }

// maybeReload looks at the files if the check interval has passed.
func (r *Reloader) maybeReload() {
	now := r.opts.Clock.Now()
	if !r.mu.TryLock() {
		return // another handshake is checking; serve what we have
	}
	defer r.mu.Unlock()
	if now.Sub(r.checked) < r.opts.CheckInterval {
		return
	}
	r.checked = now
	_ = r.check()
}

// Check looks at the files now and loads them if they changed. It returns
// the error of a refused new version (the previous one is still served).
func (r *Reloader) Check() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = r.opts.Clock.Now()
	return r.check()
}

// refuse returns err, the failure of the files at stamps (as r.stamps
// returns them). It counts the failure in credinject_tls_reloads_total and logs
// msg only once per version of the files: an unchanged bad file checked
// again is neither recounted nor relogged. r.mu must be held.
func (r *Reloader) refuse(stamps [3]stamp, msg string, err error) error {
	if stamps != r.failStmp {
		r.failStmp = stamps
		r.reloads.WithLabelValues("error").Inc()
		r.log.Warn(msg, "err", err)
	}
	return err
}

func (r *Reloader) check() error {
	stamps, err := r.stamps()
	if err != nil {
		return r.refuse(stamps, "tls: certificate files unreadable, still serving the previous certificate", err)
	}
	if stamps == r.cur.Load().stamps {
		return nil
	}
	st, err := r.load()
	if err != nil {
		return r.refuse(stamps, "tls: new certificate files refused, still serving the previous certificate", err)
	}
	r.cur.Store(st)
	r.reloads.WithLabelValues("ok").Inc()
	r.log.Info("tls: certificate reloaded", "subject", st.cert.Leaf.Subject.String(),
		"notAfter", st.cert.Leaf.NotAfter, "mutualTLS", st.pool != nil)
	r.warnValidity(st)
	return nil
}

// warnValidity says so when the certificate just loaded is not valid now:
// it is served anyway (the files are what the operator gave), but clients
// will refuse it, and the log should say why before they do.
func (r *Reloader) warnValidity(st *state) {
	now, leaf := r.opts.Clock.Now(), st.cert.Leaf
	switch {
	case now.After(leaf.NotAfter):
		r.log.Warn("tls: the certificate has expired; clients will refuse it", "file", r.files.CertFile, "notAfter", leaf.NotAfter)
	case now.Before(leaf.NotBefore):
		r.log.Warn("tls: the certificate is not valid yet; clients will refuse it", "file", r.files.CertFile, "notBefore", leaf.NotBefore)
	}
}

func (r *Reloader) paths() [3]string {
	return [3]string{r.files.CertFile, r.files.KeyFile, r.files.ClientCAFile}
}

var fieldNames = [3]string{"certFile", "keyFile", "clientCAFile"}

func (r *Reloader) stamps() ([3]stamp, error) {
	var s [3]stamp
	for i, p := range r.paths() {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return s, r.fileErr(i, err)
		}
		s[i] = stamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return s, nil
}

func (r *Reloader) fileErr(i int, err error) error {
	return fmt.Errorf("%s.%s %q: %w", r.opts.Key, fieldNames[i], r.paths()[i], err)
}

// load reads every file. The stamps are taken before reading, so a file
// replaced while it is read is seen as changed at the next check.
func (r *Reloader) load() (*state, error) {
	stamps, err := r.stamps()
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(r.files.CertFile)
	if err != nil {
		return nil, r.fileErr(0, err)
	}
	keyPEM, err := os.ReadFile(r.files.KeyFile)
	if err != nil {
		return nil, r.fileErr(1, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s.certFile %q and %s.keyFile %q: %w", r.opts.Key, r.files.CertFile, r.opts.Key, r.files.KeyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, r.fileErr(0, err)
		}
	}
	st := &state{cert: cert, stamps: stamps}
	if r.files.ClientCAFile != "" {
		b, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return nil, r.fileErr(2, err)
		}
		st.pool = x509.NewCertPool()
		if !st.pool.AppendCertsFromPEM(b) {
			return nil, r.fileErr(2, errors.New("no PEM certificate in the file"))
		}
	}
	return st, nil
}
