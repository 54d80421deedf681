#!/usr/bin/env bash
# Installs brainsparse with its test dependencies, lints with ruff and runs the default test suite.
# Real datasets are used when ../shared/data is beside the checkout (BRAINSPARSE_TEST_DATA),
# small generated data otherwise. Extra arguments go to pytest (e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if [ -z "${BRAINSPARSE_TEST_DATA:-}" ] && [ -d ../shared/data ]; then
  export BRAINSPARSE_TEST_DATA="$(cd ../shared/data && pwd)"
fi
# The tests train tiny models: one thread each is fastest, and immune to the thread thrashing
# that a busy machine inflicts on multi-threaded tiny ops (set OMP_NUM_THREADS to override).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
