#!/usr/bin/env bash
# gpu-pack.sh - fill .gpu/ (git-ignored: list it in .git/info/exclude) with what
# scripts/gpu-check.sh needs on a bare NVIDIA machine, built here on Debian 12:
#   .gpu/bin/stasis        the static stasis binary (cargo build)
#   .gpu/bin/criu          a wrapper running .gpu/criu.real with its own libraries
#   .gpu/criu.real, .gpu/lib/   criu and its shared libraries (from ldd), loader included
#   .gpu/cuda_plugin.so    CRIU's cuda plugin (scripts/install-criu.sh builds it)
#   .gpu/gpujob.py         the deterministic PyTorch job (../shared/gpu/gpujob.py)
# Carry it to the device with the folder: `carry: [".gpu"]`, then run `bash scripts/gpu-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu
SHARED=${SHARED:-../shared}
criu=$(command -v criu || echo /usr/local/sbin/criu)
plugin=${STASIS_CRIU_PLUGIN_DIR:-/usr/local/lib/criu}/cuda_plugin.so
[ -x "$criu" ] && [ -f "$plugin" ] || { echo "gpu-pack: run scripts/install-criu.sh first" >&2; exit 1; }
cargo build --quiet
rm -rf "$G" && mkdir -p "$G/bin" "$G/lib"
install -m 0755 target/x86_64-unknown-linux-gnu/debug/stasis "$G/bin/stasis"
install -m 0755 "$criu" "$G/criu.real"
# every library criu loads, and the loader itself (the line without "=>")
ldd "$criu" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' |
  while read -r l; do cp -L "$l" "$G/lib/"; done
# Through its own loader, criu gets its libraries without LD_LIBRARY_PATH, so nothing of
# Debian 12 leaks into what criu starts: cuda-checkpoint must load the host's libcuda and libc.
cat > "$G/bin/criu" <<'EOF'
#!/bin/sh
d=$(dirname "$(dirname "$(readlink -f "$0")")")
exec "$d/lib/ld-linux-x86-64.so.2" --library-path "$d/lib" "$d/criu.real" "$@"
EOF
chmod 0755 "$G/bin/criu"
install -m 0644 "$plugin" "$G/cuda_plugin.so"
install -m 0644 "$SHARED/gpu/gpujob.py" "$G/gpujob.py"
"$G/bin/criu" --version | head -n1
du -sh "$G"
