package main

import (
	"flag"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/watcher"
)

// vaultTLSFlags are the vault.caFile … vault.namespace settings of `serve`,
// as flags of the other commands. Empty flags leave the VAULT_* variables
// (VAULT_CACERT, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_TLS_SERVER_NAME,
// VAULT_NAMESPACE) in force.
type vaultTLSFlags struct {
	caFile, clientCertFile, clientKeyFile, tlsServerName, namespace string
}

func addVaultTLSFlags(fs *flag.FlagSet) *vaultTLSFlags {
	f := &vaultTLSFlags{}
	fs.StringVar(&f.caFile, "vault-ca-file", "", "CA (PEM) that verifies Vault's certificate (default VAULT_CACERT or the system roots)")
	fs.StringVar(&f.clientCertFile, "vault-client-cert-file", "", "client certificate (PEM) presented to Vault (default VAULT_CLIENT_CERT)")
	fs.StringVar(&f.clientKeyFile, "vault-client-key-file", "", "key of --vault-client-cert-file (default VAULT_CLIENT_KEY)")
	fs.StringVar(&f.tlsServerName, "vault-tls-server-name", "", "name expected in Vault's certificate (default VAULT_TLS_SERVER_NAME or the address's host)")
	fs.StringVar(&f.namespace, "vault-namespace", "", "Vault Enterprise / HCP namespace (default VAULT_NAMESPACE)")
	return f
}

func (f *vaultTLSFlags) clientConfig(addr string) watcher.VaultClientConfig {
	return watcher.VaultClientConfig{
		Address: addr, CAFile: f.caFile, ClientCertFile: f.clientCertFile, ClientKeyFile: f.clientKeyFile,
		TLSServerName: f.tlsServerName, Namespace: f.namespace,
	}
}

// natsFlags are the events.credsFile … events.keyFile settings of `serve`,
// as flags. The defaults come from the variables the nats CLI reads.
type natsFlags struct{ c events.Credentials }

func addNATSFlags(fs *flag.FlagSet) *natsFlags {
	f := &natsFlags{}
	fs.StringVar(&f.c.CredsFile, "nats-creds-file", envOr("NATS_CREDS", ""), "NATS user credentials file: user JWT and nkey seed (default NATS_CREDS)")
	fs.StringVar(&f.c.NKeyFile, "nats-nkey-file", envOr("NATS_NKEY", ""), "NATS nkey user seed file (default NATS_NKEY)")
	fs.StringVar(&f.c.TokenFile, "nats-token-file", "", "file holding a NATS token")
	fs.StringVar(&f.c.CAFile, "nats-ca-file", envOr("NATS_CA", ""), "CA (PEM) that verifies the NATS server's certificate (default NATS_CA)")
	fs.StringVar(&f.c.CertFile, "nats-cert-file", envOr("NATS_CERT", ""), "client certificate (PEM) presented to NATS (default NATS_CERT)")
	fs.StringVar(&f.c.KeyFile, "nats-key-file", envOr("NATS_KEY", ""), "key of --nats-cert-file (default NATS_KEY)")
	return f
}

// options checks the files and returns the connection options; errors name
// the flag.
func (f *natsFlags) options() ([]nats.Option, error) {
	opts, err := f.c.Options()
	if err != nil {
		return nil, usageError{fmt.Errorf("NATS credentials (--nats-creds-file, --nats-nkey-file, --nats-token-file, --nats-ca-file, --nats-cert-file, --nats-key-file): %w", err)}
	}
	return opts, nil
}
