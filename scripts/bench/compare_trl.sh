#!/usr/bin/env bash
# Seconds per GRPO step, kaizen vs TRL's GRPOTrainer, in one run (SmolLM2-135M, 8 prompts x 8
# generations, 2 threads): scripts/bench/compare_trl.sh [--steps N] [--max-new-tokens N]
#   [--side kaizen|trl|both] [--skip-zero-signal]   (see compare_trl.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/reference/venv.sh
gguf=$(scripts/fetch_model.sh)
data="$KAIZEN_CACHE/data/basic_arithmetic_easy"
if [[ ! -s "$data/train.jsonl" ]]; then
    scripts/data/make_problem_sets.sh --families basic_arithmetic_easy --train 2000 --heldout 200
fi
cargo build --release --quiet --bin kaizen
OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2 "$REF_PY" scripts/bench/compare_trl.py \
    --kaizen "${CARGO_TARGET_DIR:-target}/release/kaizen" \
    --gguf "$gguf" --problems "$data/train.jsonl" "$@"
