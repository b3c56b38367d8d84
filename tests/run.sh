#!/usr/bin/env bash
# The test command: sets up .venv (once) with the package, its training and its test extras, then
# runs pytest.
# Usage: bash tests/run.sh [pytest args]   (default: the fast suite; `-m slow` for the slow one)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c "import aop_tf, tensorflow, pytest, hypothesis, xdist" 2>/dev/null; then
  echo "Setting up .venv (first run only)..."
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[train,test]"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export AOP_PSFHS_DIR=${AOP_PSFHS_DIR:-$(cd .. && pwd)/shared/data/psfhs}
exec .venv/bin/python -m pytest "$@"
