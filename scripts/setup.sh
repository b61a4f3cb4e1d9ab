#!/usr/bin/env bash
# Create .venv (if missing) and install rayrl with the pinned CPU stack from constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,envs,deepspeed,tracking]' 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import rayrl, torch, ray; print(f'rayrl ready: torch {torch.__version__}, ray {ray.__version__}')"
