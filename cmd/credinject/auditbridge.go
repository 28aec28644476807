package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/credinject/credinject/auditbridge"
	"github.com/credinject/credinject/internal/config"
)

const defaultAuditListen = "127.0.0.1:9090"

// auditBridge runs `credinject vault-audit-bridge`: it reads Vault's audit
// stream (socket device, file device or both) and publishes a rotation event
// for every successful write or delete of a watched KV v2 path.
func auditBridge(ctx context.Context, args []string, stderr io.Writer) error {
	def := config.Default()
	fs := flag.NewFlagSet("vault-audit-bridge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", defaultAuditListen,
		"HOST:PORT to accept Vault's socket audit device on (vault audit enable socket address=HOST:PORT socket_type=tcp format=json); "+
			"used by default only when no --file is given; empty: no socket input")
	var files, paths, routes auditFlagList
	fs.Var(&files, "file", "path of a Vault file audit device to follow (repeatable)")
	fromStart := fs.Bool("from-start", false, "read files that exist at startup from their beginning instead of their end")
	kvMount := fs.String("kv-mount", def.Vault.KVMount, "KV v2 mount")
	fs.Var(&paths, "path", "watched path template under the mount, placeholders {namespace} and {serviceaccount} (repeatable; default "+def.Vault.Path+")")
	fs.Var(&routes, "route", "NAME=TEMPLATE: a watched path template whose events carry route NAME (repeatable)")
	natsURL := fs.String("nats-url", envOr("NATS_URL", auditbridge.DefaultNATSURL), "NATS URL to publish on")
	subject := fs.String("subject", def.Events.Subject, "NATS subject")
	source := fs.String("source", auditbridge.DefaultSource, "CloudEvents source of the events")
	maxPending := fs.Int("max-pending", auditbridge.DefaultMaxPending, "events buffered while NATS is unreachable before they collapse into one event for every identity")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	metricsAddr := fs.String("metrics-addr", "", "address to serve /metrics and /healthz on (empty: none)")
	natsCreds := addNATSFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	listenSet := false
	fs.Visit(func(f *flag.Flag) { listenSet = listenSet || f.Name == "listen" })
	if !listenSet && len(files) > 0 {
		*listen = ""
	}
	if *listen == "" && len(files) == 0 {
		return usageError{errors.New("no input: give --listen, --file or both")}
	}
	var templates []auditbridge.Template
	for _, p := range paths {
		templates = append(templates, auditbridge.Template{Path: p})
	}
	for _, r := range routes {
		t, err := auditbridge.ParseTemplate(r)
		if err != nil {
			return usageError{fmt.Errorf("--route: %w", err)}
		}
		templates = append(templates, t)
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}

	// Check the paths and the NATS files before binding anything.
	if _, err := auditbridge.NewMatcher(*kvMount, templates); err != nil {
		return usageError{err}
	}
	natsOpts, err := natsCreds.options()
	if err != nil {
		return err
	}
	var ln, metricsLn net.Listener
	closeListeners := func() {
		for _, l := range []net.Listener{ln, metricsLn} {
			if l != nil {
				l.Close()
			}
		}
	}
	if *listen != "" {
		if ln, err = net.Listen("tcp", *listen); err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
	}
	if *metricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", *metricsAddr); err != nil {
			closeListeners()
			return fmt.Errorf("--metrics-addr: %w", err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b, err := auditbridge.New(auditbridge.Config{
		Listener:    ln,
		Files:       files,
		FromStart:   *fromStart,
		KVMount:     *kvMount,
		Templates:   templates,
		NATSURL:     *natsURL,
		Subject:     *subject,
		Source:      *source,
		MaxPending:  *maxPending,
		NATSOptions: natsOpts,
		Logger:      log,
		Registerer:  reg,
	})
	if err != nil {
		closeListeners()
		if errors.Is(err, auditbridge.ErrInvalidConfig) {
			return usageError{err}
		}
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return b.Run(gctx) })
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(metricsLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	return g.Wait()
}

// auditFlagList is a repeatable string flag.
type auditFlagList []string

func (l *auditFlagList) String() string { return strings.Join(*l, ",") }

func (l *auditFlagList) Set(s string) error {
	*l = append(*l, s)
	return nil
}
