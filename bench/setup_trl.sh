#!/usr/bin/env bash
# A separate venv for the TRL comparison (bench/vs_trl.py): rayrl plus trl==1.16.0, CPU torch pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' trl==1.16.0 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv-bench/bin/python -c "import trl, torch; print(f'bench venv ready: trl {trl.__version__}, torch {torch.__version__}')"
