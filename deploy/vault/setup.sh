#!/usr/bin/env bash
# Prepares HashiCorp Vault for credinject: the same Vault layout as the
# Kuadrant/Authorino reference design ("Egress Gateway Credential Injection",
# Kuadrant's hack/setup-egress.sh), with one deliberate tightening (the
# templated policy, below).
#
# Uses the stock `vault` CLI; VAULT_ADDR and VAULT_TOKEN come from the
# environment. Every step is idempotent: run it again to reconcile.
#
#   # Vault in the cluster (the reference's dev Vault, root token "root"):
#   kubectl -n vault port-forward svc/vault 8200:8200 &
#   VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=root deploy/vault/setup.sh
#
# Environment (all optional except VAULT_ADDR / VAULT_TOKEN):
#   KUBERNETES_HOST       API server as Vault reaches it   (https://kubernetes.default.svc)
#   KUBERNETES_CA_CERT    PEM file of the API server's CA (default: Vault's pod CA)
#   TOKEN_REVIEWER_JWT    token Vault uses for TokenReview (needs system:auth-delegator);
#                         default: Vault's own pod token when Vault runs in the cluster
#   DISABLE_LOCAL_CA_JWT  true when Vault runs outside the cluster without a reviewer
#                         token: Vault then reviews each token with the token itself
#   BOUND_SA              role's service accounts, comma separated     (default)
#   BOUND_NAMESPACES      role's namespaces, comma separated           (egress-test)
#   ROLE_AUDIENCE         token audience the role requires             (none, as the reference)
#   KV_MOUNT              kv v2 mount                                  (secret)
#   AUTH_MOUNT            Kubernetes auth mount                        (kubernetes)
#   ROLE                  role name                                    (egress-workload)
#   POLICY                policy name                                  (egress-read)
#   SAMPLE_NAMESPACE / SAMPLE_SA / SAMPLE_API_KEY
#                         the sample credential (egress-test / default /
#                         sk-test-openai-key-for-egress); SKIP_SAMPLE=1 skips it
#
# The names match credinject's defaults (config keys vault.authMount,
# vault.role, vault.kvMount, vault.path "egress/{namespace}/{serviceaccount}").
set -euo pipefail

: "${VAULT_ADDR:?VAULT_ADDR must be set (e.g. http://127.0.0.1:8200)}"
: "${VAULT_TOKEN:?VAULT_TOKEN must be set}"
export VAULT_ADDR VAULT_TOKEN

KUBERNETES_HOST=${KUBERNETES_HOST:-https://kubernetes.default.svc}
KUBERNETES_CA_CERT=${KUBERNETES_CA_CERT:-}
TOKEN_REVIEWER_JWT=${TOKEN_REVIEWER_JWT:-}
DISABLE_LOCAL_CA_JWT=${DISABLE_LOCAL_CA_JWT:-false}
BOUND_SA=${BOUND_SA:-default}
BOUND_NAMESPACES=${BOUND_NAMESPACES:-egress-test}
ROLE_AUDIENCE=${ROLE_AUDIENCE:-}
KV_MOUNT=${KV_MOUNT:-secret}
AUTH_MOUNT=${AUTH_MOUNT:-kubernetes}
ROLE=${ROLE:-egress-workload}
POLICY=${POLICY:-egress-read}
SAMPLE_NAMESPACE=${SAMPLE_NAMESPACE:-egress-test}
SAMPLE_SA=${SAMPLE_SA:-default}
SAMPLE_API_KEY=${SAMPLE_API_KEY:-sk-test-openai-key-for-egress}
SKIP_SAMPLE=${SKIP_SAMPLE:-0}

info() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

command -v vault >/dev/null 2>&1 || die "the vault CLI is not on PATH"
vault token lookup >/dev/null 2>&1 || die "cannot use VAULT_TOKEN against $VAULT_ADDR"

# mounted KIND PATH: is PATH/ listed by `vault KIND list` (secrets | auth)?
mounted() {
  vault "$1" list 2>/dev/null | awk -v p="$2/" '$1 == p { found = 1 } END { exit !found }'
}

# 1. KV v2 at secret/ (the reference's dev Vault has it already; a production
#    Vault may not). A kv v1 mount is upgraded in place.
if ! mounted secrets "$KV_MOUNT"; then
  info "enabling kv v2 at $KV_MOUNT/"
  vault secrets enable -path="$KV_MOUNT" -version=2 kv
elif ! vault secrets list -detailed 2>/dev/null | awk -v p="$KV_MOUNT/" '$1 == p' | grep -q 'version:2'; then
  info "upgrading $KV_MOUNT/ to kv v2"
  vault kv enable-versioning "$KV_MOUNT/"
else
  info "kv v2 at $KV_MOUNT/ already enabled"
fi

# 2. Kubernetes auth at auth/kubernetes, as in the reference
#    (`vault auth enable kubernetes`).
if ! mounted auth "$AUTH_MOUNT"; then
  info "enabling Kubernetes auth at auth/$AUTH_MOUNT"
  vault auth enable -path="$AUTH_MOUNT" kubernetes
else
  info "Kubernetes auth at auth/$AUTH_MOUNT already enabled"
fi

# 3. Where Vault validates the workload tokens it is given at login. The
#    reference sets only kubernetes_host: Vault then uses its own pod's CA and
#    service account token (disable_local_ca_jwt=false) for TokenReview.
config_args=("kubernetes_host=$KUBERNETES_HOST")
if [ -n "$KUBERNETES_CA_CERT" ]; then
  [ -r "$KUBERNETES_CA_CERT" ] || die "KUBERNETES_CA_CERT=$KUBERNETES_CA_CERT is not readable"
  config_args+=("kubernetes_ca_cert=@$KUBERNETES_CA_CERT")
fi
config_hint() {
  echo "[setup] hint: a Vault outside the cluster has no pod CA/token to fall back on: set KUBERNETES_CA_CERT" >&2
  echo "[setup] hint: (and TOKEN_REVIEWER_JWT), or DISABLE_LOCAL_CA_JWT=true to use the system CAs and" >&2
  echo "[setup] hint: review each login with the workload's own token" >&2
  exit 1
}
if [ -n "$TOKEN_REVIEWER_JWT" ]; then
  info "configuring auth/$AUTH_MOUNT ($KUBERNETES_HOST, explicit reviewer token)"
  # The token goes through stdin ("-"), never onto a command line.
  printf '%s' "$TOKEN_REVIEWER_JWT" |
    vault write "auth/$AUTH_MOUNT/config" "${config_args[@]}" \
      disable_local_ca_jwt="$DISABLE_LOCAL_CA_JWT" token_reviewer_jwt=- >/dev/null || config_hint
else
  info "configuring auth/$AUTH_MOUNT ($KUBERNETES_HOST, disable_local_ca_jwt=$DISABLE_LOCAL_CA_JWT)"
  vault write "auth/$AUTH_MOUNT/config" "${config_args[@]}" \
    disable_local_ca_jwt="$DISABLE_LOCAL_CA_JWT" >/dev/null || config_hint
fi

# 4. The mount accessor, needed by the templated policy: identity templates
#    name the auth mount by accessor (e.g. auth_kubernetes_1a2b3c4d).
accessor=""
if command -v jq >/dev/null 2>&1; then
  accessor=$(vault auth list -format=json | jq -r --arg p "$AUTH_MOUNT/" '.[$p].accessor // empty')
elif command -v python3 >/dev/null 2>&1; then
  accessor=$(vault auth list -format=json |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], {}).get("accessor", ""))' "$AUTH_MOUNT/")
