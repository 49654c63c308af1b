#!/usr/bin/env bash
# Make the `spc` world's training problems and held-out critic set from reasoning-gym's
# chain_sum in a cached venv (see make_spc_sets.py). The committed data/spc/ was made by it.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/venv.sh
py=$(kaizen_venv data reasoning-gym==0.1.25 math-verify==0.9.0 sacrebleu==2.6.0)
exec "$py" scripts/data/make_spc_sets.py "$@"
