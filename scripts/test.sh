#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the default test suite and the linter.
# Extra arguments go to pytest (e.g. `-m slow` for the long tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTML report's browser test needs a headless Chromium (Debian's package); best effort, as root.
if ! command -v chromium >/dev/null && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "note: could not install chromium; the HTML report's browser test will be skipped" >&2
fi
"${DEFCON_VENV:-.venv}/bin/ruff" check defcon pipeline_stages tests benchmarks
"${DEFCON_VENV:-.venv}/bin/python" -m pytest -q "$@"
