#!/usr/bin/env bash
# tools/gpu-check.sh: the CUDA backend's check on a Linux machine with an NVIDIA GPU and driver,
# cmake and a C++ compiler (no .NET needed). It builds the native library with the CUDA backend
# (PTX by clang++-14, else nvcc; OpenBLAS if installed, else the reference SGEMM), then
#   1. runs the whole op case list on the cuda backend (realn_op_tests --backend cuda): every case
#      the backend implements against the float64 reference, the others listed as not implemented;
#   2. runs realn_cuda_bench: GEMM (fp32 and bf16) through the ABI vs cuBLAS called directly,
#      attention fwd/bwd times, device copies vs cuMemcpyDtoD, interval gather vs one copy of the
#      same bytes (ratios measured in the same run);
#   3. where python3 with torch sees the GPU: PyTorch scaled_dot_product_attention on the same
#      attention shape (tools/sdpa_bench.py) and the ratio SDPA time / ours;
#   4. where python3 with torch sees the GPU: tools/gpu_costs.py, the measurements behind the
#      planner's GPU cluster constants (GEMM vs token count, attention vs sequence length, decode
#      attention, streaming bandwidth, launch floor, and the fitted curve parameters);
#   5. writes the figures to OUT/performance.md (and docs/performance.md when run in a checkout).
# Every step has a deadline (timeout), so a hung kernel ends the run naming the step; the sum of the
# deadlines fits one 10-minute call of a lent GPU machine (REALN_GPU_STEP_SCALE multiplies them).
# REALN_GPU_COSTS=0 skips step 4.
# REALN_GPU_PREBUILT=DIR: use the binaries in DIR (librealn.so is not needed: realn_op_tests,
# realn_cuda_tests, realn_cuda_bench link the library statically; DIR/lib is put on LD_LIBRARY_PATH
# for their shared dependencies) instead of building: a machine without clang++-14 then needs no
# compiler at all, and the PTX is the one this repository's build embeds (clang-14, PTX 7.5).
# Usage: tools/gpu-check.sh [OUT]   (OUT defaults to $OUT, else ./gpu-check-out)
# Exit: 0 all cases passed; 1 a case or the build failed; 77 no usable CUDA device (the build still ran).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUTDIR=${1:-${OUT:-$ROOT/gpu-check-out}}
mkdir -p "$OUTDIR"
BUILD=${REALN_GPU_BUILD:-$ROOT/native/build-gpu}
JOBS=$(nproc 2>/dev/null || echo 4)
log() { printf '==> %s\n' "$*" | tee -a "$OUTDIR/gpu-check.log"; }
: > "$OUTDIR/gpu-check.log"

# cuBLAS: the toolkit's, else PyTorch's wheel (site-packages/nvidia/cublas/lib).
if [ -z "${REALN_CUBLAS_LIBRARY:-}" ]; then
  for dir in /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu \
             $(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true); do
    lib=$(ls "$dir"/libcublas.so.* 2>/dev/null | grep -v Lt | sort -V | tail -1 || true)
    if [ -n "$lib" ]; then export REALN_CUBLAS_LIBRARY="$lib"; break; fi
  done
fi
log "cuBLAS: ${REALN_CUBLAS_LIBRARY:-not found (GEMM cases will fail with the reason)}"
# NCCL: the system's, else PyTorch's wheel (site-packages/nvidia/nccl/lib); realn_cuda_tests then runs
# the collectives on one rank.
if [ -z "${REALN_NCCL_LIBRARY:-}" ] && ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2; then
  for dir in $(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true); do
    [ -e "$dir/libnccl.so.2" ] && export REALN_NCCL_LIBRARY="$dir/libnccl.so.2"
  done
fi
log "NCCL: ${REALN_NCCL_LIBRARY:-$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libnccl.so.2' | head -1)}"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUTDIR/gpu-check.log"; fi

