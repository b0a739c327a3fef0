#!/usr/bin/env bash
# bench.sh - stasis's benchmarks, side by side with its peers, in one run.
#
# Sections (BENCH="start mem exec cr policy peers" by default):
#   start   `stasis run --rm true` vs `runc run` of the same command vs `unshare --fork --pid true`,
#           and stasis / unshare paired run by run (scripts/lib/abpair.py); with BASELINE, also
#           this build / baseline paired
#   mem     RSS and PSS of a monitor, with 10 workloads running (conmon's comes from peers)
#   exec    `stasis exec NAME true` vs `nsenter -a` vs `runc exec`, and stasis / nsenter paired;
#           `exec dd 1 GiB | wc -c` vs a raw pipe and vs runc exec
#   cr      checkpoint and restore of 1/64/512 MiB jobs on ext4 and tmpfs, frozen time;
#           with BASELINE, also `checkpoint --leave-running` paired with the baseline's (ABBA)
#           (the raw CRIU and runc figures come from the peers section, same jobs)
#   policy  restore-on-crash latency (1 and 64 MiB), checkpoint --all on 10 and 50 jobs vs one
#           after another, a 64 MiB job's throughput under checkpoints every second
#   peers   ../shared/bench/peers.sh: runc, crun, podman and raw CRIU on this machine
#   migrate `stasis migrate` between two hosts (network namespaces joined by a veth pair, an
#           sshd each): post-copy and stream vs export + copy + import by hand vs raw CRIU
#           dump + copy + restore; total time, downtime and bytes moved for MIG_SIZES.
#           podman's checkpoint --export / restore --import of the same job is measured beside.
#           Not in the default list (BENCH=migrate runs it).
#   lazy    `restore --lazy` vs a full restore of the same generation (SIZES; BENCH=lazy)
#   ratio   stasis / raw CRIU, run by run alternately, ext4 and tmpfs: checkpoint, restore and
#           frozen time (SIZES; BENCH=ratio); raw CRIU keeps its previous images as --keep 1
# Knobs: RUNS (hyperfine runs, 40), CR_RUNS (10), SIZES ("1 64 512"), POLICY_SECS (60),
#        MIG_SIZES ("64 512 2048"), MIG_RUNS (3),
#        HF_RUNS for peers (30). Quick check: RUNS=10 CR_RUNS=3 SIZES="1 64" POLICY_SECS=10.
#        BASELINE=PATH: another stasis binary (an older build) measured in the same run, beside
#        this one, in start, exec, mem and cr ("before and after" figures).
#        RUN_TMPFS=1: CRIU gets its kernel-probe cache (/run/criu.kdat) as on a host whose
#        /run is a tmpfs (most hosts), stasis and the raw CRIU peer alike; it is made once and
#        removed at the end. Without it /run is as the host has it (here: ext4, no cache).
# Every workload lives under this run's own temp state roots, removed on exit (also on
# error or Ctrl-C); runc containers are named stbench<PID>-* and deleted by name.
set -u
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
KDAT_PUT=
if [ "${RUN_TMPFS:-0}" = 1 ] && [ "$(stat -f -c %T /run)" != tmpfs ] && [ ! -e /run/criu.kdat ]; then
  # What a tmpfs /run gives CRIU, without moving the host's /run: CRIU writes its cache only to
  # a tmpfs, but loads it from anywhere. One `criu check` in a private mount namespace with a
  # tmpfs on /run makes it; it lies in the host's /run for this run only (removed on exit: on
  # ext4 it would outlive a reboot into another kernel).
  KDAT_PUT=/run/criu.kdat
  unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /run && criu check >/dev/null 2>&1; cat /run/criu.kdat' > "$KDAT_PUT.bench" \
    && [ -s "$KDAT_PUT.bench" ] && mv "$KDAT_PUT.bench" "$KDAT_PUT" \
    || { rm -f "$KDAT_PUT.bench"; echo "bench.sh: could not make CRIU's kdat cache" >&2; exit 1; }
trap '[ -z "$KDAT_PUT" ] || rm -f "$KDAT_PUT"' EXIT
fi
export LC_ALL=C PATH="/usr/local/sbin:/usr/local/bin:$PATH"
BENCH=${BENCH:-"start mem exec cr policy peers"}
RUNS=${RUNS:-40}
CR_RUNS=${CR_RUNS:-10}
SIZES=${SIZES:-"1 64 512"}
POLICY_SECS=${POLICY_SECS:-60}
PEERS=../shared/bench/peers.sh

need=()
for c in hyperfine:hyperfine jq:jq runc:runc busybox:busybox-static cc:gcc nsenter:util-linux; do
  command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
bash scripts/install-criu.sh
cargo build --release --quiet || exit 1
BL=${BASELINE:-}
[ -z "$BL" ] || [ -x "$BL" ] || { echo "bench.sh: BASELINE=$BL is not an executable" >&2; exit 1; }
W=$(mktemp -d /tmp/stbench.XXXXXX)          # ext4 here
# Both binaries run from fresh copies made the same way: here the very same bytes ran 8-15%
# slower from the file the linker wrote than from a `cp` of it (how each file's pages sit in
# the page cache), which biased every "this build / baseline" ratio against this build.
cp target/x86_64-unknown-linux-gnu/release/stasis "$W/stasis"
S=$W/stasis
if [ -n "$BL" ]; then cp "$BL" "$W/stasis-baseline"; BL=$W/stasis-baseline; fi
SHM=$(mktemp -d /dev/shm/stbench.XXXXXX)     # tmpfs
R=$W/root                                    # the main state root (ext4)
RS=$SHM/root                                 # a state root on tmpfs
RB=$W/root-bl                                # the baseline's state root (ext4)
PFX=stbench$$
RES=$W/results.tsv; : > "$RES"

