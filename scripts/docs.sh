#!/usr/bin/env bash
# Builds the documentation site (mkdocs, Material theme, API pages from the docstrings) from
# docs/ into site/, failing on any warning (broken links or anchors, missing snippets or API
# references). Extra arguments go to `mkdocs build` (e.g. -d /tmp/site). Installs brainsparse
# with the docs extra into .venv (scripts/setup.sh test) when mkdocs is not there yet.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import mkdocs, material, mkdocstrings_handlers.python, pymdownx" >/dev/null 2>&1; then
  scripts/setup.sh test
fi
export NO_MKDOCS_2_WARNING=1   # Material's banner about MkDocs 2.0, printed on every build
exec .venv/bin/python -m mkdocs build --strict "$@"