export REALN_CUDA_HOST_DIR="$ROOT/native/cuda"  # realn_cuda_tests reads the launched kernel names there
SCALE=${REALN_GPU_STEP_SCALE:-1}
deadline() { echo $(( $1 * SCALE )); }
if [ -n "${REALN_GPU_PREBUILT:-}" ]; then
  BUILD=$(cd "$REALN_GPU_PREBUILT" && pwd)
  mkdir -p "$BUILD/tests"
  for b in realn_op_tests realn_cuda_tests realn_cuda_bench; do
    [ -x "$BUILD/tests/$b" ] || { [ -x "$BUILD/$b" ] && ln -sf "$BUILD/$b" "$BUILD/tests/$b"; } || true
    [ -x "$BUILD/tests/$b" ] || { log "prebuilt $b missing in $BUILD"; exit 1; }
  done
  [ -d "$BUILD/lib" ] && export LD_LIBRARY_PATH="$BUILD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "prebuilt binaries: $BUILD"
  if ldd "$BUILD/tests/realn_cuda_tests" | grep -q "not found"; then
    ldd "$BUILD/tests/realn_cuda_tests" | tee -a "$OUTDIR/gpu-check.log"
    log "prebuilt binaries lack libraries: building instead"
    BUILD=$ROOT/native/build-gpu-here
    unset REALN_GPU_PREBUILT
  fi
fi
if [ -z "${REALN_GPU_PREBUILT:-}" ]; then
  COMPILER=""
  command -v clang++-14 >/dev/null || COMPILER="-DREALN_CUDA_COMPILER=nvcc"
  log "configure ($BUILD)"
  timeout "$(deadline 120)" cmake -S native -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DREALN_CUDA=on -DREALN_BLAS=auto $COMPILER >>"$OUTDIR/gpu-check.log" 2>&1 \
    || { log "cmake failed (see gpu-check.log)"; exit 1; }
  log "build"
  timeout "$(deadline 300)" cmake --build "$BUILD" -j"$JOBS" --target realn_op_tests realn_cuda_tests realn_cuda_bench >>"$OUTDIR/gpu-check.log" 2>&1 \
    || { log "build failed (see gpu-check.log)"; tail -30 "$OUTDIR/gpu-check.log"; exit 1; }
fi

set +e
timeout "$(deadline 60)" "$BUILD/tests/realn_cuda_tests" | tee "$OUTDIR/cuda-backend.txt"
probe=${PIPESTATUS[0]}
probe_rc=0
if [ "$probe" = 77 ]; then
  log "no usable CUDA device: the backend was built, nothing was run on a GPU"
  exit 77
elif [ "$probe" != 0 ]; then
  # Recorded, and the run goes on: the op cases below are independent of what failed here.
  log "cuda_backend test failed (exit $probe; 124 = timed out)"
  probe_rc=1
fi

# The planner's GPU cost measurements first: they need only PyTorch, so a fault in our kernels below
# cannot cost them.
costs_rc=0
if [ "${REALN_GPU_COSTS:-1}" = 0 ]; then
  echo '{"bench": "costs", "skipped": "REALN_GPU_COSTS=0"}' > "$OUTDIR/costs.jsonl"
elif python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  log "planner cost measurements (tools/gpu_costs.py)"
  timeout "$(deadline 120)" python3 tools/gpu_costs.py "${REALN_HBM_GBPS:-4800}" > "$OUTDIR/costs.jsonl" 2>&1
  costs_rc=$?
  [ "$costs_rc" = 124 ] && echo "{\"error\": \"gpu_costs.py timed out after $(deadline 120) s\"}" >> "$OUTDIR/costs.jsonl"
else
  echo '{"bench": "costs", "skipped": "no python3 with torch that sees the GPU"}' > "$OUTDIR/costs.jsonl"
fi