cleanup() {
  set +e
  for r in "$R" "$RS" "$W"/root-*; do [ -d "$r" ] && "$S" --root "$r" rm -f --all >/dev/null 2>&1; done
  [ -n "$BL" ] && [ -d "$RB" ] && "$BL" --root "$RB" rm -f --all >/dev/null 2>&1
  for id in "${PFX}-t" "${PFX}-s"; do runc kill "$id" KILL >/dev/null 2>&1; runc delete -f "$id" >/dev/null 2>&1; done
  for p in ${MIG_PIDS:-} ${RATIO_PIDS:-}; do kill -9 "$p" >/dev/null 2>&1; done
  for ns in ${MIG_NS:-}; do ip netns del "$ns" >/dev/null 2>&1; done
  for n in ${PODMAN_NAMES:-}; do podman rm -f "$n" >/dev/null 2>&1; done
  for i in ${PODMAN_IMAGES:-}; do podman rmi -f "$i" >/dev/null 2>&1; done
  rm -rf "$W" "$SHM"
  [ -z "$KDAT_PUT" ] || rm -f "$KDAT_PUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench] %s\n' "$*" >&2; }
st() { "$S" --root "$R" "$@"; }
# rec MEASURE VALUE UNIT [NOTE]
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$RES"; log "$1: $2 $3 ${4:-}"; }
now_us() { local t=$EPOCHREALTIME; echo "${t/[.,]/}"; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-";exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f\n", m}'; }
# hf LABEL CMD: median ms over RUNS (hyperfine, no shell)
hf() {
  local j=$W/hf.json
  if hyperfine -N --style none --warmup 5 --runs "$RUNS" --export-json "$j" -- "$2" >/dev/null 2>"$W/hf.err"; then
    rec "$1" "$(jq -r '.results[0].median*1000' "$j" | awk '{printf "%.2f", $1}')" ms "median of $RUNS"
  else
    rec "$1" FAIL - "$(tail -n1 "$W/hf.err")"
  fi
}
init_pid() { "$S" --root "$1" inspect "$2" --format json | jq -r .state.init.pid; }

# A busybox bundle for runc, and a static memhog (allocates and touches N MiB, then pauses).
ROOTFS=$W/rootfs
mkdir -p "$ROOTFS"/{bin,proc,sys,dev,tmp,etc}
cp "$(command -v busybox)" "$ROOTFS/bin/busybox"
chroot "$ROOTFS" /bin/busybox --install -s /bin
cat > "$W/memhog.c" <<'EOF'
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
  size_t n = (size_t)strtoul(argc > 1 ? argv[1] : "1", 0, 10) << 20;
  char *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (char)(i * 131 + 7);
  for (;;) pause();
}
EOF
cc -O2 -static -o "$W/memhog" "$W/memhog.c"
# counter: touches N MiB, then counts loop iterations; prints the count every second
cat > "$W/counter.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
  size_t n = (size_t)strtoul(argc > 1 ? argv[1] : "64", 0, 10) << 20;
  volatile char *p = malloc(n);
  for (size_t i = 0; i < n; i++) p[i] = (char)i;
  unsigned long long c = 0; struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    c++; p[c % n]++;
    if ((c & 0xfffff) == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      if (t.tv_sec > t0.tv_sec) { printf("%llu\n", c); fflush(stdout); c = 0; t0 = t; }
    }
  }
}
EOF
cc -O2 -static -o "$W/counter" "$W/counter.c"
runc spec --bundle "$W" && jq --arg r "$ROOTFS" '.process.terminal=false | .process.args=["true"] | .root.path=$r' "$W/config.json" > "$W/true.json"
mkdir -p "$W/bt" "$W/bs"
cp "$W/true.json" "$W/bt/config.json"
jq '.process.args=["sleep","100000"]' "$W/true.json" > "$W/bs/config.json"

env_header() {
  echo "kernel $(uname -r); $(nproc) cores; $(criu --version | head -n1); $(runc --version | head -n1)"
  echo "state roots: $R ($(stat -f -c %T "$W")), $RS ($(stat -f -c %T "$SHM")); cgroup2 options: $(awk '$3=="cgroup2"{print $4}' /proc/mounts)"
  echo "/run: $(stat -f -c %T /run) (CRIU's kdat cache: $([ -e /run/criu.kdat ] && echo kept || echo none, re-probed on every run)); baseline: ${BL:-none}"
}

# pair LABEL N CMD_A CMD_B: A/B run by run alternately (ABBA), the median of the ratios
pair() {
  local p ma mb ratio q1 q3
  if p=$(python3 scripts/lib/abpair.py "$2" "$3" "$4"); then
    read -r ma mb ratio q1 q3 <<<"$p"
    rec "$1" "$ratio" "x" "median of $2 ABBA pairs (IQR $q1-$q3); medians $ma vs $mb ms"
  else
    rec "$1" FAIL - "$p"
  fi
}

# ------------------------------------------------------------------------------ start
bench_start() {
  hf "start: stasis run --rm true" "$S --root $R run --rm true"
  hf "start: stasis run --rm true (state on tmpfs)" "$S --root $RS run --rm true"
  hf "start: runc run (true)" "runc run -b $W/bt ${PFX}-t"
  hf "start: unshare --fork --pid true (floor)" "unshare --fork --pid true"
  [ -z "$BL" ] || hf "start: baseline run --rm true" "$BL --root $RB run --rm true"
  # Paired: the two commands alternate run by run, so a noisy moment hits both. Issue 13's
  # target is a ratio to the floor, so that is paired too.
  pair "start: paired, stasis / unshare floor" "$((RUNS * 5))" "$S --root $R run --rm true" "$(command -v unshare) --fork --pid true"
  [ -z "$BL" ] || pair "start: paired, this build / baseline" "$((RUNS * 5))" "$S --root $R run --rm true" "$BL --root $RB run --rm true"
}

