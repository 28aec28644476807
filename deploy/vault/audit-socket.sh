#!/usr/bin/env bash
# Streams Vault's audit log to `credinject vault-audit-bridge`, which turns
# writes under the credential paths (secret/data/egress/<namespace>/<sa>) into
# rotation events on NATS, so every credinject replica refetches the credential
# of that identity at once instead of at its next scheduled refresh. A credential
# rotated with any tool (vault kv put, Terraform, the UI) is then picked up
# immediately, not only one rotated with `credinject rotate`.
#
#   BRIDGE_ADDR=<host>:<port of the bridge> \
#   VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=root deploy/vault/audit-socket.sh
#
# Environment:
#   BRIDGE_ADDR   host:port the bridge listens on (TCP), as Vault reaches it (required)
#   AUDIT_PATH    audit device path                                  (credinject-bridge)
#
# Vault refuses a request when no enabled audit device can record it. With the
# socket device as the only one, a stopped bridge would therefore stop Vault
# from answering (fail closed). Keep another device (file, syslog) enabled
# so that the bridge is not on Vault's critical path; this script warns if
# there is none.
set -euo pipefail

: "${VAULT_ADDR:?VAULT_ADDR must be set}"
: "${VAULT_TOKEN:?VAULT_TOKEN must be set}"
: "${BRIDGE_ADDR:?BRIDGE_ADDR must be set to the host:port of credinject vault-audit-bridge}"
export VAULT_ADDR VAULT_TOKEN
AUDIT_PATH=${AUDIT_PATH:-credinject-bridge}

info() { echo "[audit] $*"; }
die() { echo "[audit] error: $*" >&2; exit 1; }

command -v vault >/dev/null 2>&1 || die "the vault CLI is not on PATH"
[[ "$BRIDGE_ADDR" =~ ^[^[:space:]/]+:[0-9]+$ ]] || die "BRIDGE_ADDR=$BRIDGE_ADDR is not host:port"

# `vault audit list` prints "No audit devices are enabled." (exit 0) or a table.
devices=$(vault audit list 2>/dev/null || true)
if awk -v p="$AUDIT_PATH/" '$1 == p { found = 1 } END { exit !found }' <<<"$devices"; then
  info "audit device $AUDIT_PATH/ already enabled; to change its address:"
  info "  vault audit disable $AUDIT_PATH/ && BRIDGE_ADDR=... $0"
  exit 0
fi

others=$(awk 'NR > 2 && $1 ~ /\/$/ { n++ } END { print n + 0 }' <<<"$devices")
if [ "$others" -eq 0 ]; then
  echo "[audit] warning: $AUDIT_PATH would be the only audit device; if the bridge is down," >&2
  echo "[audit] warning: Vault refuses every request. Enable a file device too, e.g." >&2
  echo "[audit] warning:   vault audit enable file file_path=stdout" >&2
fi

info "enabling socket audit device $AUDIT_PATH/ -> tcp://$BRIDGE_ADDR (json)"
vault audit enable -path="$AUDIT_PATH" \
  -description="credinject vault-audit-bridge: credential rotation events" \
  socket \
  address="$BRIDGE_ADDR" \
  socket_type=tcp \
  format=json
info "done"
