#!/usr/bin/env bash
# tools/device-cpu-loop.sh: issue 19 item 6 (the planner's estimate against a measured PPO iteration) on a lent device
# machine's CPUs, which no other tenant shares: the NativeAOT realn (`./build.sh aot`, carried as
# dist/realn-linux-x64.tar.gz; that machine has no .NET) pinned to two of its cores, as this project's 2-core
# development VM runs it, so the figures compare with docs/cost-model.md's, without that VM's host phases.
#   1. unpacks the folder and checks the binary runs (the native op cases of GEMM);
#   2. `realn profile` on the two cores;
#   3. `realn bench plan examples/bench/ppo-tiny-timing.yaml --repeat N` on cpu-local (2 devices) and cpu-local-4
#      (4 devices on the 2 cores) with that profile: estimate, measurement and ratio of the single device, the plan as
#      threads and the plan in worker processes.
# Usage (device machine, repository root): tools/device-cpu-loop.sh [OUT]   (OUT defaults to $OUT, else ./device-cpu-out)
# REALN_LOOP_CORES (default 2,3: not core 0, where interrupts land), REALN_LOOP_REPEAT (default 3),
# REALN_LOOP_TARBALL (default dist/realn-linux-x64.tar.gz). Every step has a deadline; together they fit a 10-minute call.
# Exit: 0 every step ran; 1 a step failed (its log names it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-$PWD/device-cpu-out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
CORES=${REALN_LOOP_CORES:-2,3}
REPEAT=${REALN_LOOP_REPEAT:-3}
TARBALL=${REALN_LOOP_TARBALL:-dist/realn-linux-x64.tar.gz}
LOG="$OUTDIR/loop.log"
log() { printf '==> %s\n' "$*" | tee -a "$LOG"; }
: > "$LOG"
fail() { log "FAILED: $*"; exit 1; }

[ -f "$TARBALL" ] || fail "$TARBALL is missing: run ./build.sh aot and carry it"
WORK=$(mktemp -d)
tar -C "$WORK" -xzf "$TARBALL"
REALN="$WORK/realn-linux-x64/realn"
[ -x "$REALN" ] || fail "$TARBALL holds no realn-linux-x64/realn"
command -v taskset >/dev/null || fail "taskset (util-linux) is missing"
run() { local limit=$1; shift; timeout --kill-after=10 "$limit" taskset -c "$CORES" "$@"; }

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm); $(nproc --all) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
  grep -m1 "model name" /proc/cpuinfo || true
  echo "cores used: $CORES; repeat: $REPEAT"
} | tee -a "$LOG"

log "1. the binary (selftest --filter gemm)"
run 60 "$REALN" selftest --filter gemm >"$OUTDIR/selftest.txt" 2>&1 || { cat "$OUTDIR/selftest.txt" >>"$LOG"; fail "selftest"; }
tail -2 "$OUTDIR/selftest.txt" | tee -a "$LOG"

log "2. realn profile on cores $CORES"
run 240 "$REALN" profile --out "$OUTDIR/profile.json" >"$OUTDIR/profile.txt" 2>&1 || { tail -20 "$OUTDIR/profile.txt" >>"$LOG"; fail "profile"; }
tail -3 "$OUTDIR/profile.txt" | tee -a "$LOG"

for spec in cpu-local cpu-local-4; do
  log "3. bench plan on $spec (--repeat $REPEAT)"
  rm -rf "$OUTDIR/bench-$spec"
  run 300 "$REALN" bench plan examples/bench/ppo-tiny-timing.yaml --cluster "examples/clusters/$spec.yaml" \
      --profile "$OUTDIR/profile.json" --repeat "$REPEAT" --out "$OUTDIR/bench-$spec" >"$OUTDIR/bench-$spec.txt" 2>&1 \
    || { tail -20 "$OUTDIR/bench-$spec.txt" >>"$LOG"; fail "bench plan on $spec"; }
  grep -A8 "seconds per iteration" "$OUTDIR/bench-$spec.txt" | tee -a "$LOG" || true
  # the run directories are large (checkpoints): keep the plans, logs and metrics
  find "$OUTDIR/bench-$spec" -name checkpoints -type d -prune -exec rm -rf {} +
done
rm -rf "$WORK"
log "done: $OUTDIR"
