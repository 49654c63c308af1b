#!/usr/bin/env bash
# Make kaizen's JSONL problem sets from reasoning-gym in a cached venv (see make_problem_sets.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/venv.sh
py=$(kaizen_venv data reasoning-gym==0.1.25 math-verify==0.9.0 sacrebleu==2.6.0)
exec "$py" scripts/data/make_problem_sets.py "$@"