# ------------------------------------------------------------------------------ mem
bench_mem() {
  local i rss=() pss=() p
  for i in $(seq 1 10); do st run -d --name mem$i -- sleep 100000 >/dev/null; done
  sleep 0.5
  for i in $(seq 1 10); do
    p=$(st inspect mem$i --format json | jq -r .state.monitor.pid)
    rss+=("$(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup)")
    pss+=("$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)")
  done
  rec "mem: monitor RSS (10 workloads)" "$(printf '%s\n' "${rss[@]}" | median)" KiB "median"
  rec "mem: monitor PSS (10 workloads)" "$(printf '%s\n' "${pss[@]}" | median)" KiB "median"
  if [ -n "$BL" ]; then
    local bp=() q
    for i in $(seq 1 10); do "$BL" --root "$RB" run -d --name mem$i -- sleep 100000 >/dev/null; done
    sleep 0.5
    for i in $(seq 1 10); do
      q=$("$BL" --root "$RB" inspect mem$i --format json | jq -r .state.monitor.pid)
      bp+=("$(awk '/^Pss:/{print $2}' /proc/$q/smaps_rollup)")
    done
    rec "mem: baseline monitor PSS (10 workloads)" "$(printf '%s\n' "${bp[@]}" | median)" KiB "median"
    for i in $(seq 1 10); do "$BL" --root "$RB" rm -f mem$i >/dev/null; done
  fi
  for i in $(seq 1 10); do st rm -f mem$i >/dev/null; done
}

# ------------------------------------------------------------------------------ exec
mibs() { awk -v b="$1" -v us="$2" 'BEGIN{printf "%.0f", b/1048576/(us/1e6)}'; }
# tput LABEL CMD: MiB/s for 1 GiB, median of 5
tput() {
  local k t0 t1 xs=()
  for k in 1 2 3 4 5; do
    t0=$(now_us); bash -c "$2" >/dev/null 2>&1; t1=$(now_us)
    xs+=("$((t1 - t0))")
  done
  rec "$1" "$(mibs 1073741824 "$(printf '%s\n' "${xs[@]}" | median)")" MiB/s "median of 5, 1 GiB"
}
bench_exec() {
  st run -d --name ex -- sleep 100000 >/dev/null
  local ip; ip=$(init_pid "$R" ex)
  runc run -d -b "$W/bs" "${PFX}-s" </dev/null >/dev/null 2>&1
  hf "exec: stasis exec NAME true" "$S --root $R exec ex true"
  hf "exec: nsenter -t PID -a true (floor)" "nsenter -t $ip -a true"
  hf "exec: runc exec (true)" "runc exec ${PFX}-s true"
  pair "exec: paired, stasis / nsenter floor" "$((RUNS * 5))" "$S --root $R exec ex true" "$(command -v nsenter) -t $ip -a true"
  if [ -n "$BL" ]; then
    "$BL" --root "$RB" run -d --name ex -- sleep 100000 >/dev/null
    hf "exec: baseline exec NAME true" "$BL --root $RB exec ex true"
    "$BL" --root "$RB" rm -f ex >/dev/null
  fi
  tput "stdio: raw pipe dd 1M x1024 | wc -c" "dd if=/dev/zero bs=1M count=1024 2>/dev/null | wc -c"
  tput "stdio: stasis exec dd 1M x1024 | wc -c" "$S --root $R exec ex dd if=/dev/zero bs=1M count=1024 2>/dev/null | wc -c"
  tput "stdio: runc exec dd 1M x1024 | wc -c" "runc exec ${PFX}-s dd if=/dev/zero bs=1M count=1024 2>/dev/null | wc -c"
  st rm -f ex >/dev/null
  runc kill "${PFX}-s" KILL >/dev/null 2>&1; runc delete -f "${PFX}-s" >/dev/null 2>&1
}

# ------------------------------------------------------------------------------ cr
# cr_one ROOT LABEL SIZE: checkpoint+restore CR_RUNS times; wall times and frozen time
cr_one() {
  local root=$1 label=$2 sz=$3 n=cr$3 k t0 t1 out d=() r=() f=() pid
  local S=${4:-$S} who=${5:-stasis}
  "$S" --root "$root" run -d --name "$n" --keep 1 -- "$W/memhog" "$sz" >/dev/null
  pid=$(init_pid "$root" "$n")
  local want=$((sz * 1024 * 95 / 100)) child
  for k in $(seq 1 600); do
    child=$(cut -d' ' -f1 "/proc/$pid/task/$pid/children" 2>/dev/null)
    [ -n "$child" ] && [ "$(awk '/^VmRSS/{print $2}' "/proc/$child/status" 2>/dev/null || echo 0)" -ge "$want" ] && break
    sleep 0.05
  done
  # one untimed round first: page cache, CRIU's check cache
  "$S" --root "$root" checkpoint --keep 1 "$n" >/dev/null 2>&1 && "$S" --root "$root" restore "$n" >/dev/null 2>&1
  for k in $(seq 1 "$CR_RUNS"); do
    t0=$(now_us); out=$("$S" --root "$root" checkpoint --keep 1 "$n" 2>&1); t1=$(now_us)
    case $out in *checkpointed*) ;; *) rec "cr: $who checkpoint ${sz}M $label" FAIL - "$out"; return ;; esac
    d+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')")
    f+=("$(echo "$out" | sed -n 's/.*frozen \([0-9.]*\) ms.*/\1/p')")
    t0=$(now_us); out=$("$S" --root "$root" restore "$n" 2>&1); t1=$(now_us)
    case $out in *restored*) ;; *) rec "cr: $who restore ${sz}M $label" FAIL - "$out"; return ;; esac
    r+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')")
  done
  rec "cr: $who checkpoint ${sz}M $label" "$(printf '%s\n' "${d[@]}" | median)" ms "median of $CR_RUNS (CLI wall time)"
  rec "cr: $who restore ${sz}M $label" "$(printf '%s\n' "${r[@]}" | median)" ms "median of $CR_RUNS (CLI wall time)"
  rec "cr: $who frozen time ${sz}M $label" "$(printf '%s\n' "${f[@]}" | median)" ms "CRIU's stats-dump"
  t0=$(now_us); out=$("$S" --root "$root" checkpoint --leave-running --keep 1 "$n" 2>&1); t1=$(now_us)
  rec "cr: $who checkpoint --leave-running ${sz}M $label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1000}')" ms "one run; $(echo "$out" | sed -n 's/.*(\(.*\))/\1/p')"
  "$S" --root "$root" rm -f "$n" >/dev/null
}
bench_cr() {
  local sz
  for sz in $SIZES; do
    cr_one "$R" ext4 "$sz"
    cr_one "$RS" tmpfs "$sz"
    [ -z "$BL" ] || cr_one "$RB" ext4 "$sz" "$BL" baseline
  done
  [ -z "$BL" ] || for sz in $SIZES; do cr_pair "$sz"; done
}

