#!/usr/bin/env bash
# Create .venv (if missing) and install prunekit with every extra. torch is pinned first so that pip takes the
# CPU build instead of pulling several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[reference,hf,test,eval]"
echo "prunekit installed in .venv ($(.venv/bin/python -c 'import prunekit; print(prunekit.__version__)'))"
