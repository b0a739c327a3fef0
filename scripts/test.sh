#!/usr/bin/env bash
# test.sh - installs what is missing (CRIU 4.x included), then runs every check and test:
# formatting, clippy with warnings as errors, unit tests and the end-to-end tests, which drive
# the real binary as root with real namespaces, cgroups and CRIU (and CRIU's own zdtm tests,
# tests/zdtm.rs, built by scripts/zdtm-build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: the tests need root (namespaces, cgroups, CRIU)" >&2; exit 1; }
bash scripts/install-deps.sh
export PATH="/usr/local/sbin:/usr/local/bin:$PATH"
# CRIU's zdtm static tests, which tests/zdtm.rs runs under raw CRIU and under stasis; cached in
# /var/cache/stasis/zdtm, so this is quick after the first time
echo "== scripts/zdtm-build.sh"
bash scripts/zdtm-build.sh >/dev/null
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo test"
cargo test --all-targets "$@"
