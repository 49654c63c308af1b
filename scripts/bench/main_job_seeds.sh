#!/usr/bin/env bash
# The main job (scripts/train_smollm2.sh) once per seed, one after the other, then its held-out
# results per run and their mean and spread (scripts/bench/summarize_eval.py). One job is a
# noisy draw (BENCHMARKS.md, runs 41-48); this is how its result is reported.
#
#   scripts/bench/main_job_seeds.sh 1 2 3                       # the committed config
#   scripts/bench/main_job_seeds.sh 1 2 3 -- --set learner.bf16=true
# Extra arguments after `--` go to every `kaizen train`.
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=()
while [[ $# -gt 0 && "$1" != "--" ]]; do seeds+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
[[ ${#seeds[@]} -gt 0 ]] || { echo "usage: $0 SEED... [-- kaizen train args]" >&2; exit 2; }
job="${KAIZEN_JOB:-configs/self_correct_smollm2_tools_score.toml}"
experiment=$(sed -n 's/^experiment *= *"\(.*\)"/\1/p' "$job" | head -1)
runs=()
for seed in "${seeds[@]}"; do
    before=$(ls -1 "runs/$experiment" 2>/dev/null | sort | tail -1 || true)
    scripts/train_smollm2.sh --no-progress --set "run.seed=$seed" "$@"
    after=$(ls -1 "runs/$experiment" | sort | tail -1)
    [[ "$after" != "$before" ]] || { echo "no new run of $experiment for seed $seed" >&2; exit 1; }
    runs+=("runs/$experiment/$after")
done
python3 scripts/bench/summarize_eval.py "${runs[@]}"
