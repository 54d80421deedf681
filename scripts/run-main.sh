#!/usr/bin/env bash
# Installs brainsparse and runs the main job: CHTs at 1 % density on Fashion-MNIST.
# Extra arguments go to `brainsparse train` (e.g. --epochs 2).
set -euo pipefail
cd "$(dirname "$0")/.."
# Fashion-MNIST from Debian's package where apt is available; otherwise the library looks in
# --data-dir / $BRAINSPARSE_DATA and downloads the official files when online.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "note: apt could not install dataset-fashion-mnist; falling back to the library's search/download" >&2
fi
scripts/setup.sh
exec .venv/bin/brainsparse train --dataset fashion-mnist --method chts --density 0.01 --epochs 10 --seed 0 \
  --out runs/chts-fashion-mnist-d0.01 "$@"
