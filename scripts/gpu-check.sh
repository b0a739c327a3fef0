#!/usr/bin/env bash
# gpu-check.sh - the GPU machine check, on a bare NVIDIA host, from the repo root holding .gpu/
# (scripts/gpu-pack.sh fills it). With stasis's own cuda-checkpoint mode and CRIU's cuda plugin:
#   mode:    cuda-checkpoint against the real driver: state, lock, checkpoint, restore, unlock
#            of a live PyTorch job, whose output must stay that of an uninterrupted run;
#   stasis:  a job holding GPU_MB (2 GiB) under `stasis run --rootfs`, checkpointed mid-run,
#            killed by the dump and restored; again with --leave-running, then killed and
#            restored; and through restore-on-crash; each output compared with the reference;
#   bench:   raw CRIU beside stasis on the same job holding each of SIZES GiB: dump and
#            restore time, image size, frozen time.
# Everything goes to $LOGDIR/log, the figures to $LOGDIR/results.tsv, the jobs' outputs to
# $LOGDIR/*.out. PARTS and SIZES pick parts. With the device tool: carry [".gpu"] and run
# `LOGDIR=$OUT bash scripts/gpu-check.sh`. Not yet run on a GPU: if a device call is short of
# time, run PARTS="mode stasis" and PARTS=bench apart.
set -uo pipefail
LOGDIR=${LOGDIR:-/tmp/gpu-check}; mkdir -p "$LOGDIR"; exec > >(tee -a "$LOGDIR/log") 2>&1
PARTS=${PARTS:-mode stasis bench} SIZES=${SIZES:-1 4 8} GPU_MB=${GPU_MB:-2048}
B=$PWD/.gpu W=$(mktemp -d /tmp/gpu-check.XXXXXX)
PY=${PY:-/opt/torch/.venv/bin/python3}; [ -x "$PY" ] || PY=$(command -v python3)
J=$B/gpujob.py; T=$LOGDIR/results.tsv
ln -sf stasis "$B/bin/cuda-checkpoint"
# The monitor passes its environment on to criu, and criu to its cuda plugin's cuda-checkpoint.
export PATH=$B/bin:$PATH STASIS_CRIU=$B/bin/criu CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTHONUNBUFFERED=1
mkdir -p /usr/local/lib/criu && cp "$B/cuda_plugin.so" /usr/local/lib/criu/
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
same() { diff <(grep -v ready "$1" | awk '!seen[$0]++') <(grep -v ready "$2" | awk '!seen[$0]++') >/dev/null && echo "$3 IDENTICAL" || { echo "$3 DIFFERS"; tail -n 3 "$2"; }; }
waitfor() { for _ in $(seq "${3:-600}"); do eval "$2" 2>/dev/null | grep -q "$1" && return 0; sleep 0.2; done; echo "timed out waiting for '$1'"; return 1; }
gone() { for _ in $(seq 100); do [ -e "/proc/$1" ] || return 0; sleep 0.1; done; }
echo "== $(date -u) $(uname -r); $(ldd --version | head -n1)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
criu --version | head -n1; criu check
echo -e "what\tgib\tdump_ms\trestore_ms\timage_bytes\tfrozen_ms" > "$T"

# the job as stasis runs it: own rootfs and /proc (CUDA fails with the host's /proc in a new PID
# namespace); the host's system directories bound read-only, each one a mount of its own, since a
# nested mount carried in by a recursive bind cannot be dumped
R=$W/root; S="stasis --root $R"; ROOTFS=$W/rootfs; mkdir -p "$ROOTFS"; VOL=(-v "$B:$B:ro")
for d in bin sbin lib lib64; do [ -L /$d ] && ln -s "$(readlink /$d)" "$ROOTFS/$d"; done
for d in /bin /sbin /lib /lib64 /usr/bin /usr/sbin /usr/lib /usr/lib64 /usr/share /usr/local/nvidia /opt /etc; do
  [ -d "$d" ] && [ ! -L "$d" ] && VOL+=(-v "$d:$d:ro")
