#!/usr/bin/env bash
# The GPU check: the CUDA tests, an MLP epoch at 1 % on the masked and sparse paths, and
# llama-60m training steps (dense vs CHTs at 30 %, masked), about 5 minutes on one GPU.
# Figures: benchmarks/results/gpu-check.json. Without a GPU it says so and exits 0.
#   scripts/gpu-check.sh            (uses .venv when present, else python3; PYTHON= overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
if ! "$PY" -c "import brainsparse" >/dev/null 2>&1; then
  echo "gpu-check: brainsparse is not importable with $PY; run scripts/setup.sh test first" >&2
  exit 1
fi
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
  "$PY" -m pytest -q -p no:cacheprovider -m "not slow" -k "cuda or gpu" tests || { rc=$?; [ "$rc" = 5 ] || exit "$rc"; }
else
  echo "gpu-check: no GPU visible to torch; skipping the CUDA tests"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
