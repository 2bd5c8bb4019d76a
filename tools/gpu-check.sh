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
#   4. writes the figures to OUT/performance.md (and docs/performance.md when run in a checkout).
# Every step has a deadline (timeout), so a hung kernel ends the run naming the step.
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
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUTDIR/gpu-check.log"; fi

COMPILER=""
command -v clang++-14 >/dev/null || COMPILER="-DREALN_CUDA_COMPILER=nvcc"
log "configure ($BUILD)"
cmake -S native -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DREALN_CUDA=on -DREALN_BLAS=auto $COMPILER >>"$OUTDIR/gpu-check.log" 2>&1 \
  || { log "cmake failed (see gpu-check.log)"; exit 1; }
log "build"
cmake --build "$BUILD" -j"$JOBS" --target realn realn_op_tests realn_cuda_tests realn_cuda_bench >>"$OUTDIR/gpu-check.log" 2>&1 \
  || { log "build failed (see gpu-check.log)"; tail -30 "$OUTDIR/gpu-check.log"; exit 1; }

set +e
timeout 300 "$BUILD/tests/realn_cuda_tests" | tee "$OUTDIR/cuda-backend.txt"
probe=${PIPESTATUS[0]}
set -e
if [ "$probe" = 77 ]; then
  log "no usable CUDA device: the backend was built, nothing was run on a GPU"
  exit 77
elif [ "$probe" != 0 ]; then
  log "cuda_backend test failed (exit $probe; 124 = timed out after 300 s)"
  exit 1
fi

log "op cases on the cuda backend"
set +e
timeout 1200 "$BUILD/tests/realn_op_tests" --backend cuda > "$OUTDIR/cases-cuda.txt" 2>&1
cases_rc=$?
[ "$cases_rc" = 124 ] && echo "op cases timed out after 1200 s" >> "$OUTDIR/cases-cuda.txt"
log "bench"
timeout 900 "$BUILD/tests/realn_cuda_bench" > "$OUTDIR/bench-cuda.jsonl" 2>&1
bench_rc=$?
[ "$bench_rc" = 124 ] && echo '{"error": "realn_cuda_bench timed out after 900 s"}' >> "$OUTDIR/bench-cuda.jsonl"
log "attention vs PyTorch SDPA"
sdpa_rc=0
if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  timeout 600 python3 tools/sdpa_bench.py 4096 32 8 128 "$OUTDIR/bench-cuda.jsonl" > "$OUTDIR/sdpa.jsonl" 2>&1
  sdpa_rc=$?
  [ "$sdpa_rc" = 124 ] && echo '{"error": "sdpa_bench.py timed out after 600 s"}' >> "$OUTDIR/sdpa.jsonl"
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
} > "$OUTDIR/performance.md"
[ -d "$ROOT/docs" ] && cp "$OUTDIR/performance.md" "$ROOT/docs/performance.md"
log "wrote $OUTDIR/performance.md"
[ "$cases_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$sdpa_rc" = 0 ]