done
for n in /dev/nvidia*; do [ -c "$n" ] && VOL+=(-v "$n:$n"); done
srun() { # NAME MB STEPS [stasis run flags]
  local n=$1 mb=$2 steps=$3; shift 3
  $S run -d --name "$n" --rootfs "$ROOTFS" "${VOL[@]}" ${LD_LIBRARY_PATH:+--env-pass LD_LIBRARY_PATH} \
    -e CUBLAS_WORKSPACE_CONFIG=:4096:8 -e PYTHONUNBUFFERED=1 -e GPU_MB="$mb" -e STEPS="$steps" -e NAP=0.05 "$@" -- "$PY" "$J"
}
gen() { $S checkpoints "$1" --format json | python3 -c 'import json,sys; g=json.load(sys.stdin)[-1]; print(g["size"], g["dump_ms"], g.get("frozen_ms") or 0)'; }
frozen() { # CRIU's stats-dump: two magics, a length, then stats_entry { dump { frozen_time (2) } }
  python3 - "$1" <<'EOF' 2>/dev/null || echo -
import struct, sys
def var(b, i):
    v = s = 0
    while True:
        c = b[i]; i += 1; v |= (c & 0x7f) << s; s += 7
        if c < 0x80: return v, i
def fields(b):
    i = 0
    while i < len(b):
        k, i = var(b, i)
        if k & 7 == 0: v, i = var(b, i); yield k >> 3, v
        elif k & 7 == 2: n, i = var(b, i); yield k >> 3, b[i:i + n]; i += n
        else: return
b = open(sys.argv[1], "rb").read(); n = struct.unpack_from("<I", b, 8)[0]
print(dict(fields(dict(fields(b[12:12 + n]))[1]))[2] // 1000)
EOF
}
STEPS=120 NAP=0.05 GPU_MB=$GPU_MB timeout 300 "$PY" "$J" > "$W/ref.out" 2>&1; echo "reference rc=$?"; tail -n 1 "$W/ref.out"

if [[ " $PARTS " == *" mode "* ]]; then
  (cd "$W" && STEPS=120 NAP=0.05 GPU_MB=$GPU_MB setsid "$PY" "$J" > "$W/mode.out" 2>&1 < /dev/null & echo $! > "$W/mode.pid")
  P=$(cat "$W/mode.pid"); waitfor '^20 ' "cat $W/mode.out"
  for step in "--get-state" "--get-restore-tid" "--action lock --timeout 10000" "--get-state" \
              "--action checkpoint" "--get-state" "--action restore" "--action unlock" "--get-state"; do
    s=$(date +%s%N); out=$(cuda-checkpoint $step --pid "$P" 2>&1); echo "cuda-checkpoint $step: rc=$? $(ms "$s") ms: $out"
  done
  waitfor '^final' "cat $W/mode.out"; same "$W/ref.out" "$W/mode.out" "MODE"
fi

if [[ " $PARTS " == *" stasis "* ]]; then
  $S check
  srun g1 "$GPU_MB" 120; waitfor '^20 ' "$S logs g1"
  s=$(date +%s%N); $S checkpoint g1; echo "checkpoint rc=$? $(ms "$s") ms ($(gen g1))"
  s=$(date +%s%N); $S restore g1; echo "restore rc=$? $(ms "$s") ms"
  timeout 300 $S wait g1; $S logs g1 > "$W/g1.out" 2>&1; same "$W/ref.out" "$W/g1.out" "STASIS"
  srun g2 "$GPU_MB" 120; waitfor '^20 ' "$S logs g2"
  s=$(date +%s%N); $S checkpoint --leave-running g2; echo "checkpoint --leave-running rc=$? $(ms "$s") ms"
  waitfor '^40 ' "$S logs g2"; $S kill -s KILL g2; timeout 60 $S wait g2
  s=$(date +%s%N); $S restore g2; echo "restore rc=$? $(ms "$s") ms"
  timeout 300 $S wait g2; $S logs g2 > "$W/g2.out" 2>&1; same "$W/ref.out" "$W/g2.out" "LEAVE-RUNNING"
  srun g3 "$GPU_MB" 120 --on-exit restore; waitfor '^20 ' "$S logs g3"
  $S checkpoint --leave-running g3; echo "checkpoint rc=$?"; waitfor '^40 ' "$S logs g3"
  init=$($S inspect g3 --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"]["init"]["pid"])')
  kill -9 "$(cat "/proc/$init/task/$init/children" | cut -d' ' -f1)"; echo "crashed the job"
  waitfor '"restores": 1' "$S inspect g3 --format json" 300
  timeout 300 $S wait g3; $S logs g3 > "$W/g3.out" 2>&1; same "$W/ref.out" "$W/g3.out" "RESTORE-ON-CRASH"
  $S events g3 | tail -n 5; $S rm -f g1 g2 g3
fi

if [[ " $PARTS " == *" bench "* ]]; then
  for gib in $SIZES; do
    mb=$((gib * 1024)); img=$W/img; rm -rf "$img"; mkdir -p "$img"
    (cd "$W" && STEPS=100000 NAP=0.05 GPU_MB=$mb setsid "$PY" "$J" > "$W/raw.out" 2>&1 < /dev/null & echo $! > "$W/raw.pid")
    P=$(cat "$W/raw.pid"); waitfor '^20 ' "cat $W/raw.out"
    s=$(date +%s%N); criu dump -t "$P" -D "$img" --shell-job -o dump.log; rc=$? d=$(ms "$s")
    gone "$P"; s=$(date +%s%N); criu restore -D "$img" --shell-job -d -o restore.log; rc2=$? r=$(ms "$s")
    echo "raw $gib GiB: dump rc=$rc restore rc=$rc2"; grep -h Error "$img"/*.log | grep -v RLIMIT | head -n 3
    echo -e "raw\t$gib\t$d\t$r\t$(du -sb "$img" | cut -f1)\t$(frozen "$img/stats-dump")" >> "$T"
    kill -9 "$P" 2>/dev/null; gone "$P"; rm -rf "$img"
    srun b "$mb" 100000; waitfor '^20 ' "$S logs b"
    s=$(date +%s%N); $S checkpoint b; rc=$? d=$(ms "$s"); read -r size _ fz <<< "$(gen b)"
    s=$(date +%s%N); $S restore b; rc2=$? r=$(ms "$s"); echo "stasis $gib GiB: checkpoint rc=$rc restore rc=$rc2"
    echo -e "stasis\t$gib\t$d\t$r\t$size\t$fz" >> "$T"; $S rm -f b
  done
  column -t "$T"
fi
cp "$W"/*.out "$LOGDIR/" 2>/dev/null; rm -rf "$W"
