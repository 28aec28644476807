package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	"github.com/credinject/credinject/watcher"
)

// probeVault asks Vault's health endpoint once at start, so that a TLS
// mistake (wrong CA, wrong server name, a client certificate Vault refuses)
// is logged at once with the keys to look at, instead of only as the 503
// vault_unavailable answers it causes. It never stops the server: Vault may
// simply not be up yet, and the watcher retries on its own.
func (a *App) probeVault(ctx context.Context) {
	if w := a.vaultTransportWarning(); w != "" {
		a.log.Warn("vault: "+w, "address", a.vault.Address())
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := a.vault.Sys().HealthWithContext(ctx)
	switch {
	case err == nil:
		a.log.Info("vault: reachable", "address", a.cfg.Vault.Address, "namespace", a.cfg.Vault.Namespace)
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
	case isTLSError(err):
		a.log.Error("vault: TLS handshake failed; check vault.caFile, vault.tlsServerName, vault.clientCertFile and vault.clientKeyFile (or VAULT_CACERT, VAULT_TLS_SERVER_NAME, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY); every request needing Vault gets 503 vault_unavailable until this is fixed",
			"address", a.cfg.Vault.Address, "err", err)
	default:
		a.log.Warn("vault: not reachable at start; retrying as requests and refreshes need it", "address", a.cfg.Vault.Address, "err", err)
	}
}

// vaultTransportWarning says what is wrong with how Vault is reached, ""
// when nothing is: a plaintext http:// address outside credinject dev (every
// identity's Vault token and credential would cross the network
// unencrypted), or certificate verification turned off (VAULT_SKIP_VERIFY
// without vault.caFile). Logged at start and shown on /readyz.
func (a *App) vaultTransportWarning() string {
	switch plaintext, unverified := watcher.VaultTransportRisks(a.vault); {
	case plaintext && !a.opts.Dev:
		return "plaintext http://: Vault tokens and credentials cross the network unencrypted; use https:// with vault.caFile"
	case unverified:
		return "certificate not verified (VAULT_SKIP_VERIFY): set vault.caFile"
	}
	return ""
}

// isTLSError: the handshake failed on a certificate, ours or Vault's.
func isTLSError(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		alert    tls.AlertError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
	)
	if errors.As(err, &verify) || errors.As(err, &alert) || errors.As(err, &unknown) ||
		errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &record) {
		return true
	}
	// net/http reports an alert received while it waits for the response
	// ("readLoopPeekFailLocked: remote error: tls: certificate required")
	// without wrapping it.
	return strings.Contains(err.Error(), "remote error: tls: ")
}