# This build against the baseline, checkpoint by checkpoint (ABBA, scripts/lib/abpair.py):
# `checkpoint --leave-running` of a memhog each, ext4 state roots. At 512 MiB on ext4 the
# unpaired medians above swing by +-50% between runs with the writeback of earlier
# generations; pairing puts both builds in the same moment.
cr_pair() {
  local sz=$1 n=cp$1 ra rb p ma mb ratio q1 q3 k
  ra=$(mktemp -d "$R/pair.XXXX"); rb=$(mktemp -d "$RB/pair.XXXX")
  "$S" --root "$ra" run -d --name "$n" --keep 1 -- "$W/memhog" "$sz" >/dev/null
  "$BL" --root "$rb" run -d --name "$n" --keep 1 -- "$W/memhog" "$sz" >/dev/null
  local pa pb ca cb want=$((sz * 1024 * 95 / 100))
  pa=$(init_pid "$ra" "$n"); pb=$(S=$BL init_pid "$rb" "$n")
  for k in $(seq 1 600); do
    ca=$(cut -d' ' -f1 "/proc/$pa/task/$pa/children" 2>/dev/null); cb=$(cut -d' ' -f1 "/proc/$pb/task/$pb/children" 2>/dev/null)
    [ -n "$ca" ] && [ -n "$cb" ] && [ "$(awk '/^VmRSS/{print $2}' "/proc/$ca/status" 2>/dev/null || echo 0)" -ge "$want" ] \
      && [ "$(awk '/^VmRSS/{print $2}' "/proc/$cb/status" 2>/dev/null || echo 0)" -ge "$want" ] && break
    sleep 0.05
  done
  if p=$(python3 scripts/lib/abpair.py "$CR_RUNS" "$S --root $ra checkpoint --leave-running $n" "$BL --root $rb checkpoint --leave-running $n"); then
    read -r ma mb ratio q1 q3 <<<"$p"
    rec "cr: checkpoint ${sz}M ext4, paired, this build / baseline" "$ratio" "x" "median of $CR_RUNS ABBA pairs (IQR $q1-$q3); medians $ma vs $mb ms"
  else
    rec "cr: checkpoint ${sz}M ext4, paired" FAIL - "$p"
  fi
  "$S" --root "$ra" rm -f "$n" >/dev/null 2>&1; "$BL" --root "$rb" rm -f "$n" >/dev/null 2>&1
}

