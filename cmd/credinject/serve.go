package main

import (
	"context"
	"flag"
	"io"

	"github.com/credinject/credinject/internal/app"
	"github.com/credinject/credinject/internal/config"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	grpcAddr := fs.String("grpc-addr", "", "gRPC listen address (overrides listen.grpc)")
	httpAddr := fs.String("http-addr", "", "HTTP listen address (overrides listen.http)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return usageError{errorString("--config FILE is required")}
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if *grpcAddr != "" {
		cfg.Listen.GRPC = *grpcAddr
	}
	if *httpAddr != "" {
		cfg.Listen.HTTP = *httpAddr
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	a, err := app.New(ctx, app.Options{Config: cfg, Log: log, ConfigPath: *path})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

type errorString string

func (e errorString) Error() string { return string(e) }
