#!/usr/bin/env bash
# Set up danlu in ./.venv. Idempotent: a second run only re-checks.
#  - honours a torch that is already importable (the venv sees system site-packages then);
#  - otherwise installs a CPU build of torch (the local torch==2.13.0 wheel where there is one), never CUDA.
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
  if .venv/bin/pip install -q --no-index --no-deps "torch==2.13.0" >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch==2.13.0"  # the local CPU wheel is in; this adds its dependencies
  else
    # No local CPU wheel: the default Linux wheel from the package index is the multi-GB CUDA build, so take
    # PyTorch's CPU-only build instead.
    .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
stamp=.venv/.danlu-installed
# reinstall when the package definition or the C extension (compiled by pip, needs gcc) changed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ src/danlu/tokenizer/_bpe.c -nt "$stamp" ]; then
  echo "[setup] installing danlu and its dependencies"
  .venv/bin/pip install -q -e ".[all]"
  .venv/bin/python -c "import danlu.tokenizer._bpe" 2>/dev/null \
    || echo "[setup] note: no C compiler, so tokenizer training falls back to rustbpe (slower on CJK)"
  touch "$stamp"
fi