# ------------------------------------------------------------------------------ ratio
# stasis against raw CRIU on the same job (a static memhog), run by run alternately, on ext4
# and on tmpfs: checkpoint and restore wall time and CRIU's frozen time, medians of CR_RUNS,
# and their ratios. Raw CRIU runs as `criu dump -t PID -D DIR` / `criu restore -D DIR -d` on a
# bare process, and keeps its previous images until the new dump is done, as stasis's
# `--keep 1` does: deleting them before the dump (peers.sh does) drops their unwritten pages
# and spares raw CRIU the writeback that any kept checkpoint pays during the next dump.
frozen_ms() { # stats-dump -> CRIU's frozen time in ms (dump_stats_entry.frozen_time)
  python3 - "$1" <<'PY' 2>/dev/null || echo -
import struct, sys
b = open(sys.argv[1], 'rb').read()
def varint(d, i):
    v = s = 0
    while True:
        c = d[i]; i += 1; v |= (c & 0x7f) << s; s += 7
        if c < 0x80: return v, i
n = struct.unpack('<I', b[8:12])[0]; e = b[12:12 + n]; i = 0
while i < len(e):
    k, i = varint(e, i)
    if k == (1 << 3 | 2):
        l, i = varint(e, i); d = e[i:i + l]; j = 0
        while j < len(d):
            kk, j = varint(d, j); v, j = varint(d, j)
            if kk >> 3 == 2: print('%.2f' % (v / 1000)); sys.exit(0)
        break
    else: sys.exit(1)
sys.exit(1)
PY
}
ratio_one() { # SIZE LABEL ROOT IMGBASE
  local sz=$1 label=$2 root=$3 base=$4 n=ra$1 k pid rp img prev="" t0 t1 out
  local sd=() sr=() sf=() rd=() rr=() rf=()
  "$S" --root "$root" run -d --name "$n" --keep 1 -- "$W/memhog" "$sz" >/dev/null
  pid=$(init_pid "$root" "$n")
  setsid "$W/memhog" "$sz" </dev/null >/dev/null 2>&1 & rp=$!
  RATIO_PIDS="$RATIO_PIDS $rp"
  for k in $(seq 1 1200); do
    local child; child=$(cut -d' ' -f1 "/proc/$pid/task/$pid/children" 2>/dev/null)
    [ -n "$child" ] && [ "$(awk '/^VmRSS/{print $2}' "/proc/$child/status" 2>/dev/null || echo 0)" -ge $((sz*1024*95/100)) ] \
      && [ "$(awk '/^VmRSS/{print $2}' "/proc/$rp/status" 2>/dev/null || echo 0)" -ge $((sz*1024*95/100)) ] && break
    sleep 0.05
  done
  for k in $(seq 0 "$CR_RUNS"); do # round 0 warms both up, untimed
    t0=$(now_us); out=$("$S" --root "$root" checkpoint --keep 1 "$n" 2>&1); t1=$(now_us)
    case $out in *checkpointed*) ;; *) rec "ratio: stasis ${sz}M $label" FAIL - "$out"; return ;; esac
    [ "$k" = 0 ] || { sd+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"); sf+=("$(echo "$out" | sed -n 's/.*frozen \([0-9.]*\) ms.*/\1/p')"); }
    t0=$(now_us); out=$("$S" --root "$root" restore "$n" 2>&1); t1=$(now_us)
    case $out in *restored*) ;; *) rec "ratio: stasis restore ${sz}M $label" FAIL - "$out"; return ;; esac
    [ "$k" = 0 ] || sr+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')")
    img=$base/raw-$sz-$k; rm -rf "$img"; mkdir -p "$img"
    t0=$(now_us); criu dump -t "$rp" -D "$img" -o dump.log >/dev/null 2>&1 || { rec "ratio: raw criu ${sz}M $label" FAIL - "$(grep -m1 Error "$img/dump.log")"; return; }; t1=$(now_us)
    [ "$k" = 0 ] || { rd+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"); rf+=("$(frozen_ms "$img/stats-dump")"); }
    wait "$rp" 2>/dev/null # the first dump's: our child until then
    for t0 in $(seq 1 200); do [ -e "/proc/$rp" ] || break; sleep 0.01; done
    t0=$(now_us); criu restore -D "$img" -d -o restore.log >/dev/null 2>&1 || { rec "ratio: raw criu restore ${sz}M $label" FAIL - "$(grep Error "$img/restore.log" | grep -v RLIMIT | head -n1)"; return; }; t1=$(now_us)
    [ "$k" = 0 ] || rr+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')")
    [ -z "$prev" ] || rm -rf "$prev"; prev=$img
  done
  [ -z "$prev" ] || rm -rf "$prev"
  # stasis's phases (its monitor's log): before CRIU, CRIU as the monitor saw it, after
  local ml=$root/workloads/$n/monitor.log ph col cols
  for ph in checkpoint restored; do
    grep "INFO $ph [0-9]*: before criu\|INFO $ph generation [0-9]*: before criu" "$ml" | tail -n "$CR_RUNS" \
      | sed 's/.*before criu \([0-9.]*\) ms, criu \([0-9.]*\) ms.*after \([0-9.]*\) ms, total \([0-9.]*\) ms.*/\1 \2 \3 \4/' > "$W/phases"
    cols=""
    for col in 1:before 2:criu 3:after 4:total; do
      cols="$cols${cols:+, }${col#*:} $(cut -d' ' -f"${col%%:*}" "$W/phases" | median)"
    done
    rec "ratio: stasis $ph ${sz}M $label phases" "$cols" ms "medians, monitor's log (the rest of the CLI time is the CLI and its round trip)"
  done
  kill -9 "$rp" 2>/dev/null; "$S" --root "$root" rm -f "$n" >/dev/null
  local a b what
  for what in "checkpoint:sd:rd" "restore:sr:rr" "frozen:sf:rf"; do
    local m=${what%%:*} x=${what#*:}; local y=${x#*:}; x=${x%%:*}
    eval "a=\$(printf '%s\n' \"\${$x[@]}\" | median)"; eval "b=\$(printf '%s\n' \"\${$y[@]}\" | median)"
    rec "ratio: $m ${sz}M $label: stasis / raw CRIU" "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')" x "$a / $b ms, medians of $CR_RUNS alternating"
  done
}
bench_ratio() {
  local sz
  RATIO_PIDS=""
  for sz in $SIZES; do
    ratio_one "$sz" ext4 "$R" "$W"
    ratio_one "$sz" tmpfs "$RS" "$SHM"
  done
}

# ------------------------------------------------------------------------------ policy
# crash_latency SIZE: kill -9 the main process; time until the workload runs again
crash_latency() {
  local sz=$1 n=crash$1 k xs=() ip child t0 t1 before
  cat > "$W/crash.yaml" <<EOF
name: $n
command: [$W/memhog, "$sz"]
checkpoint: {every: 2s, keep: 1}
on_exit: {policy: restore, max_attempts: 100, backoff: {initial: 0s, max: 1s}}
EOF
  st run -d -f "$W/crash.yaml" >/dev/null
  for k in 1 2 3 4 5; do
    # wait for a generation taken by this incarnation
    before=$(st checkpoints "$n" --format json | jq 'map(.generation) | max // 0')
    while [ "$(st checkpoints "$n" --format json | jq 'map(.generation) | max // 0')" -le "$before" ]; do sleep 0.05; done
    ip=$(init_pid "$R" "$n"); child=$(cut -d' ' -f1 "/proc/$ip/task/$ip/children")
    before=$(st inspect "$n" --format json | jq .state.restores)
    t0=$(now_us); kill -9 "$child"
    while [ "$(st inspect "$n" --format json | jq .state.restores)" -le "$before" ]; do sleep 0.05; done
    # the restore event is written once the restored job runs: its time, not our polling's
    t1=$(st events "$n" --format json | jq '[.[] | select(.kind == "restore")] | last | .at')
    xs+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a/1000}')")
  done
  rec "policy: restore-on-crash latency ${sz}M" "$(printf '%s\n' "${xs[@]}" | median)" ms "median of 5; kill -9 to running again (backoff 0)"
  st rm -f "$n" >/dev/null
}
all_vs_one() {
  local count=$1 root=$W/root-all$1 i t0 t1
  for i in $(seq 1 "$count"); do "$S" --root "$root" run -d --name j$i -- sh -c 'while :; do sleep 1; done' >/dev/null; done
  t0=$(now_us); for i in $(seq 1 "$count"); do "$S" --root "$root" checkpoint --leave-running -q j$i >/dev/null; done; t1=$(now_us)
  rec "policy: $count jobs checkpointed one after another" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", (b-a)/1000}')" ms ""
  t0=$(now_us); "$S" --root "$root" checkpoint --all --leave-running -q --parallel 4 >/dev/null; t1=$(now_us)
  rec "policy: checkpoint --all on $count jobs (parallel 4)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", (b-a)/1000}')" ms "includes one sync(2)"
  "$S" --root "$root" rm -f --all >/dev/null
}
throughput_under_checkpoints() {
  local secs=$POLICY_SECS
  st run -d --name tp0 -- "$W/counter" 64 >/dev/null
  st run -d --name tp1 --checkpoint-every 1s --keep 1 -- "$W/counter" 64 >/dev/null
  sleep "$secs"
  local base with gens frozen
  base=$(st logs tp0 | tail -n +3 | awk '{s+=$1; n++} END{if(n) printf "%.0f", s/n}')
  with=$(st logs tp1 | tail -n +3 | awk '{s+=$1; n++} END{if(n) printf "%.0f", s/n}')
  gens=$(st inspect tp1 --format json | jq .state.checkpoints)
  frozen=$(st events tp1 --format json | jq length)
  rec "policy: 64M job, iterations/s without checkpoints" "$base" "it/s" "mean over ${secs}s, both jobs side by side"
  rec "policy: 64M job, iterations/s with a checkpoint every 1s" "$with" "it/s" "$gens checkpoints"
  rec "policy: throughput drop under 1 s checkpoints" "$(awk -v a="$base" -v b="$with" 'BEGIN{printf "%.1f", (a-b)*100/a}')" "%" "compare with frozen time x checkpoints/s"
  st rm -f tp0 tp1 >/dev/null
  : "$frozen"
}
bench_policy() {
  crash_latency 1
  crash_latency 64
  all_vs_one 10
  all_vs_one 50
  throughput_under_checkpoints
}

