#!/usr/bin/env bash
# One entry point for people and CI.
#   ./run.sh demo   set up, then materialize every asset on the built-in demo dataset
#   ./run.sh test   set up, then run the test suite
#   ./run.sh dev    set up, then start the Dagster UI (dagster dev) on http://127.0.0.1:3000
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
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
}

export CXR_HOME="${CXR_HOME:-$PWD/work}"
export DAGSTER_HOME="${DAGSTER_HOME:-$CXR_HOME/dagster_home}"
mkdir -p "$CXR_HOME" "$DAGSTER_HOME"

command=${1:-demo}
shift || true
case "$command" in
  setup) setup ;;
  demo)
    setup
    "$VENV/bin/dagster" job execute -f definitions.py -j all_assets "$@"
    ;;
  test)
    setup
    "$VENV/bin/python" -m pytest "$@"
    ;;
  dev)
    setup
    exec "$VENV/bin/dagster" dev -w workspace.yaml "$@"
    ;;
  *)
    echo "usage: $0 {demo|test|dev|setup}" >&2
    exit 2
    ;;
esac
