#!/usr/bin/env bash
# Set up danlu in ./.venv. Idempotent: a second run only re-checks.
#  - honours a torch that is already importable (the venv sees system site-packages then);
#  - otherwise installs torch==2.13.0, which resolves to the local CPU wheel here, never the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] using the installed torch: $("$PY" -c 'import torch; print(torch.__version__)')"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing the CPU build of torch"
  .venv/bin/pip install -q "torch==2.13.0"
fi
stamp=.venv/.danlu-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing danlu and its dependencies"
  .venv/bin/pip install -q -e ".[all]"
  touch "$stamp"
fi
