# criu-src.sh - sourced by install-criu.sh and zdtm-build.sh: installs missing Debian packages,
# and fetches CRIU's orig source tarball from Debian's trixie/sid source packages into a cache
# directory, so that the binary we build and the zdtm tests we build come from the same file.
# Callers define `die MESSAGE` and `say MESSAGE` and run `set -euo pipefail`.

CRIU_SRC_LIST=/etc/apt/sources.list.d/stasis-criu-src.sources

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
}

# criu_src_entry: makes sure apt knows trixie's and sid's source packages.
criu_src_entry() {
  [ -f "$CRIU_SRC_LIST" ] && return 0
  # Derive the deb-src entry from the machine's own Debian entry (same mirror and keyring), so no
  # registry host is hard-coded here; deb-src only, so no binary package is ever upgraded.
  local base=/etc/apt/sources.list.d/debian.sources uris key
  uris=$(sed -n 's/^URIs:[[:space:]]*//p' "$base" 2>/dev/null | grep -v security | head -n1 || true)
  key=$(sed -n 's/^Signed-By:[[:space:]]*//p' "$base" 2>/dev/null | head -n1 || true)
  if [ -z "$uris" ] && [ -f /etc/apt/sources.list ]; then
    uris=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uris" ] || die "cannot find the machine's Debian mirror in $base or /etc/apt/sources.list"
  {
    echo "Types: deb-src"
    echo "URIs: $uris"
    # sid carries the newest CRIU; trixie is there for when sid moves past what builds here.
    echo "Suites: trixie sid"
    echo "Components: main"
    [ -n "$key" ] && echo "Signed-By: $key"
  } > "$CRIU_SRC_LIST"
  say "added deb-src trixie/sid entry ($uris) in $CRIU_SRC_LIST"
}

# criu_orig_tarball DIR [VERSION]: prints the path of CRIU's orig tarball in DIR, downloading it
# there first if needed. VERSION is an upstream version (4.2.1); without it, the newest one the
# deb-src entry offers.
criu_orig_tarball() {
  local dir=$1 want=${2:-} spec=criu found
  mkdir -p "$dir"
  if [ -n "$want" ]; then
    found=$(ls "$dir"/criu_"$want".orig.tar.* 2>/dev/null | head -n1 || true)
    if [ -n "$found" ]; then
      echo "$found"
      return 0
    fi
  fi
  apt_install dpkg-dev xz-utils
  criu_src_entry
  apt-get update -qq >/dev/null 2>&1 || true
  if [ -n "$want" ]; then
    # The Debian revision is not ours to guess: take the one apt offers for this upstream version.
    local deb
    deb=$(apt-cache showsrc criu 2>/dev/null | awk -v v="$want" '$1=="Version:" && index($2, v"-")==1 {print $2; exit}')
    [ -n "$deb" ] || die "no Debian source package of criu $want in $CRIU_SRC_LIST (apt-cache showsrc criu)"
    spec="criu=$deb"
  fi
  # apt exits non-zero when the .debian.tar.xz part is missing (404); only the orig tarball
  # matters, so look for it rather than at apt's status.
  (cd "$dir" && apt-get source --download-only "$spec" >/dev/null 2>&1) || true
  if [ -n "$want" ]; then
    found=$(ls "$dir"/criu_"$want".orig.tar.* 2>/dev/null | head -n1 || true)
  else
    found=$(ls "$dir"/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -n1 || true)
  fi
  [ -n "$found" ] || die "could not download criu's orig tarball ${want:+($want) }from the deb-src entry in $CRIU_SRC_LIST"
  echo "$found"
}