# ------------------------------------------------------------------------------ migrate
MIG_SIZES=${MIG_SIZES:-"64 512 2048"}
MIG_RUNS=${MIG_RUNS:-3}
MIG_PIDS=""
MIG_NS="" PODMAN_NAMES="" PODMAN_IMAGES=""
# mig_bed: hosts A and B (ma, mb) with an sshd each, as tests/common/hosts.rs makes them
mig_bed() {
  local d=$W/mig h addr ns pid k
  mkdir -p "$d"
  MA=stbm$$a MB=stbm$$b MIG_NS="$MA $MB"
  ip netns add "$MA" && ip netns add "$MB" || return 1
  ip link add "vm$$a" netns "$MA" type veth peer name "vm$$b" netns "$MB" || return 1
  ip -n "$MA" addr add 10.232.0.1/24 dev "vm$$a"; ip -n "$MB" addr add 10.232.0.2/24 dev "vm$$b"
  for ns in "$MA" "$MB"; do ip -n "$ns" link set lo up; done
  ip -n "$MA" link set "vm$$a" up; ip -n "$MB" link set "vm$$b" up
  ssh-keygen -q -t ed25519 -N "" -f "$d/user_key"; ssh-keygen -q -t ed25519 -N "" -f "$d/host_key"
  cp "$d/user_key.pub" "$d/authorized_keys"
  k=$(cut -d' ' -f1-2 "$d/host_key.pub")
  printf '10.232.0.1 %s\n10.232.0.2 %s\n' "$k" "$k" > "$d/known_hosts"
  : > "$d/ssh_config"
  mkdir -p /run/sshd
  for h in a b; do
    addr=10.232.0.1; ns=$MA; [ $h = b ] && { addr=10.232.0.2; ns=$MB; }
    mkdir -p "$W/root-m$h"
    printf 'Host m%s\n  HostName %s\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n' \
      "$h" "$addr" "$d/user_key" "$d/known_hosts" >> "$d/ssh_config"
    printf 'ListenAddress %s:22\nHostKey %s\nAuthorizedKeysFile %s\nPidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\nMaxStartups 100\nSetEnv STASIS_ROOT=%s PATH=%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' \
      "$addr" "$d/host_key" "$d/authorized_keys" "$W/root-m$h" "$(dirname "$S")" > "$d/sshd_$h"
    ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$d/sshd_$h" 2>"$d/sshd_$h.log" & pid=$!
    MIG_PIDS="$MIG_PIDS $pid"
    for k in $(seq 1 200); do grep -q "Server listening" "$d/sshd_$h.log" && break; sleep 0.05; done
  done
  export STASIS_SSH_COMMAND="ssh -F $d/ssh_config"
  # CRIU's lazy page server needs 3.2 MiB pipes (README, "Live migration")
  [ "$(cat /proc/sys/fs/pipe-max-size)" -ge 4194304 ] || echo 4194304 > /proc/sys/fs/pipe-max-size
}
on_a() { ip netns exec "$MA" "$S" --root "$W/root-ma" "$@"; }
on_b() { ip netns exec "$MB" "$S" --root "$W/root-mb" "$@"; }
mig_wait_rss() { # ROOT NAME SIZE
  local pid child k want=$(( $3 * 1024 * 95 / 100 ))
  pid=$(init_pid "$1" "$2")
  for k in $(seq 1 1200); do
    child=$(cut -d' ' -f1 "/proc/$pid/task/$pid/children" 2>/dev/null)
    [ -n "$child" ] && [ "$(awk '/^VmRSS/{print $2}' "/proc/$child/status" 2>/dev/null || echo 0)" -ge "$want" ] && return 0
    sleep 0.05
  done
  return 1
}
# mig_mode SIZE MODE: MIG_RUNS moves A->B->A..., medians of the JSON summaries
mig_mode() {
  local sz=$1 mode=$2 n=mg$1 i j out tot=() down=() bytes=()
  on_a run -d --name "$n" -- "$W/memhog" "$sz" >/dev/null
  mig_wait_rss "$W/root-ma" "$n" "$sz" || { rec "migrate: $mode ${sz}M" FAIL - "memhog did not reach its RSS"; return; }
  local from=a to=b
  for i in $(seq 1 "$MIG_RUNS"); do
    out=$("on_$from" migrate --format json --mode "$mode" "$n" "m$to" 2>&1) || { rec "migrate: $mode ${sz}M" FAIL - "$(echo "$out" | tail -n1)"; "on_$from" rm -f "$n" >/dev/null 2>&1; "on_$to" rm -f "$n" >/dev/null 2>&1; return; }
    log "migrate $mode ${sz}M run $i: $(echo "$out" | jq -c 'del(.name)' 2>/dev/null | head -c 600)"
    tot+=("$(echo "$out" | jq .total_ms)"); down+=("$(echo "$out" | jq .downtime_ms)")
    bytes+=("$(echo "$out" | jq '.image_bytes + .page_bytes')")
    "on_$from" rm "$n" >/dev/null
    j=$from; from=$to; to=$j
  done
  "on_$from" rm -f "$n" >/dev/null
  rec "migrate: stasis $mode ${sz}M total" "$(printf '%s\n' "${tot[@]}" | median)" ms "median of $MIG_RUNS moves"
  rec "migrate: stasis $mode ${sz}M downtime" "$(printf '%s\n' "${down[@]}" | median)" ms "freeze on the source to running on the target"
  rec "migrate: stasis $mode ${sz}M bytes moved" "$(printf '%s\n' "${bytes[@]}" | median | awk '{printf "%.1f", $1/1048576}')" MiB "images + memory"
}
# mig_export SIZE: checkpoint --export, cp, restore --import on B (the job is down throughout)
mig_export() {
  local sz=$1 n=mx$1 i t0 t1 xs=() b=0
  for i in $(seq 1 "$MIG_RUNS"); do
    on_a run -d --name "$n" -- "$W/memhog" "$sz" >/dev/null
    mig_wait_rss "$W/root-ma" "$n" "$sz" || { rec "migrate: export+copy+import ${sz}M" FAIL - "memhog did not reach its RSS"; return; }
    t0=$(now_us)
    on_a checkpoint --export "$W/mig/x.tar" "$n" >/dev/null 2>&1 && cp "$W/mig/x.tar" "$W/mig/y.tar" \
      && on_b restore --import "$W/mig/y.tar" "$n" >/dev/null 2>&1 || { rec "migrate: export+copy+import ${sz}M" FAIL - "see stasis"; on_a rm -f "$n" >/dev/null 2>&1; return; }
    t1=$(now_us)
    xs+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"); b=$(stat -c %s "$W/mig/x.tar")
    on_a rm -f "$n" >/dev/null; on_b rm -f "$n" >/dev/null; rm -f "$W/mig/x.tar" "$W/mig/y.tar"
  done
  rec "migrate: export+copy+import ${sz}M total = downtime" "$(printf '%s\n' "${xs[@]}" | median)" ms "median of $MIG_RUNS; archive $(awk -v b="$b" 'BEGIN{printf "%.1f", b/1048576}') MiB"
}
# mig_raw SIZE COPY: criu dump, a copy of the images, criu restore -d (the job is down
# throughout). COPY cp: cp -r, the same-filesystem lower bound; scp: scp -r from host A to B
# over the bed's ssh, the copy between two real hosts (encrypted, as stasis's channels are).
mig_raw() {
  local sz=$1 how=$2 i pid t0 t1 xs=() b=0 img=$W/mig/raw src
  for i in $(seq 1 "$MIG_RUNS"); do
    setsid "$W/memhog" "$sz" </dev/null >/dev/null 2>&1 & pid=$!
    for src in $(seq 1 1200); do [ "$(awk '/^VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)" -ge $(( sz*1024*95/100 )) ] && break; sleep 0.05; done
    rm -rf "$img" "$img.copy"; mkdir -p "$img"
    t0=$(now_us)
    criu dump -t "$pid" -D "$img" -o dump.log >/dev/null 2>&1 || { rec "migrate: raw criu ${sz}M" FAIL - "$(grep -m1 Error "$img/dump.log")"; kill -9 "$pid"; return; }
    wait "$pid" 2>/dev/null
    if [ "$how" = scp ]; then
      ip netns exec "$MA" scp -O -q -r -F "$W/mig/ssh_config" "$img" "mb:$img.copy" || { rec "migrate: raw criu ${sz}M ($how)" FAIL - "scp"; return; }
    else
      cp -r "$img" "$img.copy"
    fi
    criu restore -D "$img.copy" -d -o restore.log >/dev/null 2>&1 || { rec "migrate: raw criu ${sz}M" FAIL - "$(grep Error "$img.copy/restore.log" | grep -v RLIMIT | head -n1)"; return; }
    t1=$(now_us)
    xs+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"); b=$(du -sb "$img" | cut -f1)
    kill -9 "$pid" 2>/dev/null
    rm -rf "$img" "$img.copy"
  done
  rec "migrate: raw criu dump+$how+restore ${sz}M total = downtime" "$(printf '%s\n' "${xs[@]}" | median)" ms "median of $MIG_RUNS; images $(awk -v b="$b" 'BEGIN{printf "%.1f", b/1048576}') MiB"
}
# mig_podman SIZE: podman container checkpoint --export, cp, restore --import of the same job
# (podman's import needs an image: the memhog rootfs is imported as a local one; runc as the
# runtime and file limits as in peers.sh; the job is down throughout)
mig_podman() {
  local sz=$1 n=${PFX}-mp i t0 t1 xs=() b=0 img=localhost/${PFX}-mh
  command -v podman >/dev/null || { rec "migrate: podman export+copy+import ${sz}M" FAIL - "no podman"; return; }
  if [ ! -d "$W/mig/prootfs" ]; then
    mkdir -p "$W/mig/prootfs"/{bin,etc,proc,sys,dev,tmp} && cp "$W/memhog" "$W/mig/prootfs/bin/"
    tar -C "$W/mig/prootfs" -c . | podman import -q - "$img" >/dev/null || { rec "migrate: podman ${sz}M" FAIL - "podman import of the rootfs"; return; }
    PODMAN_IMAGES="$PODMAN_IMAGES $img"
  fi
  PODMAN_NAMES="$PODMAN_NAMES $n"
  for i in $(seq 1 "$MIG_RUNS"); do
    podman run -d --name "$n" --runtime "$(command -v runc)" --network none --ulimit nofile=1024:1024 \
      --ulimit nproc=4096:4096 "$img" /bin/memhog "$sz" >/dev/null 2>&1 || { rec "migrate: podman ${sz}M" FAIL - "podman run"; return; }
    local pid; pid=$(podman inspect -f '{{.State.Pid}}' "$n")
    for t0 in $(seq 1 1200); do [ "$(awk '/^VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)" -ge $(( sz*1024*95/100 )) ] && break; sleep 0.05; done
    t0=$(now_us)
    podman container checkpoint --export "$W/mig/p.tar.zst" "$n" >/dev/null 2>&1 && cp "$W/mig/p.tar.zst" "$W/mig/q.tar.zst" \
      && podman rm -f "$n" >/dev/null 2>&1 && podman container restore --import "$W/mig/q.tar.zst" >/dev/null 2>&1 \
      || { rec "migrate: podman export+copy+import ${sz}M" FAIL - "see podman"; podman rm -f "$n" >/dev/null 2>&1; return; }
    t1=$(now_us)
    xs+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"); b=$(stat -c %s "$W/mig/p.tar.zst")
    podman rm -f "$n" >/dev/null 2>&1; rm -f "$W/mig/p.tar.zst" "$W/mig/q.tar.zst"
  done
  rec "migrate: podman export+copy+import ${sz}M total = downtime" "$(printf '%s\n' "${xs[@]}" | median)" ms "median of $MIG_RUNS; archive $(awk -v b="$b" 'BEGIN{printf "%.1f", b/1048576}') MiB (zstd)"
}
# lazy SIZE: `restore --lazy` vs a full restore of the same generation (CLI wall time: the job
# runs when it returns), MIG_RUNS each
lazy_one() {
  local sz=$1 n=lz$1 i t0 t1 full=() lazy=() out
  st run -d --name "$n" -- "$W/memhog" "$sz" >/dev/null
  mig_wait_rss "$R" "$n" "$sz" || { rec "lazy: restore ${sz}M" FAIL - "memhog did not reach its RSS"; return; }
  for i in $(seq 1 "$MIG_RUNS"); do
    st checkpoint --keep 1 "$n" >/dev/null
    t0=$(now_us); out=$(st restore "$n" 2>&1) || { rec "lazy: restore ${sz}M" FAIL - "$out"; return; }; t1=$(now_us)
    full+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')")
    st checkpoint --keep 1 "$n" >/dev/null
    t0=$(now_us); out=$(st restore --lazy "$n" 2>&1) || { rec "lazy: restore --lazy ${sz}M" FAIL - "$out"; return; }; t1=$(now_us)
    lazy+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')")
    # the next checkpoint waits until every page is back
    for t0 in $(seq 1 600); do st checkpoint --keep 1 "$n" >/dev/null 2>&1 && break; sleep 0.05; done
    st restore "$n" >/dev/null
  done
  rec "lazy: stasis restore ${sz}M" "$(printf '%s\n' "${full[@]}" | median)" ms "median of $MIG_RUNS (CLI wall time)"
  rec "lazy: stasis restore --lazy ${sz}M" "$(printf '%s\n' "${lazy[@]}" | median)" ms "median of $MIG_RUNS; running when it returns"
  st rm -f "$n" >/dev/null
}
bench_lazy() {
  local sz
  for sz in $SIZES; do lazy_one "$sz"; done
}
bench_migrate() {
  command -v /usr/sbin/sshd >/dev/null || { rec "migrate" FAIL - "no sshd (scripts/install-deps.sh installs openssh-server)"; return; }
  mig_bed || { rec "migrate" FAIL - "could not make the two-host bed"; return; }
  local sz
  for sz in $MIG_SIZES; do
    mig_mode "$sz" post-copy
    mig_mode "$sz" stream
    mig_export "$sz"
    mig_podman "$sz"
    mig_raw "$sz" cp
    mig_raw "$sz" scp
  done
}

