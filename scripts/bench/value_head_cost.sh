#!/usr/bin/env bash
# The learner's cost of PPO's value head on SmolLM2's main job: the same config run for a few
# steps as GRPO and as PPO (shared value head; with --separate also a separate critic), with
# every sample trained on both sides (`learner.skip_zero_signal = false`, no dynamic sampling, no
# warm start, no evaluation). Prints the learner's seconds per step and per 1,000 scored tokens.
#   scripts/bench/value_head_cost.sh [--steps 4] [--separate]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=4
separate=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --steps) steps="$2"; shift 2 ;;
        --separate) separate=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
scripts/fetch_model.sh >/dev/null
source scripts/lib/venv.sh
data="$KAIZEN_CACHE/data/basic_arithmetic_easy"
if [[ ! -s "$data/train.jsonl" || ! -s "$data/heldout.jsonl" ]]; then
    scripts/data/make_problem_sets.sh --families basic_arithmetic_easy --train 2000 --heldout 200
fi
cargo build --release --quiet --bin kaizen
kaizen="${CARGO_TARGET_DIR:-target}/release/kaizen"
runs="$(mktemp -d)"
trap 'rm -rf "$runs"' EXIT
common=(--no-progress --set "tracking.runs_dir=\"$runs\"" --set "run.max_steps=$steps"
    --set sft.steps=0 --set eval.at_start=false --set eval.at_end=false
    --set learner.skip_zero_signal=false --set grpo.dynamic_sampling=false
    --set checkpoint.every=0)
variants=("grpo configs/self_correct_smollm2.toml" "ppo configs/self_correct_smollm2_ppo.toml")
if [[ $separate == 1 ]]; then
    variants+=("ppo-separate configs/self_correct_smollm2_ppo.toml ppo.critic=\"separate\"")
fi
for v in "${variants[@]}"; do
    read -r name job extra <<<"$v"
    args=("${common[@]}" --set "run.name=\"$name\"")
    [[ -n "${extra:-}" ]] && args+=(--set "$extra")
    "$kaizen" train "$job" "${args[@]}" >/dev/null 2>&1
done
python3 - "$runs" <<'PY'
import json, pathlib, sys, tomllib
rows = []
for metrics in sorted(pathlib.Path(sys.argv[1]).glob("*/*/metrics.jsonl")):
    name = tomllib.loads((metrics.parent / "config.toml").read_text())["run"]["name"]
    m = {}
    for line in metrics.open():
        v = json.loads(line)
        m.setdefault(v["key"], {})[v["step"]] = v["value"]
    steps = sorted(m["time/learning"])[1:]  # step 1 is warm-up
    mean = lambda k: sum(m.get(k, {}).get(s, 0.0) for s in steps) / len(steps)
    tokens = sum(m["learner_seconds"][s] * m["learner_tokens_per_s"][s] for s in steps) / len(steps)
    rows.append((name, mean("time/learning"), mean("time/learner_prepare"),
                 mean("time/learner_forward"), mean("time/learner_backward"),
                 mean("time/learner_optimizer"), tokens))
print(f"{'run':14} {'learn s':>8} {'prepare':>8} {'forward':>8} {'backward':>8} {'optim':>6} {'tokens':>7} {'s/1k tok':>8}")
for r in rows:
    print(f"{r[0]:14} {r[1]:8.2f} {r[2]:8.2f} {r[3]:8.2f} {r[4]:8.2f} {r[5]:6.2f} {r[6]:7.0f} {1000*r[1]/r[6]:8.3f}")
base = next(r for r in rows if r[0] == "grpo")
for r in rows:
    if r[0] != "grpo":
        print(f"{r[0]}: {1000*r[1]/r[6] / (1000*base[1]/base[6]):.2f}x GRPO's learner seconds per 1k scored tokens")
PY
