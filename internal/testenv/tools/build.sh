#!/usr/bin/env bash
# Builds the real servers of credinject's test bed (Vault, kube-apiserver,
# kubectl, Ory Hydra, Prometheus's promtool, an OTLP receiver, the Versity S3
# gateway) from the Go module proxy into a cache outside the repository, keyed
# by version and by a hash of the tool module, so a second run costs nothing.
# Prints progress as it goes, each line prefixed by the tool's name: the
# start with the cold time measured on this machine, each phase (downloading
# modules, compiling N packages, with a line every 30 s saying how many are
# done and about how long is left), and the finish with the elapsed time and
# the binary directory. A tool already built prints "cached".
#
#   build.sh [vault] [kube] [hydra] [promtool] [otlpsink] [controllergen] [helm] [crds] [versitygw]     (default: all)
#   build.sh path NAME          print NAME's binary folder, building it first if needed
#   CREDINJECT_TOOLS_DIR overrides the cache root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${CREDINJECT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/credinject/tools}
mkdir -p "$root"

# key NAME VERSION: the cache folder for one tool module.
key() {
  local sum
  sum=$({ cat "$here/$1"/go.mod "$here/$1"/go.sum "$here/$1"/*.go 2>/dev/null || true; } | sha256sum | cut -c1-12)
  echo "$root/$1-$2-$sum"
}

# lock NAME: one build of a tool at a time (test binaries ask in parallel).
lock() {
  exec 9>"$root/.lock-$1"
  if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    echo "$1: waiting for another build of it to finish…"
    flock 9
  fi
}

# spec NAME: sets version and bins (the binaries a finished build holds, space
# separated) for NAME; exits 2 on an unknown name.
spec() {
  case $1 in
    vault) version=1.21.4 bins=vaultdev ;;
    kube) version=1.37.2 bins="kube-apiserver kubectl" ;;
    hydra) version=2.3.0 bins=hydra ;;
    promtool) version=0.316.0 bins=promtool ;;
    otlpsink) version=0.165.0 bins=otlpsink ;;
    controllergen) version=0.23.0 bins=controller-gen ;;
    helm) version=4.3.2 bins=helm ;;
    crds) version=gwapi1.6.3-istio1.32.0-eg1.9.1-cm1.21.2-po0.85.0 bins=crds.txt ;;
    versitygw) version=1.8.0 bins=versitygw ;;
    *) echo "build.sh: unknown tool $1" >&2; exit 2 ;;
  esac
}

# cold NAME: seconds a build of NAME took on this 2-core machine with empty
# module and build caches (Vault 659 s, kube-apiserver and kubectl 702 s and
# Hydra 320 s, the three in parallel; promtool 607 s beside four other builds;
# otlpsink 300 s is a guess: its one measurement, 1039 s with the modules
# present at nice 19 beside other engineers' builds, says more of the load;
# controller-gen "about a minute", Helm "several minutes" and the CRDs'
# downloads are guesses too; versitygw 250 s, alone, the modules downloaded
# in 10 s of it, beside other engineers' work at a load of about 5).
# Only for the estimates.
cold() {
  case $1 in
    vault) echo 660 ;; kube) echo 700 ;; hydra) echo 470 ;; promtool) echo 600 ;; otlpsink) echo 300 ;;
    controllergen) echo 60 ;; helm) echo 300 ;; crds) echo 30 ;; versitygw) echo 250 ;;
  esac
}

# dur SECONDS: "9m58s" or "42s".
dur() {
  if [ "$1" -ge 60 ]; then echo "$(($1 / 60))m$(($1 % 60))s"; else echo "$1s"; fi
}

# later: seconds the tools after the current one in this lane would take
# cold (set by the main loop); added to each estimate of what is left.
later=0

# gobuild NAME ARGS... PKG: go build of one package with progress. First the
# modules it needs are downloaded (go list -deps), which also counts the
# packages to compile; then go build -v names each package it compiles,
# counted here. Other output (errors) is passed on, prefixed.
gobuild() {
  local name=$1; shift
  local pkg=${*: -1} t0=$SECONDS total tags=""
  local a
  for a in "$@"; do case $a in -tags) tags=next ;; *) if [ "$tags" = next ]; then tags=$a; fi ;; esac; done
  local of=""
  [ "$pkg" = . ] || of=" of $pkg"
  echo "$name: downloading the modules$of…"
  total=$(go list -deps ${tags:+-tags "$tags"} -f '{{if not .Standard}}x{{end}}' "$pkg" | grep -c x || true)
  echo "$name: modules ready in $(dur $((SECONDS - t0))); compiling up to $total packages…"
  local t1=$SECONDS last=$SECONDS done=0 line left
  go build -v "$@" 2>&1 | while true; do
    if IFS= read -r -t 30 line; then
      case $line in
        *" "* | "") echo "$name: $line" ;;
        *.*/*) done=$((done + 1)) ;; # a package outside the standard library
        *) ;;                         # a standard library package
      esac
    elif [ $? -le 128 ]; then
      break # end of output
    fi
    if [ $((SECONDS - last)) -ge 30 ]; then
      last=$SECONDS
      local spent=$((SECONDS - t1))
      if [ "$done" -ge 20 ] && [ "$total" -gt "$done" ]; then
        left=$((spent * (total - done) / done))
      else
        left=$(($(cold "$name") - (SECONDS - t0)))
        [ "$left" -gt 0 ] || left=0
      fi
      echo "$name: compiling, $done/$total packages, $(dur $((SECONDS - t0))) so far, about $(dur "$left") left$([ "$later" -gt 0 ] && echo " (then about $(dur "$later") for the rest of this lane)")"
    fi
  done
  return "${PIPESTATUS[0]}"
}

