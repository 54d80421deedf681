#!/usr/bin/env bash
# Installs brainsparse and what it needs into the project's virtual environment `.venv`
# (created on first use, reused afterwards; never the global interpreter).
#   scripts/setup.sh          install the package and the experiment runner (the `runner` extra)
#   scripts/setup.sh test     also the test and docs dependencies
# PYTHON=/path/to/python picks the interpreter the environment is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PY=${PYTHON:-python3}
VENV=${BRAINSPARSE_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$BASE_PY" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    # Debian/Ubuntu ship venv's pip bootstrap separately (python3-venv).
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      ver=$("$BASE_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      (apt-get update -qq && apt-get install -y -qq "python${ver}-venv" || apt-get install -y -qq python3-venv) >/dev/null
      "$BASE_PY" -m venv "$VENV"
    else
      echo "setup: '$BASE_PY -m venv' failed; install your distribution's venv package (e.g. python3-venv) or set PYTHON=" >&2
      exit 1
    fi
  fi
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true

# PyTorch CPU build, pinned: a bare `torch` may pull a multi-GB CUDA build.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
extra="[runner]"
[ "${1:-}" = "test" ] && extra="[runner,test,docs]"
"$PY" -m pip install --quiet -e ".${extra}"
echo "setup: brainsparse installed in $(cd "$VENV" && pwd) — run it as $VENV/bin/brainsparse, or 'source $VENV/bin/activate' first" >&2
