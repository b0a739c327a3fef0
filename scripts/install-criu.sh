#!/usr/bin/env bash
# install-criu.sh - make a working CRIU >= 4.2 available as `criu` on PATH, with CRIU's cuda
# plugin in /usr/local/lib/criu (GPU jobs need it; it needs no CUDA to build). CRIU does not load
# plugins from there by itself: stasis passes `--libdir` for GPU jobs only, so no other dump pays
# for the plugin's probing.
#
# Debian 12 ships CRIU 3.17, which fails on kernels >= 6.13 ("Unexpected rt vDSO area bounds":
# it does not know the [vvar_vclock] mapping). CRIU 4.1 works but cannot dump TCP sockets on
# kernels >= 6.16 (they refuse SO_PASSCRED/SO_PASSSEC on non-unix sockets; fixed in 4.2). We
# build the newest CRIU from the orig tarball of Debian's trixie or sid source package.
# Idempotent and cached, for the binary and the plugin alike:
#   1. a `criu` on PATH that is >= 4.2 and passes `criu check`, and a cuda_plugin.so in the
#      plugin directory -> nothing to do;
#   2. what is missing and cached under $STASIS_CRIU_CACHE (default /var/cache/stasis/criu)
#      -> install it from there;
#   3. otherwise download the source, build what is missing (`make criu`, `make cuda_plugin`)
#      and cache it. A plugin that fails to build is a warning: only GPU jobs need it.
# Knobs: STASIS_CRIU_CACHE, STASIS_CRIU_PREFIX (default /usr/local; the binary goes to sbin/),
# STASIS_CRIU_PLUGIN_DIR (default /usr/local/lib/criu, where CRIU's own `make install` puts it).
# The source tarball stays in the cache too: scripts/zdtm-build.sh builds CRIU's own tests from it.
set -euo pipefail

CACHE=${STASIS_CRIU_CACHE:-/var/cache/stasis/criu}
PREFIX=${STASIS_CRIU_PREFIX:-/usr/local}
DEST=$PREFIX/sbin/criu
PLUGIN_DIR=${STASIS_CRIU_PLUGIN_DIR:-/usr/local/lib/criu}
PLUGIN=$PLUGIN_DIR/cuda_plugin.so
# what the criu binary needs at run time, and what `make criu` needs to build it (bookworm)
RUN_DEPS=(libprotobuf-c1 libnl-3-200 libnet1 libcap2 libbsd0 libgnutls30 libnftables1 libuuid1 iptables)
BUILD_DEPS=(build-essential pkgconf libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev
  libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev
  python3-protobuf xz-utils)

say() { printf 'install-criu: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages and $DEST)"

MIN_MAJOR=4 MIN_MINOR=2
# criu_ok BIN: true when BIN reports a version >= 4.2 and `criu check` passes
criu_ok() {
  local bin=$1 ver major minor
  [ -x "$bin" ] || return 1
  ver=$("$bin" --version 2>/dev/null | awk '/^Version:/{print $2; exit}') || return 1
  major=${ver%%.*}; minor=${ver#*.}; minor=${minor%%.*}
  [ -n "$major" ] && [ -n "$minor" ] || return 1
  [ "$major" -gt "$MIN_MAJOR" ] 2>/dev/null || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; } 2>/dev/null || return 1
  "$bin" check >/dev/null 2>&1
}

# shellcheck source=scripts/lib/criu-src.sh
. "$(dirname "$0")/lib/criu-src.sh"

# plugin_ok FILE: true when FILE is a shared object (the plugin has no version to ask)
plugin_ok() { [ -f "$1" ] && [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

need_criu=1 need_plugin=1
on_path=$(command -v criu || true)
if [ -n "$on_path" ] && criu_ok "$on_path"; then need_criu=0; fi
if plugin_ok "$PLUGIN"; then need_plugin=0; fi
if [ $need_criu = 0 ] && [ $need_plugin = 0 ]; then
  say "$($on_path --version | head -n1) at $on_path and $PLUGIN work; nothing to do"
  exit 0
fi

if [ $need_criu = 1 ]; then
  apt_install "${RUN_DEPS[@]}"
  if criu_ok "$CACHE/criu"; then
    install -D -m 0755 "$CACHE/criu" "$DEST"
    say "installed cached $CACHE/criu to $DEST"
    criu_ok "$DEST" || die "$DEST does not work after install"
    need_criu=0
  fi
fi
if [ $need_plugin = 1 ] && plugin_ok "$CACHE/cuda_plugin.so"; then
  install -D -m 0755 "$CACHE/cuda_plugin.so" "$PLUGIN"
  say "installed cached $CACHE/cuda_plugin.so to $PLUGIN"
  need_plugin=0
fi
[ $need_criu = 0 ] && [ $need_plugin = 0 ] && exit 0

# ---- build from Debian trixie's source package
# Without criu this script has failed; with criu but no plugin only GPU jobs are affected, so a
# failure to build the plugin must not stop a caller (scripts/test.sh) that needs only criu.
fail() {
  if [ $need_criu = 1 ]; then die "$@"; fi
  say "warning: $*; CRIU's cuda plugin is not installed, so GPU jobs cannot be checkpointed"
  exit 0
}
# apt_install and criu_orig_tarball die on failure; in a subshell that is a failure to report.
(apt_install "${BUILD_DEPS[@]}" dpkg-dev) || fail "cannot install what building CRIU needs"
tarball=$(criu_orig_tarball "$CACHE") || fail "cannot download CRIU's source"
work=$(mktemp -d /tmp/stasis-criu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
say "building CRIU from $tarball"
tar xf "$tarball"
srcdir=$(find . -maxdepth 1 -type d -name 'criu-*' | head -n1)
[ -n "$srcdir" ] || fail "no criu-* directory in $tarball"
make -C "$srcdir" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; fail "make criu failed"; }
if [ $need_criu = 1 ]; then
  bin=$srcdir/criu/criu
  criu_ok "$bin" || { "$bin" check >&2 || true; fail "the freshly built criu does not pass 'criu check'"; }
  install -D -m 0755 "$bin" "$CACHE/criu"
  install -D -m 0755 "$bin" "$DEST"
  say "installed $("$DEST" --version | head -n1) to $DEST (cached in $CACHE)"
fi
if [ $need_plugin = 1 ]; then
  # The plugin runs inside criu and uses its internals: it must come from the same source.
  built=$("$srcdir/criu/criu" --version 2>/dev/null | awk '/^Version:/{print $2; exit}' || true)
  have=$("$(command -v criu || echo "$DEST")" --version 2>/dev/null | awk '/^Version:/{print $2; exit}' || true)
  [ "$built" = "$have" ] || say "warning: criu on PATH is $have, the plugin is built from $built"
  if make -C "$srcdir" cuda_plugin >"$work/plugin.log" 2>&1 && plugin_ok "$srcdir/plugins/cuda/cuda_plugin.so"; then
    install -D -m 0755 "$srcdir/plugins/cuda/cuda_plugin.so" "$CACHE/cuda_plugin.so"
    install -D -m 0755 "$srcdir/plugins/cuda/cuda_plugin.so" "$PLUGIN"
    say "installed CRIU's cuda plugin to $PLUGIN (cached in $CACHE)"
  else
    tail -n 20 "$work/plugin.log" >&2 || true
    say "warning: make cuda_plugin failed: GPU jobs cannot be checkpointed until it is installed"
  fi
fi
