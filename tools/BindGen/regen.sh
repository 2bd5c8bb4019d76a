#!/usr/bin/env bash
# Regenerates src/Interop/Ucx/Ucp.gen.cs (and the layout probe) from the installed UCX headers.
# Needs python3-clang-14 (Debian); installs it when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! /usr/bin/python3 -c "import clang.cindex" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-clang-14 libclang1-14 >/dev/null
fi
exec /usr/bin/python3 tools/BindGen/bindgen.py "$@"
