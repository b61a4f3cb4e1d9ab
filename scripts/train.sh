#!/usr/bin/env bash
# README command 1: set up (if needed) and run the default experiment end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rayrl train experiments/default.toml "$@"
