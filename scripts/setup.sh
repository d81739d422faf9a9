#!/usr/bin/env bash
# Install everything Wardgate's build, demo and tests need, idempotently:
# Debian packages (PostgreSQL server and clients, pgbouncer, libclang for the
# SQL parser, node/npm and curl for the test OpenID Provider, chromium for the
# approvals page's browser test, python3-venv for the S3-compatible test server),
# the wasm32-wasip2 Rust target, the provider's npm packages, and moto (PyPI)
# for the archive's S3 test. Safe to run again.
set -euo pipefail
. "$(dirname "$0")/env.sh"

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in postgresql postgresql-client postgresql-contrib pgbouncer libclang-dev clang curl chromium python3-venv; do
  have "$p" || need_pkgs+=("$p")
done
# node and npm may come from elsewhere (e.g. NodeSource bundles npm into nodejs): check the commands.
{ command -v node && command -v npm; } >/dev/null || need_pkgs+=(nodejs npm)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ${need_pkgs[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "setup: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep Debian's packaged PostgreSQL and pgbouncer from starting system services.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
command -v rustup >/dev/null || { echo "setup: rustup not found (install Rust from rustup.rs)" >&2; exit 1; }
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
# The test OpenID Provider (npm oidc-provider) into ~/.cache/wardgate/oidc.
"$(dirname "$0")/oidc.sh" install
# An S3-compatible server for the archive tests (PyPI moto), into ~/.cache/wardgate/moto.
moto="$HOME/.cache/wardgate/moto"
if [ ! -x "$moto/bin/moto_server" ]; then
  echo "setup: installing moto (S3-compatible test server)"
  python3 -m venv "$moto"
  "$moto/bin/pip" install -q "moto[server]==5.2.5"
fi
echo "setup: ok"
