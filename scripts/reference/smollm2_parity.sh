#!/usr/bin/env bash
# Regenerates tests/fixtures/smollm2_parity.json with transformers (see smollm2_parity.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/reference/venv.sh
model=$(scripts/fetch_model.sh)
"$REF_PY" scripts/reference/smollm2_parity.py "$model" tests/fixtures/smollm2_parity.json