# built DIR BINS...: whether every binary of BINS is in DIR.
built() {
  local dir=$1 b; shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

# build NAME: builds NAME into its cache folder unless it is there already
# (checked again under the lock); compile_NAME TMP, run in $here/NAME, writes
# the binaries into TMP, which then replaces the folder in one move.
build() {
  spec "$1"
  local name=$1 out; out=$(key "$1" "$version")
  # shellcheck disable=SC2086 # bins is a word list
  if built "$out" $bins; then echo "$name: cached in $out"; return; fi
  lock "$name"
  # shellcheck disable=SC2086
  if built "$out" $bins; then echo "$name: cached in $out"; return; fi
  local t0=$SECONDS
  echo "$name: building $version (cold on this machine: about $(dur "$(cold "$name")"))"
  rm -rf "$out.tmp"
  (cd "$here/$name" && "compile_$name" "$out.tmp")
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "$name: built in $(dur $((SECONDS - t0))) -> $out"
}

compile_vault() {
  gobuild vault -trimpath -ldflags "-s -w" -o "$1/vaultdev" .
}

compile_kube() {
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
  gobuild kube -trimpath -ldflags "$ld" -o "$1/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
    && gobuild kube -trimpath -ldflags "$ld" -o "$1/kubectl" k8s.io/kubernetes/cmd/kubectl
}

compile_hydra() {
  # cgo sqlite for DSN=memory.
  CGO_ENABLED=1 gobuild hydra -trimpath -tags sqlite,sqlite_omit_load_extension -ldflags "-s -w" \
    -o "$1/hydra" github.com/ory/hydra/v2
}

compile_promtool() {
  gobuild promtool -trimpath -ldflags "-s -w" -o "$1/promtool" github.com/prometheus/prometheus/cmd/promtool
}

compile_otlpsink() {
  # The OpenTelemetry Collector's OTLP receiver, as a span sink.
  gobuild otlpsink -trimpath -ldflags "-s -w" -o "$1/otlpsink" .
}

compile_controllergen() {
  gobuild controllergen -trimpath -ldflags "-s -w" -o "$1/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen
}

compile_helm() {
  gobuild helm -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v$version" -o "$1/helm" helm.sh/helm/v4/cmd/helm
}

compile_versitygw() {
  # The Versity S3 gateway (Apache-2.0): the bed's SigV4 verifier.
  CGO_ENABLED=0 gobuild versitygw -trimpath -ldflags "-s -w" -o "$1/versitygw" github.com/versity/versitygw/cmd/versitygw
}

# compile_crds: the CRDs of the projects deploy/ targets, as each ships
# them in its own Go module (downloaded from the module proxy, not
# compiled): Gateway API (standard channel), Istio, Envoy Gateway,
# cert-manager, the Prometheus Operator. crds.txt lists the files, in the order to apply them.
compile_crds() {
  echo "crds: downloading the CRDs of Gateway API, Istio, Envoy Gateway, cert-manager and the Prometheus Operator…"
  local out=$1 m dir
  mkdir -p "$out"
  for m in sigs.k8s.io/gateway-api@v1.6.3 istio.io/api@v1.32.0 github.com/envoyproxy/gateway@v1.9.1 \
           github.com/cert-manager/cert-manager@v1.21.2 github.com/prometheus-operator/prometheus-operator@v0.85.0; do
    dir=$(cd "$out" && GOFLAGS=-mod=mod go mod download -json "$m" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir" ] || { echo "crds: no module directory for $m" >&2; return 1; }
    case $m in
      sigs.k8s.io/gateway-api@*) mkdir -p "$out/gateway-api"; cp "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$out/gateway-api/" ;;
      istio.io/api@*) mkdir -p "$out/istio"; cp "$dir/kubernetes/customresourcedefinitions.gen.yaml" "$out/istio/" ;;
      github.com/envoyproxy/gateway@*) mkdir -p "$out/envoy-gateway"; cp "$dir"/charts/gateway-helm/charts/crds/crds/generated/*.yaml "$out/envoy-gateway/" ;;
      github.com/cert-manager/cert-manager@*) mkdir -p "$out/cert-manager"; cp "$dir"/deploy/crds/*.yaml "$out/cert-manager/" ;;
      github.com/prometheus-operator/*) mkdir -p "$out/prometheus-operator"
        cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{prometheusrules,servicemonitors,podmonitors}.yaml "$out/prometheus-operator/" ;;
    esac
  done
  chmod -R u+w "$out"
  (cd "$out" && find . -name '*.yaml' | sort > crds.txt) && chmod +x "$out/crds.txt"
}

if [ "${1:-}" = path ]; then
  name=${2:?build.sh path NAME}
  spec "$name"
  build "$name" >&2
  key "$name" "$version"
  exit 0
fi

what=(${*:-vault kube hydra promtool otlpsink controllergen helm crds versitygw})
for i in "${!what[@]}"; do
  # later: the cold time of the tools after this one that are not built.
  later=0
  for w in "${what[@]:i+1}"; do
    spec "$w"
    # shellcheck disable=SC2086
    built "$(key "$w" "$version")" $bins || later=$((later + $(cold "$w")))
  done
  build "${what[i]}"
done