# One process per op family (the families of native/tests/CMakeLists.txt), each with its own
# deadline: a kernel fault leaves a CUDA context unusable, so it must not fail the later families.
log "op cases on the cuda backend"
families=$(sed -n '/^foreach(family/,/)/p' native/tests/CMakeLists.txt | tr -s ' \n' ' ' | sed -e 's/.*foreach(family//' -e 's/).*//')
: > "$OUTDIR/cases-cuda.txt"
cases_rc=0; passed=0; failed=0; notimpl=0
budget=$(deadline ${REALN_GPU_CASES_BUDGET_S:-240})
started=$SECONDS
for f in $families; do
  echo "## family $f" >> "$OUTDIR/cases-cuda.txt"
  if [ $((SECONDS - started)) -gt "$budget" ]; then
    echo "[FAIL] family $f not run: the op cases' budget of $budget s is spent" >> "$OUTDIR/cases-cuda.txt"
    failed=$((failed + 1)); cases_rc=1; continue
  fi
  timeout "$(deadline 30)" "$BUILD/tests/realn_op_tests" --backend cuda --family "$f" > "$OUTDIR/family.txt" 2>&1
  rc=$?
  cat "$OUTDIR/family.txt" >> "$OUTDIR/cases-cuda.txt"
  [ "$rc" = 124 ] && echo "[FAIL] family $f timed out after $(deadline 30) s" >> "$OUTDIR/cases-cuda.txt"
  [ "$rc" != 0 ] && cases_rc=1
  passed=$((passed + $(grep -c '^\[PASS\]' "$OUTDIR/family.txt" || true)))
  failed=$((failed + $(grep -c '^\[FAIL\]' "$OUTDIR/family.txt" || true) + $([ "$rc" = 124 ] && echo 1 || echo 0)))
  notimpl=$((notimpl + $(grep -c '^\[SKIP\]' "$OUTDIR/family.txt" || true)))
done
rm -f "$OUTDIR/family.txt"
echo "cuda: $passed passed, $failed failed, $notimpl not implemented (families: $(echo $families | wc -w))" >> "$OUTDIR/cases-cuda.txt"
log "bench"
timeout "$(deadline 120)" "$BUILD/tests/realn_cuda_bench" > "$OUTDIR/bench-cuda.jsonl" 2>&1
bench_rc=$?
[ "$bench_rc" = 124 ] && echo "{\"error\": \"realn_cuda_bench timed out after $(deadline 120) s\"}" >> "$OUTDIR/bench-cuda.jsonl"
log "attention vs PyTorch SDPA"
sdpa_rc=0
if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  timeout "$(deadline 60)" python3 tools/sdpa_bench.py 4096 32 8 128 "$OUTDIR/bench-cuda.jsonl" > "$OUTDIR/sdpa.jsonl" 2>&1
  sdpa_rc=$?
  [ "$sdpa_rc" = 124 ] && echo "{\"error\": \"sdpa_bench.py timed out after $(deadline 60) s\"}" >> "$OUTDIR/sdpa.jsonl"
else
  echo '{"bench": "attention_vs_sdpa", "skipped": "no python3 with torch that sees the GPU"}' > "$OUTDIR/sdpa.jsonl"
fi
set -e
tail -1 "$OUTDIR/cases-cuda.txt" | tee -a "$OUTDIR/gpu-check.log"
cat "$OUTDIR/bench-cuda.jsonl" "$OUTDIR/sdpa.jsonl" | tee -a "$OUTDIR/gpu-check.log"

{
  echo "# CUDA backend: measured figures"
  echo
  echo "Written by tools/gpu-check.sh on $(date -u +%Y-%m-%d) ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1))."
  echo
  echo "## Op cases (cuda backend vs the float64 reference)"
  echo
  echo '```'
  grep -E '^\[(PASS|FAIL|SKIP)\]' "$OUTDIR/cases-cuda.txt" | sed -E 's/ +/ /g' || true
  tail -1 "$OUTDIR/cases-cuda.txt"
  echo '```'
  echo
  echo "## Microbenchmarks (ratio = reference time / ours; the reference is measured in the same run)"
  echo
  echo '```'
  cat "$OUTDIR/bench-cuda.jsonl"
  echo '```'
  echo
  echo "## Attention vs PyTorch scaled_dot_product_attention (ratio = SDPA time / ours, same run)"
  echo
  echo '```'
  cat "$OUTDIR/sdpa.jsonl"
  echo '```'
  echo
  echo "## Planner cost measurements (tools/gpu_costs.py, PyTorch; the sources of the GPU cluster constants)"
  echo
  echo '```'
  cat "$OUTDIR/costs.jsonl"
  echo '```'
} > "$OUTDIR/performance.md"
[ -d "$ROOT/docs" ] && cp "$OUTDIR/performance.md" "$ROOT/docs/performance.md"
log "wrote $OUTDIR/performance.md"
[ "$probe_rc" = 0 ] && [ "$cases_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$sdpa_rc" = 0 ] && [ "$costs_rc" = 0 ]
