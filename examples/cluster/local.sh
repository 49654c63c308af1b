#!/usr/bin/env bash
# A multi-process job on one machine: the learner and N actor processes, started the way
# torchrun starts ranks (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
#
#   examples/cluster/local.sh [CONFIG] [ACTOR_PROCESSES] [-- extra `kaizen launch` flags]
#
# Rank 0 is the learner (it serves the coordinator on MASTER_PORT); ranks 1..N are actor
# processes. Logs go to $LOG_DIR (default: a temporary directory). Ctrl-C stops every process.
set -euo pipefail

config=${1:-configs/self_correct_tiny.toml}
actors=${2:-2}
extra=()
if (($# > 2)); then
    [[ $3 == "--" ]] || { echo "usage: $0 [CONFIG] [ACTOR_PROCESSES] [-- FLAGS...]" >&2; exit 2; }
    extra=("${@:4}")
fi

kaizen=${KAIZEN:-kaizen}
if ! command -v "$kaizen" >/dev/null; then
    kaizen=target/release/kaizen
    [[ -x $kaizen ]] || cargo build --release --locked --bin kaizen
fi
log_dir=${LOG_DIR:-$(mktemp -d -t kaizen-cluster.XXXXXX)}
mkdir -p "$log_dir"
world=$((actors + 1))
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
export MASTER_PORT=${MASTER_PORT:-29500}
export WORLD_SIZE=$world

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for rank in $(seq 0 $((world - 1))); do
    RANK=$rank LOCAL_RANK=$rank "$kaizen" launch "$config" --no-progress \
        --set "cluster.actor_processes=$actors" "${extra[@]}" \
        >"$log_dir/rank$rank.log" 2>&1 &
    pids+=($!)
done
echo "kaizen: learner + $actors actor processes; logs in $log_dir" >&2
# The learner's exit status is the job's; actor processes exit when it ends the job.
status=0
wait "${pids[0]}" || status=$?
for pid in "${pids[@]:1}"; do wait "$pid" || true; done
tail -n 12 "$log_dir/rank0.log"
exit $status
