#!/usr/bin/env bash
# One entry point for people and CI.
#   ./run.sh demo   set up, then materialize every asset on the built-in demo dataset
#   ./run.sh test   set up, then lint, format and type checks, then the test suite
#   ./run.sh lint   set up, then only the lint, format and type checks
#   ./run.sh dev    set up, then start the Dagster UI (dagster dev) on http://127.0.0.1:3000
#   ./run.sh app    set up, then start the interactive app over the champion models on http://127.0.0.1:8501
#   ./run.sh mlflow set up, then start the MLflow UI over the work folder's store on http://127.0.0.1:5000
#   ./run.sh setup  only create .venv and install the project
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${CXR_VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # Pin torch before the project: a bare "torch>=2.3" on an empty environment pulls a multi-GB
  # CUDA build. Users with GPUs can install their own build first; the range accepts it.
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet "torch==${CXR_TORCH_VERSION:-2.13.0}"
  fi
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  # the work folder's Dagster instance (jobs/cli.py): its dagster.yaml (pools, the library's logs
  # routed into runs), its SQLite storage made once, the heavy steps' pool sized to this machine
  "$VENV/bin/cxr-pipeline" init
}

# Lint, format and types before the tests (configured in pyproject.toml): ruff on the whole tree,
# mypy on the library and the Dagster layer.
lint() {
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy"
}

export CXR_HOME="${CXR_HOME:-$PWD/work}"
export DAGSTER_HOME="${DAGSTER_HOME:-$CXR_HOME/dagster_home}"
mkdir -p "$CXR_HOME" "$DAGSTER_HOME"
# Where the UIs are served: links in Dagster metadata, MLflow run notes and the app use these.
export CXR_DAGSTER_URL="${CXR_DAGSTER_URL:-http://127.0.0.1:3000}"
export CXR_MLFLOW_UI_URL="${CXR_MLFLOW_UI_URL:-http://127.0.0.1:5000}"

command=${1:-demo}
shift || true
case "$command" in
  setup) setup ;;
  # demo, dev, app and mlflow are the installed `cxr-pipeline` command (jobs/cli.py), the same
  # one a wheel or the container image offers, on the work folder set above
  demo)
    setup
    exec "$VENV/bin/cxr-pipeline" demo "$@"
    ;;
  test)
    setup
    lint
    "$VENV/bin/python" -m pytest "$@"
    ;;
  lint)
    setup
    lint
    ;;
  dev | app | mlflow)
    setup
    exec "$VENV/bin/cxr-pipeline" "$command" "$@"
    ;;
  *)
    echo "usage: $0 {demo|test|lint|dev|app|mlflow|setup}" >&2
    exit 2
    ;;
esac
