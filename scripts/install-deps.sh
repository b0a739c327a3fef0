#!/usr/bin/env bash
# install-deps.sh - everything stasis and its tests need on a fresh Debian 12 machine:
# CRIU 4.x (built and cached by install-criu.sh), the tools CRIU calls (iptables for network
# namespaces), and what the end-to-end tests use (busybox-static for a tiny rootfs,
# python3, man-db and groff-base to render the man pages, openssh-server for the two-host
# migration test bed: tests/common/hosts.rs starts its own sshds, never the system's).
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install-deps: run as root" >&2; exit 1; }

need=()
for p in busybox-static iptables python3 pkgconf gcc man-db groff-base openssh-server openssh-client; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
bash scripts/install-criu.sh
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is needed: https://rustup.rs" >&2; exit 1; }
