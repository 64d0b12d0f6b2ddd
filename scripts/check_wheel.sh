#!/usr/bin/env bash
# Installs the built wheel as a pip user would (docs/install.md) into a fresh virtual environment
# holding a torch and a current requests, and checks that neither changes and that defcon runs
# (tests/test_wheel_install.py). Needs the venv of scripts/setup.sh ($DEFCON_VENV, default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
"${DEFCON_VENV:-.venv}/bin/python" -m pytest -q -m slow tests/test_wheel_install.py "$@"
