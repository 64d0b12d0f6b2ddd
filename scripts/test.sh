#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the default test suite and the linter.
# Extra arguments go to pytest (e.g. `-m slow` for the long tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check defcon pipeline_stages tests benchmarks
.venv/bin/python -m pytest -q "$@"
