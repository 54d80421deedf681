#!/usr/bin/env bash
# Installs brainsparse and what it needs on a fresh machine (idempotent).
#   scripts/setup.sh          install the package
#   scripts/setup.sh test     also the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# PyTorch CPU build, pinned: a bare `torch` may pull a multi-GB CUDA build.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
"$PY" -m pip install --quiet -e ".${extra}"
