#!/usr/bin/env bash
# install-criu.sh - make a working CRIU >= 4.2 available as `criu` on PATH.
#
# Debian 12 ships CRIU 3.17, which fails on kernels >= 6.13 ("Unexpected rt vDSO area bounds":
# it does not know the [vvar_vclock] mapping). CRIU 4.1 works but cannot dump TCP sockets on
# kernels >= 6.16 (they refuse SO_PASSCRED/SO_PASSSEC on non-unix sockets; fixed in 4.2). We
# build the newest CRIU from the orig tarball of Debian's trixie or sid source package.
# Idempotent and cached:
#   1. a `criu` on PATH that is >= 4.2 and passes `criu check` -> nothing to do;
#   2. a binary cached under $STASIS_CRIU_CACHE (default /var/cache/stasis/criu) -> install it;
#   3. otherwise download the source, build `criu` and cache it.
# The source tarball stays in the cache too: scripts/zdtm-build.sh builds CRIU's own tests from it.
# Knobs: STASIS_CRIU_CACHE, STASIS_CRIU_PREFIX (default /usr/local; the binary goes to sbin/).
set -euo pipefail

CACHE=${STASIS_CRIU_CACHE:-/var/cache/stasis/criu}
PREFIX=${STASIS_CRIU_PREFIX:-/usr/local}
DEST=$PREFIX/sbin/criu
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

on_path=$(command -v criu || true)
if [ -n "$on_path" ] && criu_ok "$on_path"; then
  say "$($on_path --version | head -n1) at $on_path works; nothing to do"
  exit 0
fi

apt_install "${RUN_DEPS[@]}"
if criu_ok "$CACHE/criu"; then
  install -D -m 0755 "$CACHE/criu" "$DEST"
  say "installed cached $CACHE/criu to $DEST"
  criu_ok "$DEST" || die "$DEST does not work after install"
  exit 0
fi

# ---- build from Debian trixie's source package
apt_install "${BUILD_DEPS[@]}" dpkg-dev
tarball=$(criu_orig_tarball "$CACHE")
work=$(mktemp -d /tmp/stasis-criu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
say "building CRIU from $tarball"
tar xf "$tarball"
srcdir=$(find . -maxdepth 1 -type d -name 'criu-*' | head -n1)
[ -n "$srcdir" ] || die "no criu-* directory in $tarball"
make -C "$srcdir" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "make criu failed"; }
bin=$srcdir/criu/criu
criu_ok "$bin" || { "$bin" check >&2 || true; die "the freshly built criu does not pass 'criu check'"; }
install -D -m 0755 "$bin" "$CACHE/criu"
install -D -m 0755 "$bin" "$DEST"
say "installed $("$DEST" --version | head -n1) to $DEST (cached in $CACHE)"
