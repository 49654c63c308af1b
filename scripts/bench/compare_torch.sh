#!/usr/bin/env bash
# kaizen vs PyTorch/transformers throughput in one run: scripts/bench/compare_torch.sh [tiny|smollm2]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/reference/venv.sh
preset="${1:-tiny}"
[[ "$preset" == smollm2 ]] && scripts/fetch_model.sh >/dev/null
cargo build --release --quiet --bin kaizen
OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2 "$REF_PY" scripts/bench/compare_torch.py "$preset" \
    --kaizen "${CARGO_TARGET_DIR:-target}/release/kaizen" "${@:2}"
