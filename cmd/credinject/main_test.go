package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("vault: {role: x, unknownKey: 1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsCfg := filepath.Join(dir, "tls.yaml")
	if err := os.WriteFile(tlsCfg, []byte("kubernetes: {tokenValidation: jwks, jwksFile: "+filepath.Join(dir, "none.jwks")+", issuer: x}\nlisten: {tls: {certFile: "+filepath.Join(dir, "none.crt")+", keyFile: "+filepath.Join(dir, "none.key")+"}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		args     []string
		code     int
		inOutput string
	}{
		"no args":                 {nil, 2, "Usage"},
		"unknown command":         {[]string{"launch"}, 2, "unknown command"},
		"version":                 {[]string{"version"}, 0, "credinject "},
		"serve without config":    {[]string{"serve"}, 2, "--config FILE is required"},
		"serve missing file":      {[]string{"serve", "--config", filepath.Join(dir, "nope.yaml")}, 1, "no such file"},
		"serve unknown key":       {[]string{"serve", "--config", bad}, 1, "unknownKey"},
		"serve bad log level":     {[]string{"serve", "--config", bad, "--log-level", "loud"}, 1, "unknownKey"},
		"serve bad flag":          {[]string{"serve", "--grpc", "x"}, 1, "flag provided but not defined"},
		"rotate no args":          {[]string{"rotate"}, 2, "NAMESPACE/SERVICEACCOUNT"},
		"rotate bad identity":     {[]string{"rotate", "nope", "k=v"}, 2, "not NAMESPACE/SERVICEACCOUNT"},
		"rotate bad pair":         {[]string{"rotate", "ns/sa", "novalue"}, 2, "not key=value"},
		"rotate missing creds":    {[]string{"rotate", "--nats-creds-file", filepath.Join(dir, "none.creds"), "ns/sa", "k=v"}, 2, "--nats-creds-file"},
		"rotate missing vault CA": {[]string{"rotate", "--vault-addr", "https://127.0.0.1:1", "--vault-ca-file", filepath.Join(dir, "none.crt"), "--nats-url", "", "ns/sa", "k=v"}, 1, "none.crt"},
		"bridge missing NATS CA":  {[]string{"vault-audit-bridge", "--file", filepath.Join(dir, "audit.log"), "--nats-ca-file", filepath.Join(dir, "none.crt")}, 2, "caFile"},
		"serve missing tls cert":  {[]string{"serve", "--config", tlsCfg}, 1, "listen.tls.certFile"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Setenv("VAULT_TOKEN", "t")
			var out, errb bytes.Buffer
			code := run(c.args, &out, &errb)
			all := out.String() + errb.String()
			if code != c.code || !strings.Contains(all, c.inOutput) {
				t.Fatalf("exit %d (want %d), output %q (want %q)", code, c.code, all, c.inOutput)
			}
		})
	}
}
