#!/bin/bash
# The bit-exact claims' tests (README, "Determinism"), run under each OpenBLAS kernel set this CPU has:
# OPENBLAS_CORETYPE=Haswell, =SkylakeX (needs AVX-512) and unset. Needs a build (./build.sh; ./build.sh test
# builds the test projects too). Usage: tools/bitexact-tests.sh [extra dotnet test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
classes=(ArenaBlocksTests AsyncInterruptTests AsyncKeptOutputsTests AsyncRunTests Bf16ReplicaTests BatchInvarianceTests
         CheckpointResumeTests ContinuousBatchingTests InteropTests KernelSetTests ReallocTests ScaleOutTests
         SharedMemoryReallocTests SourceOrderTests ThreadChoiceTests UcxRmaTests PeerPagesTests WorkerProcessTests)
filter=$(printf 'FullyQualifiedName~%s|' "${classes[@]}")
filter+="FullyQualifiedName~ReleasedWeights|FullyQualifiedName~ClearingActivationCaches|FullyQualifiedName~BitExact|FullyQualifiedName~Identical"
cores=(Haswell unset)
grep -qw avx512f /proc/cpuinfo && cores=(Haswell SkylakeX unset)
status=0
for core in "${cores[@]}"; do
  echo "==> OPENBLAS_CORETYPE=$core"
  if [ "$core" = unset ]; then
    env -u OPENBLAS_CORETYPE dotnet test tests/Engine.Tests -c Release --no-build --filter "$filter" "$@" | tail -3 || status=1
  else
    OPENBLAS_CORETYPE=$core dotnet test tests/Engine.Tests -c Release --no-build --filter "$filter" "$@" | tail -3 || status=1
  fi
done
exit $status
