#!/usr/bin/env bash
# Learner tokens/s and how long the learner waits for trajectories, sync vs async mode (issue 6):
# runs configs/self_correct_tiny.toml without its SFT warm start, evaluations and periodic
# checkpoints for a few GRPO steps in each mode, then prints the time split from metrics.jsonl.
#   scripts/bench/runtime_modes.sh [STEPS (default 8)] [--default-tiny] [--set KEY=VALUE ...]
# --default-tiny drops the job's [model.tiny] so the model is LlamaConfig::tiny (hidden 256,
# 4 layers: the model of `cargo bench -p kaizen-actors --bench runtime`). Extra --set overrides
# apply to both runs; KEEP_RUNS=1 keeps the run directories. Figures go to BENCHMARKS.md
# (actor-learner runtime).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=8
if [[ $# -gt 0 && $1 != --* ]]; then
    steps=$1
    shift
fi
drop="[sft]"
if [[ ${1:-} == --default-tiny ]]; then
    drop="[sft] [model.tiny]"
    shift
fi
cargo build --release --quiet --bin kaizen
dir=$(mktemp -d -t kaizen-runtime-modes.XXXXXX)
[[ -z ${KEEP_RUNS:-} ]] || echo "runs kept in $dir" >&2
trap '[[ -n ${KEEP_RUNS:-} ]] || rm -rf "$dir"' EXIT
# The tiny job minus the sections in $drop (a warm start is not what is measured here).
awk -v drop=" $drop " '/^\[/ { skip = index(drop, " " $0 " ") > 0 } !skip' \
    configs/self_correct_tiny.toml > "$dir/job.toml"

for mode in sync async; do
    echo "== $mode: $steps steps" >&2
    # skip_zero_signal=false: the untrained model earns no reward, so every group is flat; the
    # learner must still run its forward and backward passes for the figures to mean anything.
    start=$(date +%s%N)
    "${CARGO_TARGET_DIR:-target}/release/kaizen" train "$dir/job.toml" --no-progress \
        --set run.mode="$mode" --set run.max_steps="$steps" \
        --set run.experiment="runtime_$mode" --set tracking.runs_dir="$dir/runs" \
        --set learner.max_policy_lag=1 --set learner.skip_zero_signal=false \
        --set grpo.dynamic_sampling=false \
        --set eval.at_start=false --set eval.at_end=false --set eval.every=0 \
        --set checkpoint.every=0 "$@" > "$dir/$mode.log" 2>&1 \
        || { cat "$dir/$mode.log" >&2; exit 1; }
    echo "$mode $start $(date +%s%N)" >> "$dir/wall.txt"
done

python3 - "$dir" <<'PY'
import json, pathlib, sys, tomllib
from collections import defaultdict

root = pathlib.Path(sys.argv[1])
wall = {}
for line in (root / "wall.txt").read_text().splitlines():
    mode, start, end = line.split()
    wall[mode] = (int(end) - int(start)) / 1e9
print("Means over steps 2..N (step 1 fills the pipeline). learner idle = time the learner waits")
print("for trajectories (sync: the whole generation; async: time/waiting) / (idle + learning).")
for mode in ("sync", "async"):
    (metrics,) = (root / "runs" / f"runtime_{mode}").glob("*/metrics.jsonl")
    if mode == "sync":
        tiny = tomllib.loads((metrics.parent / "config.toml").read_text())["model"].get("tiny")
        arch = "LlamaConfig::tiny (hidden 256, 4 layers, MLP 768)" if tiny is None else (
            f"hidden {tiny['hidden_size']}, {tiny['num_hidden_layers']} layers, "
            f"MLP {tiny['intermediate_size']}")
        print(f"Model: {arch}.\n")
        print("| mode | steps | run wall s | step s | generation s | learning s | waiting s "
              "| learner idle | learner tokens/s | actor tokens/s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    steps = defaultdict(dict)
    stamps = {}
    for line in metrics.read_text().splitlines():
        m = json.loads(line)
        if m["key"] == "time/learning":
            stamps[m["step"]] = m["timestamp"]
        steps[m["step"]][m["key"]] = m["value"]
    rl = sorted(s for s in steps if "time/learning" in steps[s])
    later = rl[1:]
    mean = lambda key: sum(steps[s].get(key, 0.0) for s in later) / len(later)
    step_s = (stamps[rl[-1]] - stamps[rl[0]]) / 1e3 / len(later)
    idle = mean("time/generation") if mode == "sync" else mean("time/waiting")
    learning = mean("time/learning")
    gen = f"{mean('time/generation'):.2f}" if mode == "sync" else "(overlapped)"
    print(f"| {mode} | {len(rl)} | {wall[mode]:.1f} | {step_s:.2f} | {gen} | {learning:.2f} "
          f"| {mean('time/waiting'):.2f} | {100 * idle / (idle + learning):.0f}% "
          f"| {mean('learner_tokens_per_s'):.0f} | {mean('actor_tokens_per_s'):.0f} |")
PY
