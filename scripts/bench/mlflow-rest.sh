#!/usr/bin/env bash
# REST throughput of kaizen's MLflow client against a local lean MLflow server
# (tracking/benches/mlflow_rest.rs). Figures go to BENCHMARKS.md (tracking section).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/venv.sh
source scripts/lib/mlflow.sh
py=$(kaizen_venv mlflow "mlflow==3.17.2")
dir=$(mktemp -d -t kaizen-mlflow-bench.XXXXXX)
trap 'kaizen_mlflow_stop; rm -rf "$dir"' EXIT
kaizen_mlflow_start "$py" "$dir"
KAIZEN_BENCH_MLFLOW_URI=$KAIZEN_MLFLOW_URI cargo bench -p kaizen-tracking --bench mlflow_rest -- "$@"
