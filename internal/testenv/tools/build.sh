#!/usr/bin/env bash
# Builds the real servers of credinject's test bed (Vault, kube-apiserver,
# kubectl, Ory Hydra, Prometheus's promtool, an OTLP receiver) from the Go module proxy into a cache outside the repository, keyed
# by version and by a hash of the tool module, so a second run costs nothing.
# Prints the binary directory of each tool and how long each build took.
#
#   build.sh [vault] [kube] [hydra] [promtool] [otlpsink]     (default: all)
#   build.sh path NAME          print NAME's binary folder, building it first if needed
#   CREDINJECT_TOOLS_DIR overrides the cache root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${CREDINJECT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/credinject/tools}
mkdir -p "$root"

# key NAME VERSION: the cache folder for one tool module.
key() {
  local sum
  sum=$(cat "$here/$1"/go.mod "$here/$1"/go.sum "$here/$1"/*.go 2>/dev/null | sha256sum | cut -c1-12)
  echo "$root/$1-$2-$sum"
}

# lock NAME: one build of a tool at a time (test binaries ask in parallel).
lock() {
  exec 9>"$root/.lock-$1"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
}

build_vault() {
  local out; out=$(key vault 1.21.4)
  if [ -x "$out/vaultdev" ]; then echo "vault: cached in $out"; return; fi
  lock vault
  if [ -x "$out/vaultdev" ]; then echo "vault: cached in $out"; return; fi
  local t0=$SECONDS
  echo "vault: building the real Vault 1.21.4 server (cold: 10+ minutes on 2 cores)…"
  rm -rf "$out.tmp"
  (cd "$here/vault" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/vaultdev" .)
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "vault: built in $((SECONDS - t0))s -> $out"
}

build_kube() {
  local out; out=$(key kube 1.37.2)
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kubectl" ]; then echo "kube: cached in $out"; return; fi
  lock kube
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kubectl" ]; then echo "kube: cached in $out"; return; fi
  local t0=$SECONDS
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
  echo "kube: building kube-apiserver and kubectl 1.37.2 (cold: 6-12 minutes on 2 cores)…"
  rm -rf "$out.tmp"
  (cd "$here/kube" && go build -trimpath -ldflags "$ld" -o "$out.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
    && go build -trimpath -ldflags "$ld" -o "$out.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "kube: built in $((SECONDS - t0))s -> $out"
}

build_hydra() {
  local out; out=$(key hydra 2.3.0)
  if [ -x "$out/hydra" ]; then echo "hydra: cached in $out"; return; fi
  lock hydra
  if [ -x "$out/hydra" ]; then echo "hydra: cached in $out"; return; fi
  local t0=$SECONDS
  echo "hydra: building Ory Hydra 2.3.0 (cgo sqlite for DSN=memory; cold: several minutes on 2 cores)…"
  rm -rf "$out.tmp"
  (cd "$here/hydra" && CGO_ENABLED=1 go build -trimpath -tags sqlite,sqlite_omit_load_extension -ldflags "-s -w" \
    -o "$out.tmp/hydra" github.com/ory/hydra/v2)
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "hydra: built in $((SECONDS - t0))s -> $out"
}

build_promtool() {
  local out; out=$(key promtool 0.316.0)
  if [ -x "$out/promtool" ]; then echo "promtool: cached in $out"; return; fi
  lock promtool
  if [ -x "$out/promtool" ]; then echo "promtool: cached in $out"; return; fi
  local t0=$SECONDS
  echo "promtool: building Prometheus's promtool v0.316.0 (3.x; cold: several minutes on 2 cores)…"
  rm -rf "$out.tmp"
  (cd "$here/promtool" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/promtool" github.com/prometheus/prometheus/cmd/promtool)
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "promtool: built in $((SECONDS - t0))s -> $out"
}

build_otlpsink() {
  local out; out=$(key otlpsink 0.165.0)
  if [ -x "$out/otlpsink" ]; then echo "otlpsink: cached in $out"; return; fi
  lock otlpsink
  if [ -x "$out/otlpsink" ]; then echo "otlpsink: cached in $out"; return; fi
  local t0=$SECONDS
  echo "otlpsink: building the OpenTelemetry Collector's OTLP receiver v0.165.0 into a span sink…"
  rm -rf "$out.tmp"
  (cd "$here/otlpsink" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/otlpsink" .)
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "otlpsink: built in $((SECONDS - t0))s -> $out"
}

if [ "${1:-}" = path ]; then
  name=${2:?build.sh path NAME}
  case $name in
    vault) build_vault >&2; key vault 1.21.4 ;;
    kube) build_kube >&2; key kube 1.37.2 ;;
    hydra) build_hydra >&2; key hydra 2.3.0 ;;
    promtool) build_promtool >&2; key promtool 0.316.0 ;;
    otlpsink) build_otlpsink >&2; key otlpsink 0.165.0 ;;
    *) echo "build.sh: unknown tool $name" >&2; exit 2 ;;
  esac
  exit 0
fi

what=${*:-vault kube hydra promtool otlpsink}
for w in $what; do
  case $w in
    vault) build_vault ;;
    kube) build_kube ;;
    hydra) build_hydra ;;
    promtool) build_promtool ;;
    otlpsink) build_otlpsink ;;
    *) echo "build.sh: unknown tool $w" >&2; exit 2 ;;
  esac
done