# ------------------------------------------------------------------------------ peers
bench_peers() {
  if [ -x "$PEERS" ] || [ -f "$PEERS" ]; then
    log "peers.sh (SIZES=$SIZES CR_RUNS=$CR_RUNS HF_RUNS=${HF_RUNS:-30})"
    SIZES="$SIZES" CR_RUNS="$CR_RUNS" HF_RUNS="${HF_RUNS:-30}" bash "$PEERS" > "$W/peers.out" 2>"$W/peers.err" || log "peers.sh failed: $(tail -n2 "$W/peers.err")"
  else
    log "no $PEERS: peers skipped"
  fi
}

mkdir -p "$R" "$RS" "$RB"
env_header > "$W/env.txt"
for s in $BENCH; do
  # Let the build's (and the previous section's) dirty pages reach the disk first: writeback
  # competes with the fsyncs on the paths being measured.
  sync; sleep 2
  log "== $s"
  "bench_$s"
done

echo "=== environment"; cat "$W/env.txt"
echo
echo "=== stasis"
printf '| %-62s | %12s | %-6s | %s |\n' measure value unit note
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..64})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..8})" "------"
while IFS=$'\t' read -r m v u n; do printf '| %-62s | %12s | %-6s | %s |\n' "$m" "$v" "$u" "$n"; done < "$RES"
if [ -s "$W/peers.out" ]; then
  echo
  echo "=== peers (../shared/bench/peers.sh, same run)"
  sed -n '/=== results/,/=== commands/p' "$W/peers.out" | grep -v '=== commands'
fi