else
  # Table output: Path  Type  Accessor  Description  Version
  accessor=$(vault auth list | awk -v p="$AUTH_MOUNT/" '$1 == p { print $3 }')
fi
[[ "$accessor" =~ ^auth_[A-Za-z0-9_]+$ ]] || die "could not find the accessor of auth/$AUTH_MOUNT (got '$accessor')"
info "auth/$AUTH_MOUNT accessor: $accessor"

# 5. Policy. The reference grants `read` on secret/data/egress/* to every
#    identity bound to the role, so any bound workload could read any other
#    workload's credential by asking for its path. This policy is templated on
#    the identity Vault itself established at login (the service account's
#    namespace and name from the Kubernetes auth alias metadata): each workload
#    can read exactly secret/egress/<its namespace>/<its service account>,
#    which is credinject's vault.path "egress/{namespace}/{serviceaccount}".
#    If you add routes[].path templates with other prefixes, add one templated
#    path stanza per prefix. A vault-read route (leased secrets, e.g.
#    database/creds/<ns>-<sa>) also needs, to revoke a replaced lease at once,
#    revoke scoped to the identity's own leases (credinject sends the lease id
#    in the path), never the unscoped "sys/leases/revoke":
#      path "sys/leases/revoke/database/creds/{{...namespace}}-{{...name}}/*" { capabilities = ["update"] }
info "writing policy $POLICY"
vault policy write "$POLICY" - <<EOF
# Written by credinject deploy/vault/setup.sh. Each Kubernetes workload
# identity reads only its own credential: $KV_MOUNT/egress/<namespace>/<serviceaccount>.
path "$KV_MOUNT/data/egress/{{identity.entity.aliases.$accessor.metadata.service_account_namespace}}/{{identity.entity.aliases.$accessor.metadata.service_account_name}}" {
  capabilities = ["read"]
}
EOF

# 6. Role, as the reference's `vault write auth/kubernetes/role/egress-workload
#    bound_service_account_names=default bound_service_account_namespaces=egress-test
#    policies=egress-read ttl=1h` (token_policies / token_ttl are the current
#    names of policies / ttl). Only bound identities can log in: a workload of
#    another namespace is refused by Vault and credinject answers 403
#    (vault_denied), the reference's third test.
role_args=(
  "bound_service_account_names=$BOUND_SA"
  "bound_service_account_namespaces=$BOUND_NAMESPACES"
  "token_policies=$POLICY"
  "token_ttl=1h"
)
if [ -n "$ROLE_AUDIENCE" ]; then
  role_args+=("audience=$ROLE_AUDIENCE")
fi
info "writing role auth/$AUTH_MOUNT/role/$ROLE (service accounts: $BOUND_SA; namespaces: $BOUND_NAMESPACES)"
vault write "auth/$AUTH_MOUNT/role/$ROLE" "${role_args[@]}" >/dev/null

# 7. The reference's test credential, at the per-identity path of the
#    test-client pod (namespace egress-test, service account default).
if [ "$SKIP_SAMPLE" != "1" ]; then
  info "storing the sample credential at $KV_MOUNT/egress/$SAMPLE_NAMESPACE/$SAMPLE_SA"
  vault kv put "$KV_MOUNT/egress/$SAMPLE_NAMESPACE/$SAMPLE_SA" api_key="$SAMPLE_API_KEY" >/dev/null
fi

info "done: role $ROLE, policy $POLICY, credentials under $KV_MOUNT/egress/<namespace>/<serviceaccount>"
