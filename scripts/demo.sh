#!/usr/bin/env bash
# demo.sh - the main job: installs what is missing (CRIU 4.x included), builds stasis, and
# shows a long job running under it, checkpointed, killed, and restored with its output
# continuing from the checkpoint; then an exec session, restore-on-crash and a move to another
# state root. Everything lives in a temp state root that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (namespaces, cgroups, CRIU)" >&2; exit 1; }
bash scripts/install-deps.sh
export PATH="/usr/local/sbin:/usr/local/bin:$PATH"
echo "== building stasis (release)"
cargo build --release --quiet
BIN=$PWD/target/x86_64-unknown-linux-gnu/release/stasis
ROOT=$(mktemp -d /tmp/stasis-demo.XXXXXX)
ROOT2=$(mktemp -d /tmp/stasis-demo2.XXXXXX)
cleanup() {
  "$BIN" --root "$ROOT" rm -f --all >/dev/null 2>&1 || true
  "$BIN" --root "$ROOT2" rm -f --all >/dev/null 2>&1 || true
  rm -rf "$ROOT" "$ROOT2"
}
trap cleanup EXIT

say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
st() { printf '$ stasis %s\n' "$*"; "$BIN" --root "$ROOT" "$@"; }
last() { "$BIN" --root "$ROOT" logs "$1" | tail -n "${2:-1}" | tr '\n' ' '; echo; }

say "what stasis needs from this host"
st check

say "a 'training run': counts steps, 5 per second"
st run -d --name train --hostname train-box -- sh -c 'step=0; while :; do echo "step $step"; step=$((step+1)); sleep 0.2; done'
sleep 1.5
echo "latest output: $(last train 2)"

say "checkpoint it and leave it running (before host maintenance, say)"
st checkpoint --leave-running train
sleep 1
echo "it kept going: $(last train)"

say "the host 'crashes': the job is killed"
st kill -s KILL train
st wait train || true
st ps --all

say "restore it: it carries on from the checkpoint, its log and stdio still wired"
st restore train
sleep 1
echo "after the restore: $(last train 3)"
echo "(the log marks where time went back:)"
"$BIN" --root "$ROOT" logs --markers train 2>&1 | grep -- '--- stasis' || true

say "an exec session inside the restored job's container (its own PID namespace)"
st exec train -- sh -c 'echo "hello from pid $$ on $(hostname) ($(grep NSpid /proc/self/status | tr "\t" " "))"'

say "restore-on-crash: checkpoint every second, restore automatically when it dies"
cat > "$ROOT/job.yaml" <<'EOF'
name: sim
command: [sh, -c, 'i=0; while :; do echo "t=$i"; i=$((i+1)); sleep 0.1; done']
checkpoint: {every: 1s, keep: 2}
on_exit: {policy: restore, backoff: {initial: 100ms, max: 5s}}
EOF
st run -d -f "$ROOT/job.yaml"
sleep 2.5
init=$("$BIN" --root "$ROOT" inspect sim --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"]["init"]["pid"])')
main=$(cut -d' ' -f1 "/proc/$init/task/$init/children")
echo "killing the job's main process ($main) with SIGKILL"
kill -9 "$main"
sleep 1.5
st events sim
echo "status: $("$BIN" --root "$ROOT" ps | awk '$1=="sim"{print $2, $3}')"

say "move a job to another state root (another host): export, import"
st checkpoint train --export "$ROOT/train.tar.zst"
ls -l "$ROOT/train.tar.zst"
printf '$ stasis --root %s restore --import train.tar.zst --name moved\n' "$ROOT2"
"$BIN" --root "$ROOT2" restore --import "$ROOT/train.tar.zst" --name moved
sleep 1
echo "running on the second root: $("$BIN" --root "$ROOT2" logs moved | tail -n 2 | tr '\n' ' ')"

say "done; cleaning up"
