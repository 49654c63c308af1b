#!/usr/bin/env bash
# The cost of running a job as processes (issue 16): the tiny GRPO job (configs/self_correct_tiny
# without its warm start, evaluations and checkpoints) in one process with two actors, and as a
# learner + two actor processes (one engine each) joined over gRPC on localhost, in sync and
# async mode. Prints step time, learner idle fraction and the multi/single ratio per mode.
#   scripts/bench/cluster_overhead.sh [STEPS (default 12)] [--set KEY=VALUE ...]
# KEEP_RUNS=1 keeps the run directories. Figures go to BENCHMARKS.md (multi-process overhead).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=12
if [[ $# -gt 0 && $1 != --* ]]; then
    steps=$1
    shift
fi
cargo build --release --quiet --bin kaizen
kaizen="${CARGO_TARGET_DIR:-target}/release/kaizen"
dir=$(mktemp -d -t kaizen-cluster-overhead.XXXXXX)
[[ -z ${KEEP_RUNS:-} ]] || echo "runs kept in $dir" >&2
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; [[ -n ${KEEP_RUNS:-} ]] || rm -rf "$dir"' EXIT
awk '/^\[/ { skip = ($0 == "[sft]") } !skip' configs/self_correct_tiny.toml > "$dir/job.toml"
port=$((29600 + RANDOM % 300))

for mode in sync async; do
    common=(--set run.mode="$mode" --set run.max_steps="$steps"
        --set learner.max_policy_lag=1 --set learner.skip_zero_signal=false
        --set grpo.dynamic_sampling=false
        --set eval.at_start=false --set eval.at_end=false --set eval.every=0
        --set checkpoint.every=0 "$@")
    echo "== $mode: one process, 2 actors" >&2
    "$kaizen" train "$dir/job.toml" --no-progress "${common[@]}" \
        --set actors.count=2 --set run.experiment="one_$mode" \
        --set tracking.runs_dir="$dir/runs" > "$dir/one_$mode.log" 2>&1 \
        || { cat "$dir/one_$mode.log" >&2; exit 1; }
    echo "== $mode: learner + 2 actor processes" >&2
    port=$((port + 1))
    pids=()
    for rank in 1 2; do
        "$kaizen" launch "$dir/job.toml" --role actor --coordinator "127.0.0.1:$port" \
            "${common[@]}" --set actors.count=1 > "$dir/actor${rank}_$mode.log" 2>&1 &
        pids+=($!)
    done
    "$kaizen" launch "$dir/job.toml" --role learner --coordinator "127.0.0.1:$port" \
        --no-progress "${common[@]}" --set cluster.actor_processes=2 \
        --set run.experiment="procs_$mode" --set tracking.runs_dir="$dir/runs" \
        > "$dir/procs_$mode.log" 2>&1 || { cat "$dir/procs_$mode.log" >&2; exit 1; }
    wait "${pids[@]}"
done

python3 - "$dir" <<'PY'
import json, pathlib, sys
from collections import defaultdict

root = pathlib.Path(sys.argv[1])

def figures(experiment, mode):
    (metrics,) = (root / "runs" / experiment).glob("*/metrics.jsonl")
    steps, stamps = defaultdict(dict), {}
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
    return step_s, idle / (idle + mean("time/learning"))

print("Means over steps 2..N (step 1 fills the pipeline). learner idle = time waiting for")
print("trajectories (sync: the whole generation; async: time/waiting) / (idle + learning).\n")
print("| mode | layout | step s | learner idle | step time vs one process |")
print("|---|---|---|---|---|")
for mode in ("sync", "async"):
    one = figures(f"one_{mode}", mode)
    procs = figures(f"procs_{mode}", mode)
    print(f"| {mode} | 1 process, 2 actors | {one[0]:.3f} | {one[1]:.0%} | 1.00 |")
    print(f"| {mode} | learner + 2 actor processes | {procs[0]:.3f} | {procs[1]:.0%} "
          f"| {procs[0] / one[0]:.2f} |")
PY
